//! The bench report: a table on stdout and, with `--json`, a JSON file.

use std::path::Path;

use anyhow::Context;
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
        Self { scenario, commit: crate::COMMIT.to_owned(), settings, machine: Machine::read(), figures: Vec::new() }
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure { name: name.into(), value, unit });
    }

    /// The figure of that name.
    pub fn figure(&self, name: &str) -> anyhow::Result<f64> {
        match self.figures.iter().find(|f| f.name == name) {
            Some(f) => Ok(f.value),
            None => anyhow::bail!("the {} report has no figure \"{name}\"", self.scenario),
        }
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
}

/// Writes a report as JSON to `path`, when there is one.
pub fn write_json(report: &impl Serialize, path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let write = || anyhow::Ok(std::fs::write(path, serde_json::to_vec_pretty(report)?)?);
    write().with_context(|| format!("writing {}", path.display()))
}
