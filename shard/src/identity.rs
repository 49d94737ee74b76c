//! A node's identity: 64 random bits made at its first start and kept in its data dir, so a
//! restarted node is the same member (and moves no data); and its generation, which grows at
//! every start.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::placement::NodeId;

const FILE: &str = "node.id";
const GENERATION_FILE: &str = "generation";

/// The node id kept in `dir`, made (and synced) there at the first start.
pub fn load_or_create(dir: &Path) -> std::io::Result<NodeId> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} does not hold a node id", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            // Never 0: 0 stands for "no node" in placement tables.
            let id = NodeId(rand::random::<u64>().max(1));
            write_synced(dir, FILE, &format!("{id}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// This start's generation, kept in `dir` before it is used: above every generation an
/// earlier start on this data dir used, whatever the wall clock did meanwhile (a clock set
/// back gives the last one plus one). The clock is only a floor, so that a data dir restored
/// from an older copy still starts above the generations its node used since (its peers take
/// the newest generation of a node for the node).
pub fn next_generation(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join(GENERATION_FILE);
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a generation", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let next = clock.max(last.saturating_add(1));
    std::fs::create_dir_all(dir)?;
    write_synced(dir, GENERATION_FILE, &format!("{next}\n"))?;
    Ok(next)
}

/// Writes `name` in `dir` whole or not at all: a temporary file, synced, renamed over it, and
/// the directory synced.
fn write_synced(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
        std::fs::write(dir.path().join(FILE), "junk").unwrap();
        assert!(load_or_create(dir.path()).is_err(), "a damaged id is an error, never a new identity");
    }

    #[test]
    fn generations_grow_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = next_generation(dir.path()).unwrap();
        assert!(next_generation(dir.path()).unwrap() > first);
        // A generation from a clock that ran far ahead, then was set back.
        let ahead = u64::MAX / 2;
        std::fs::write(dir.path().join(GENERATION_FILE), format!("{ahead}\n")).unwrap();
        assert_eq!(next_generation(dir.path()).unwrap(), ahead + 1);
        assert_eq!(next_generation(dir.path()).unwrap(), ahead + 2);
        std::fs::write(dir.path().join(GENERATION_FILE), "junk").unwrap();
        assert!(next_generation(dir.path()).is_err());
    }
}
