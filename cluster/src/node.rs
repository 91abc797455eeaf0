//! What a node is and what it offers: a stable id, a name, its addresses and
//! its capabilities (memory, cores, engines, version).

use crate::config::{ClusterError, Role};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// A node's stable identity: 32 hex digits, kept in the state dir across restarts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn random() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }

    fn is_valid(text: &str) -> bool {
        text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit())
    }

    /// Reads `dir/node-id`, creating it (and `dir`) the first time.
    pub fn load_or_create(dir: &Path) -> Result<Self, ClusterError> {
        let path = dir.join("node-id");
        let err = |problem: String| ClusterError::NodeId {
            path: path.clone(),
            problem,
        };
        match std::fs::read_to_string(&path) {
            // Empty: an earlier write that failed half-way (a full disk); it held no id yet.
            Ok(text) if !text.trim().is_empty() => {
                let text = text.trim();
                if Self::is_valid(text) {
                    Ok(Self(text.to_ascii_lowercase()))
                } else {
                    Err(err(format!(
                        "holds {text:?}, not a 32-hex-digit id; delete the file to get a new id"
                    )))
                }
            }
            Ok(_) => Self::create(dir, &path).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(dir, &path).map_err(err)
            }
            Err(e) => Err(err(format!("cannot read: {e}"))),
        }
    }

    /// Writes a new id next to `path` and renames it into place, so a write
    /// that fails (a full disk) leaves no half-written id behind.
    fn create(dir: &Path, path: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory: {e}"))?;
        let id = Self::random();
        let partial = path.with_extension("partial");
        let written = std::fs::write(&partial, format!("{}\n", id.0))
            .and_then(|()| std::fs::rename(&partial, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("cannot write: {e}"));
        }
        Ok(id)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a member sounds from here: the time since it was last heard, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
        })
    }
}

/// What a node tells its peers about itself in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub version: String,
    /// Where peers and clients reach this node.
    pub addr: SocketAddr,
    /// Every address the node answers on (all interfaces when bound to 0.0.0.0).
    pub addrs: Vec<SocketAddr>,
    pub memory_total: u64,
    pub memory_free: u64,
    /// Memory offered for models.
    pub memory_budget: u64,
    pub cores: u32,
    /// Engines this build can run here: "llama-cpu", "llama-metal", ...
    pub engines: Vec<String>,
    /// Unix time (ms) this process started: a change means the node restarted.
    pub started_at_ms: u64,
    /// Port of this node's tunnel listener (same host as `addr`; 0 = none).
    #[serde(default)]
    pub tunnel_port: u16,
    /// The device a shard worker here serves (`CPU`, `MTL0`, ...).
    #[serde(default)]
    pub shard_device: String,
    /// Model files in this node's store (file names).
    #[serde(default)]
    pub models: Vec<String>,
    /// The deployments this node heads, and how their engines are doing.
    #[serde(default)]
    pub heads: Vec<HeadStatus>,
    /// This node's `[[models]]`: its proposal of the cluster's deployments.
    #[serde(default)]
    pub specs: Vec<crate::spec::DeploySpec>,
}

/// A head's report on one deployment's engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadStatus {
    pub id: String,
    /// `loading`, `ready` or `failed`.
    pub state: String,
    pub reason: Option<String>,
    /// The device of each layer range the engine reported (`CPU`, `RPC0[...]`).
    #[serde(default)]
    pub layout: Vec<(String, std::ops::Range<u32>)>,
}

/// Total and available memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
}

#[cfg(target_os = "linux")]
pub fn memory() -> Memory {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default()
}

/// `MemAvailable` (what can be allocated without swapping), not `MemFree`.
pub fn parse_meminfo(text: &str) -> Memory {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Memory {
        total: field("MemTotal"),
        free: field("MemAvailable"),
    }
}

#[cfg(target_os = "macos")]
pub fn memory() -> Memory {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .unwrap_or_default()
    };
    let total = run("sysctl", &["-n", "hw.memsize"])
        .trim()
        .parse()
        .unwrap_or(0);
    let vm = run("vm_stat", &[]);
    let page: u64 = vm
        .lines()
        .next()
        .and_then(|l| l.split("page size of ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(16384);
    let pages = |name: &str| -> u64 {
        vm.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| {
                r.trim_start_matches(':')
                    .trim()
                    .trim_end_matches('.')
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let free = (pages("Pages free") + pages("Pages inactive") + pages("Pages speculative")) * page;
    Memory {
        total,
        free: free.min(total),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn memory() -> Memory {
    Memory::default()
}

pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// Engines this build can run on this machine (MLX joins when its engine exists).
pub fn engines() -> Vec<String> {
    let mut e = vec!["llama-cpu".to_string()];
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        e.push("llama-metal".to_string());
    }
    e
}

/// The machine's host name without a `.local` suffix, or "herd" when unknown.
pub fn host_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_proc.or_else(|| {
        std::process::Command::new("hostname")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
    });
    let name = name.unwrap_or_default();
    let name = name.trim().trim_end_matches(".local");
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if clean.is_empty() {
        "herd".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_uses_available_memory() {
        let m = parse_meminfo(
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n",
        );
        assert_eq!(
            m,
            Memory {
                total: 24_576_000 * 1024,
                free: 20_000_000 * 1024
            }
        );
        assert_eq!(parse_meminfo("garbage"), Memory::default());
    }

    #[test]
    fn node_id_is_stable_across_loads() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { return };
        let state = dir.path().join("a/b");
        let first = NodeId::load_or_create(&state).map_err(|e| e.to_string());
        let second = NodeId::load_or_create(&state).map_err(|e| e.to_string());
        assert!(first.is_ok());
        assert_eq!(first, second);
        assert_eq!(first.as_ref().map(|i| i.0.len()), Ok(32));
        let _ = std::fs::write(state.join("node-id"), "nope");
        let err = NodeId::load_or_create(&state)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("node-id") && err.contains("nope"), "{err}");
        // An empty file (a write cut short by a full disk) gets a new id.
        let _ = std::fs::write(state.join("node-id"), "");
        let fresh = NodeId::load_or_create(&state).map_err(|e| e.to_string());
        assert_eq!(fresh.as_ref().map(|i| i.0.len()), Ok(32));
        assert_ne!(fresh, first);
        assert!(!state.join("node-id.partial").exists());
    }

    #[test]
    fn this_machine_reports_itself() {
        assert!(cores() >= 1);
        assert!(engines().contains(&"llama-cpu".to_string()));
        assert!(!host_name().is_empty());
        if cfg!(target_os = "linux") {
            let m = memory();
            assert!(m.total > 0 && m.free <= m.total, "{m:?}");
        }
    }
}
