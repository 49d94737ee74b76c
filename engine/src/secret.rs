//! The deployment secret: 32 random bytes created at first start in the data dir (mode 0600),
//! or read from `--secret-file`. Sub-keys for sealing and for ids are derived from it, so one
//! key never serves two purposes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const FILE_NAME: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create secret file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("secret file {0} must hold 32 bytes, or 64 hex digits")]
    Format(PathBuf),
}

/// The deployment secret.
pub struct Secret([u8; 32]);

impl Secret {
    /// Reads `file`, or the data dir's secret (created on first start).
    pub fn load_or_create(file: Option<&Path>, data_dir: &Path) -> Result<Self, SecretError> {
        if let Some(path) = file {
            return Self::read(path);
        }
        let path = data_dir.join(FILE_NAME);
        if path.exists() {
            return Self::read(&path);
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let create = |source| SecretError::Create { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(create)?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(create)?;
        f.write_all(&key).and_then(|()| f.sync_all()).map_err(create)?;
        Ok(Self(key))
    }

    /// Reads `file`, or the data dir's secret; never creates one (operator tools).
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<Self, SecretError> {
        Self::read(&file.map_or_else(|| data_dir.join(FILE_NAME), Path::to_path_buf))
    }

    fn read(path: &Path) -> Result<Self, SecretError> {
        let raw = std::fs::read(path).map_err(|source| SecretError::Read { path: path.to_owned(), source })?;
        if let Ok(key) = <[u8; 32]>::try_from(raw.as_slice()) {
            return Ok(Self(key));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| SecretError::Format(path.to_owned()))?.trim();
        let mut key = [0u8; 32];
        if text.len() != 64 {
            return Err(SecretError::Format(path.to_owned()));
        }
        for (i, byte) in key.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2).ok_or_else(|| SecretError::Format(path.to_owned()))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| SecretError::Format(path.to_owned()))?;
        }
        Ok(Self(key))
    }

    /// A sub-key for one purpose.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return [0; 32];
        };
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secret::load_or_create(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Secret::load_or_create(None, dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        assert_ne!(a.derive("seal"), a.derive("ids"));
    }

    #[test]
    fn hex_file_and_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(Secret::load_or_create(Some(&hex), dir.path()).unwrap().0, [0xAB; 32]);
        std::fs::write(&hex, "short").unwrap();
        assert!(matches!(Secret::load_or_create(Some(&hex), dir.path()), Err(SecretError::Format(_))));
    }
}
