//! Stamps the binary with the commit it is built from (`TIM_COMMIT`), so a bench report names
//! the code that ran rather than whatever repository the bench happens to run in. Built
//! outside a git checkout (a source tarball), the stamp is `TIM_COMMIT` from the build's
//! environment, or "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    // A checkout owned by another user (a CI clone built as root) is still read.
    let out = Command::new("git").args(["-c", "safe.directory=*", "-C"]).arg(dir).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TIM_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = std::env::var("TIM_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let commit = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
        // Rebuild the stamp when HEAD moves: HEAD itself, the branch it points at, and the
        // packed refs a branch may live in (a path that does not exist would rerun every build).
        if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
            let branch = git(&dir, &["symbolic-ref", "-q", "HEAD"]);
            let watched =
                ["HEAD", "packed-refs"].into_iter().map(|f| git_dir.join(f)).chain(branch.map(|b| git_dir.join(b)));
            for path in watched.filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        Some(commit)
    });
    println!("cargo:rustc-env=TIM_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
