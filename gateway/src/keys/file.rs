//! The key file in the state dir (`keys.json`): records only, never a
//! secret. Every change is a read-modify-write under an exclusive `flock`
//! on `keys.lock` (so `herd keys` runs and the server's own writes never
//! lose each other's changes), written to a temporary file with mode 0600
//! and renamed over the old one, so a reader sees the old or the new file,
//! never half of one. "Last used" times live beside it in `keys-used.json`,
//! which only the server writes, every few seconds when something changed.

use super::KeyRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const KEYS_FILE: &str = "keys.json";
const LOCK_FILE: &str = "keys.lock";
pub const LAST_USED_FILE: &str = "keys-used.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    keys: Vec<KeyRecord>,
}

/// The key file of one state dir.
#[derive(Debug, Clone)]
pub struct KeyFile {
    dir: PathBuf,
}

/// Holds the exclusive lock until dropped.
pub struct Locked {
    _file: File,
}

impl KeyFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    /// The records on disk; no file is no keys.
    pub fn read(&self) -> anyhow::Result<Vec<KeyRecord>> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => anyhow::bail!("cannot read the key file {}: {e}", path.display()),
        };
        let disk: OnDisk = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the key file {} is damaged: {e}", path.display()))?;
        Ok(disk.keys)
    }

    /// Size and modification time, to notice a change without reading.
    pub fn stamp(&self) -> Option<(u64, std::time::SystemTime)> {
        let m = std::fs::metadata(self.path()).ok()?;
        Some((m.len(), m.modified().ok()?))
    }

    fn lock(&self) -> anyhow::Result<Locked> {
        create_private_dir(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| anyhow::anyhow!("cannot lock {}: {e}", path.display()))?;
        Ok(Locked { _file: file })
    }

    /// Reads the records, lets `change` edit them, and writes them back if
    /// it returns `Ok(true)`, all under the lock. Returns what `change` gave.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<KeyRecord>) -> Result<(bool, T), anyhow::Error>,
    ) -> anyhow::Result<T> {
        let _lock = self.lock()?;
        let mut keys = self.read()?;
        let (write, out) = change(&mut keys)?;
        if write {
            keys.sort_by(|a, b| a.name.cmp(&b.name));
            let text = serde_json::to_vec_pretty(&OnDisk { version: 1, keys })?;
            write_atomic(&self.path(), &text)?;
        }
        Ok(out)
    }

    /// Unix ms of each key's last use, as the server last wrote them.
    pub fn last_used(&self) -> BTreeMap<String, u64> {
        std::fs::read(self.dir.join(LAST_USED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn write_last_used(&self, used: &BTreeMap<String, u64>) -> anyhow::Result<()> {
        write_atomic(&self.dir.join(LAST_USED_FILE), &serde_json::to_vec(used)?)
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state dir {}: {e}", dir.display()))
}

use std::os::unix::fs::DirBuilderExt;

/// Writes `bytes` to a temporary file (0600) beside `path`, syncs it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{new_key, KeySpec};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_round_trip_private_and_without_secrets() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = KeyFile::new(&dir.path().join("state"));
        assert!(file.read()?.is_empty());
        let key = new_key("alice", &KeySpec::default(), 5);
        let record = key.record.clone();
        file.update(|keys| {
            keys.push(record);
            Ok((true, ()))
        })?;
        assert_eq!(file.read()?, vec![key.record]);
        let text = std::fs::read_to_string(file.path())?;
        assert!(!text.contains(&key.secret));
        let mode = std::fs::metadata(file.path())?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }
}
