//! A node's identity: 64 random bits made at its first start and kept in its data dir, so a
//! restarted node is the same member (and moves no data); and its generation, the boot time.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::placement::NodeId;

const FILE: &str = "node.id";

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
            let mut file = std::fs::File::create(&path)?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// This boot's generation: nanoseconds since the epoch, larger at every restart.
pub fn generation() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
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
}
