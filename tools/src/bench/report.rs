//! The bench report: a table on stdout and, with `--json`, a JSON file.

use std::path::Path;

use serde::Serialize;

use super::machine::Machine;

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub commit: String,
    pub settings: serde_json::Value,
    pub machine: Machine,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn new(scenario: &'static str, settings: serde_json::Value) -> Self {
        Self { scenario, commit: commit(), settings, machine: Machine::read(), figures: Vec::new() }
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure { name: name.into(), value, unit });
    }

    pub fn print(&self) {
        println!("tim bench {} (commit {})", self.scenario, self.commit);
        println!(
            "machine: {} cores, {} MiB, open files {} (hard {})",
            self.machine.cores,
            self.machine.memory_kib / 1024,
            self.machine.open_files_soft,
            self.machine.open_files_hard
        );
        for f in &self.figures {
            println!("  {:<36} {:>14.2} {}", f.name, f.value, f.unit);
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// The commit the bench was built from, when run from a git checkout.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}
