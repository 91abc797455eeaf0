//! Cluster flags shared by `herd serve` and `herd node`, and the merge of
//! flags (and `HERD_*` variables, which clap folds into them) over the
//! config file's `[cluster]` section.

use anyhow::Context;
use clap::Args;
use herd_cluster::config::{expand_home, DEFAULT_CLUSTER};
use herd_cluster::{parse_memory_budget, Agent, AgentConfig, Role, Secret, Timeouts};
use herd_config::ClusterConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// This node's name in `herd status` (default: the host name).
    #[arg(long = "name", env = "HERD_NODE_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Cluster name: nodes with another name are another cluster (default "herd").
    #[arg(long, env = "HERD_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// File holding the cluster secret (≥ 16 bytes, e.g. `openssl rand -hex 32`). Without one, a node runs alone.
    #[arg(long, env = "HERD_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// A static peer, `host:port` (repeat the flag; HERD_PEERS takes a comma-separated list).
    #[arg(
        long = "peer",
        env = "HERD_PEERS",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// Do not announce or browse with mDNS/DNS-SD (use --peer instead).
    #[arg(long, env = "HERD_NO_DISCOVERY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_discovery: bool,
    /// Memory this node offers for models: "48GiB", "512M", bytes, or "75%" of the total (default 75%).
    #[arg(long, env = "HERD_MEMORY_BUDGET", value_name = "SIZE")]
    pub memory_budget: Option<String>,
    /// This node's model store: the GGUF files `[[models]] model = "..."` names (default $HERD_CACHE/models or ~/.cache/herd/models).
    #[arg(long, env = "HERD_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Directory keeping this node's stable id (default ~/.local/state/herd/<name>).
    #[arg(long, env = "HERD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Starts the cluster agent for a server bound at `advertise` (the real
/// bound address, so port 0 works). Flags override the file.
pub async fn start_agent(
    args: &ClusterArgs,
    file: &ClusterConfig,
    advertise: SocketAddr,
    role: Role,
) -> anyhow::Result<Agent> {
    let config = agent_config(args, file, advertise, role)?;
    Ok(Agent::start(config).await?)
}

/// The merged settings, validated.
pub fn agent_config(
    args: &ClusterArgs,
    file: &ClusterConfig,
    advertise: SocketAddr,
    role: Role,
) -> anyhow::Result<AgentConfig> {
    let (node_name, state_dir) = node_name_and_state_dir(args, file);
    let mut config = AgentConfig::new(node_name, advertise, state_dir, role);
    config.cluster = args
        .cluster
        .clone()
        .or_else(|| file.name.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    config.secret = match (&args.secret_file, &file.secret_file, &file.secret) {
        (Some(path), _, _) | (None, Some(path), _) => Some(Secret::from_file(path)?),
        (None, None, Some(text)) => Some(Secret::from_text(
            text,
            "in the config file's [cluster] secret",
        )?),
        (None, None, None) => None,
    };
    config.peers = if args.peers.is_empty() {
        file.peers.clone()
    } else {
        args.peers.clone()
    };
    config.peers.retain(|p| !p.trim().is_empty());
    config.discovery = !args.no_discovery && file.discovery.unwrap_or(true);
    config.memory_budget = args
        .memory_budget
        .as_ref()
        .or(file.memory_budget.as_ref())
        .map(|t| parse_memory_budget(t))
        .transpose()?;
    let d = Timeouts::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    config.timeouts = Timeouts {
        heartbeat: ms(file.heartbeat_ms, d.heartbeat),
        suspect_after: ms(file.suspect_after_ms, d.suspect_after),
        dead_after: ms(file.dead_after_ms, d.dead_after),
        remove_after: ms(file.remove_after_ms, d.remove_after),
    }
    .validate()?;
    if role == Role::Node && config.secret.is_none() {
        anyhow::bail!(
            "herd node needs a cluster secret: pass --secret-file FILE (or set [cluster] secret_file); \
             create one with `openssl rand -hex 32 > FILE && chmod 600 FILE` and copy it to every node"
        );
    }
    Ok(config)
}

/// The state dir: the flag, else the file's `[cluster] state_dir`, else
/// `~/.local/state/herd/<node name>` (the host name unless named).
pub fn resolve_state_dir(
    flag: Option<&PathBuf>,
    node_name: Option<&String>,
    file: &ClusterConfig,
) -> PathBuf {
    match flag.or(file.state_dir.as_ref()) {
        Some(dir) => expand_home(dir),
        None => {
            let name = node_name
                .cloned()
                .or_else(|| file.node_name.clone())
                .unwrap_or_else(herd_cluster::node::host_name);
            default_state_dir(&name)
        }
    }
}

/// This node's name and state directory (flags over the file over defaults).
pub fn node_name_and_state_dir(args: &ClusterArgs, file: &ClusterConfig) -> (String, PathBuf) {
    let node_name = args
        .name
        .clone()
        .or_else(|| file.node_name.clone())
        .unwrap_or_else(herd_cluster::node::host_name);
    let state_dir = match args.state_dir.as_ref().or(file.state_dir.as_ref()) {
        Some(dir) => expand_home(dir),
        None => default_state_dir(&node_name),
    };
    (node_name, state_dir)
}

fn default_state_dir(node_name: &str) -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home)
            .join(".local/state/herd")
            .join(node_name),
        None => PathBuf::from("/var/lib/herd").join(node_name),
    }
}

/// Reads a config file's `[cluster]` section (and `listen`) for `herd node`.
pub fn read_config(path: Option<&PathBuf>) -> anyhow::Result<herd_config::RawConfig> {
    match path {
        Some(p) => {
            herd_config::RawConfig::from_file(p).with_context(|| format!("reading {}", p.display()))
        }
        None => Ok(herd_config::RawConfig::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], 7000))
    }

    #[test]
    fn flags_override_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n")?;
        let file = ClusterConfig {
            name: Some("home".into()),
            node_name: Some("file-name".into()),
            secret: Some("ignored-because-a-file-is-given".into()),
            peers: vec!["10.0.0.9:8080".into()],
            memory_budget: Some("50%".into()),
            heartbeat_ms: Some(200),
            ..ClusterConfig::default()
        };
        let cli = Cli::try_parse_from([
            "x",
            "--name",
            "flag-name",
            "--secret-file",
            secret.to_str().unwrap_or_default(),
            "--peer",
            "a:1",
            "--peer",
            "b:2",
            "--no-discovery",
            "--memory-budget",
            "2GiB",
            "--state-dir",
            "/tmp/s",
        ])?;
        let c = agent_config(&cli.cluster, &file, addr(), Role::Node)?;
        assert_eq!(c.node_name, "flag-name");
        assert_eq!(c.cluster, "home");
        assert_eq!(c.peers, vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(!c.discovery);
        assert_eq!(
            c.memory_budget,
            Some(herd_cluster::config::MemoryBudget::Bytes(2 << 30))
        );
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.timeouts.heartbeat, Duration::from_millis(200));
        assert!(c.secret.is_some());
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "the secret never reaches Debug output"
        );
        Ok(())
    }

    #[test]
    fn the_file_fills_what_flags_leave_out() -> anyhow::Result<()> {
        let file = ClusterConfig {
            node_name: Some("studio".into()),
            secret: Some("an inline secret, long enough".into()),
            peers: vec!["10.0.0.9:8080".into()],
            discovery: Some(false),
            ..ClusterConfig::default()
        };
        let c = agent_config(&ClusterArgs::default(), &file, addr(), Role::Gateway)?;
        assert_eq!(
            (c.node_name.as_str(), c.cluster.as_str()),
            ("studio", "herd")
        );
        assert_eq!(c.peers, vec!["10.0.0.9:8080".to_string()]);
        assert!(!c.discovery && c.secret.is_some());
        assert!(
            c.state_dir.ends_with(".local/state/herd/studio")
                || c.state_dir.ends_with("herd/studio")
        );
        Ok(())
    }

    #[test]
    fn a_node_needs_a_secret_a_gateway_does_not() {
        let err = agent_config(
            &ClusterArgs::default(),
            &ClusterConfig::default(),
            addr(),
            Role::Node,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("--secret-file"), "{err}");
        let lone = agent_config(
            &ClusterArgs::default(),
            &ClusterConfig::default(),
            addr(),
            Role::Gateway,
        );
        assert!(lone.is_ok_and(|c| c.secret.is_none()));
    }

    #[test]
    fn bad_values_name_the_field() {
        let file = ClusterConfig {
            memory_budget: Some("lots".into()),
            ..ClusterConfig::default()
        };
        let err = agent_config(&ClusterArgs::default(), &file, addr(), Role::Gateway)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("memory_budget") && e.contains("lots")));
        let file = ClusterConfig {
            dead_after_ms: Some(100),
            ..ClusterConfig::default()
        };
        let err = agent_config(&ClusterArgs::default(), &file, addr(), Role::Gateway)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("dead_after_ms")));
    }
}
