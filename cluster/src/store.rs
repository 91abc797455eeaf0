//! A node's model store: a directory of GGUF files that deployments name
//! (`[[models]] model = "x.gguf"`). Each node has its own; a head that lacks
//! a file copies it from a peer that has it (see `copy.rs`), never from the
//! internet.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// `$HERD_CACHE/models`, else `~/.cache/herd/models` (what .ci/setup fills).
    pub fn default_dir() -> PathBuf {
        if let Some(cache) = std::env::var_os("HERD_CACHE") {
            return PathBuf::from(cache).join("models");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache/herd/models")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's path if the store has it.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        let path = self.dir.join(name);
        path.is_file().then_some(path)
    }

    /// Where a copy in progress is written (renamed into place when checked).
    pub fn partial_path(&self, name: &str) -> Option<PathBuf> {
        valid_name(name).then(|| self.dir.join(format!(".{name}.part")))
    }

    /// The GGUF files in the store, by name.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            // Follows symlinks: a store may link to files kept elsewhere.
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".gguf") && valid_name(n))
            .collect();
        names.sort();
        names
    }
}

/// A plain file name: no directories, nothing hidden.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_store() {
        let store = ModelStore::new(PathBuf::from("/tmp/store"));
        for bad in ["../x.gguf", "/etc/passwd", ".hidden", "", "a/b.gguf", ".."] {
            assert!(store.path(bad).is_none(), "{bad}");
            assert!(store.partial_path(bad).is_none(), "{bad}");
        }
        assert_eq!(
            store.partial_path("m.gguf"),
            Some(PathBuf::from("/tmp/store/.m.gguf.part"))
        );
    }

    #[test]
    fn lists_gguf_files_only() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("b.gguf"), b"x")?;
        std::fs::write(dir.path().join("a.gguf"), b"x")?;
        std::fs::write(dir.path().join("notes.txt"), b"x")?;
        std::fs::write(dir.path().join(".c.gguf.part"), b"x")?;
        let store = ModelStore::new(dir.path().to_path_buf());
        assert_eq!(
            store.list(),
            vec!["a.gguf".to_string(), "b.gguf".to_string()]
        );
        Ok(())
    }
}
