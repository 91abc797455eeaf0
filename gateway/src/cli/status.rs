//! `herd status`: print a node's view of the cluster as a table (or JSON).
//!
//! Two ways in: `GET /cluster` on a gateway (with an API key when the gateway
//! has keys), or, with `--secret-file`, the signed `/_herd/v1/view` that every
//! node serves to holders of the cluster secret.

use clap::Args;
use herd_cluster::client::{CallError, PeerClient};
use herd_cluster::{ClusterView, Credentials, MemberState, Secret};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Base URL of any herd gateway or node.
    #[arg(long, env = "HERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key for a gateway that has API keys.
    #[arg(long, env = "HERD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the view with the cluster secret instead (works against `herd node` too).
    #[arg(long, env = "HERD_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Cluster name, with --secret-file.
    #[arg(long, env = "HERD_CLUSTER", default_value = herd_cluster::config::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// Print the JSON view instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = args.url.trim_end_matches('/').to_string();
    let view = match &args.secret_file {
        Some(path) => signed_view(&url, path, &args.cluster).await?,
        None => public_view(&url, args.api_key.as_deref()).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

async fn signed_view(
    url: &str,
    secret_file: &std::path::Path,
    cluster: &str,
) -> anyhow::Result<ClusterView> {
    let creds = Credentials::new(Secret::from_file(secret_file)?, cluster);
    let client = PeerClient::new(
        creds,
        "herd-status",
        herd_cluster::VERSION,
        Duration::from_secs(5),
    )?;
    client.view(url).await.map_err(|e| match e {
        CallError::Rejected => anyhow::anyhow!(
            "{url} rejected the request: check --secret-file and --cluster (they must match the node's), and the clocks"
        ),
        other => anyhow::anyhow!("{url}: {other}"),
    })
}

async fn public_view(url: &str, api_key: Option<&str>) -> anyhow::Result<ClusterView> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut req = client.get(format!("{url}/cluster"));
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    match resp.status().as_u16() {
        200 => Ok(resp.json().await?),
        401 => anyhow::bail!("{url} needs an API key: pass --api-key KEY (or set HERD_API_KEY)"),
        404 => anyhow::bail!(
            "{url} does not serve GET /cluster (a `herd node` serves it only with --api-key-file); \
             pass --secret-file FILE to read the view with the cluster secret"
        ),
        other => anyhow::bail!(
            "{url}/cluster answered {other}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

/// The table `herd status` prints.
pub fn render(view: &ClusterView) -> String {
    let alive = view
        .nodes
        .iter()
        .filter(|n| n.state == MemberState::Alive)
        .count();
    let me = view
        .nodes
        .iter()
        .find(|n| n.is_self)
        .map_or("?", |n| n.name.as_str());
    let mut out = if view.clustered {
        let count = view.nodes.len();
        let plural = if count == 1 { "" } else { "s" };
        format!(
            "cluster {}: {count} node{plural}, {alive} alive (as seen by {me})\n",
            view.cluster
        )
    } else {
        format!("{me}: a lone node (no cluster secret configured)\n")
    };
    let header = [
        "NAME",
        "ID",
        "STATE",
        "ROLE",
        "ADDR",
        "MEM FREE/TOTAL",
        "BUDGET",
        "CORES",
        "ENGINES",
        "VERSION",
        "LAST SEEN",
    ];
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                if n.is_self {
                    format!("{} *", n.name)
                } else {
                    n.name.clone()
                },
                n.id.short().to_string(),
                n.state.to_string(),
                serde_json::to_value(n.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                n.addr.to_string(),
                format!("{}/{}", gib(n.memory_free), gib(n.memory_total)),
                gib(n.memory_budget),
                n.cores.to_string(),
                n.engines.join(","),
                n.version.clone(),
                if n.is_self {
                    "-".to_string()
                } else {
                    format!("{:.1}s ago", n.last_seen_ms as f64 / 1000.0)
                },
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows));
    if !view.deployments.is_empty() {
        out.push('\n');
        let header = ["DEPLOYMENT", "MODEL", "STATE", "HEAD", "SHARDS", "REASON"];
        let rows: Vec<Vec<String>> = view
            .deployments
            .iter()
            .map(|d| {
                let shards: Vec<String> = d
                    .shards
                    .iter()
                    .map(|s| {
                        format!(
                            "{}[{}..{}) {}",
                            s.node, s.layers.start, s.layers.end, s.device
                        )
                    })
                    .collect();
                vec![
                    d.id.clone(),
                    d.model.clone(),
                    d.state.clone(),
                    match (&d.head, &d.upstream) {
                        (Some(head), _) => head.clone(),
                        (None, Some(u)) => format!("upstream {}", u.base_url),
                        (None, None) => "-".into(),
                    },
                    if shards.is_empty() {
                        "-".into()
                    } else {
                        shards.join(", ")
                    },
                    [d.reason.clone(), d.conflict.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; "),
                ]
            })
            .collect();
        out.push_str(&table(&header, &rows));
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_cluster::{NodeId, NodeView, Role};

    fn node(name: &str, state: MemberState, is_self: bool) -> NodeView {
        NodeView {
            name: name.into(),
            id: NodeId(format!("{name:0>32}")),
            state,
            addr: "10.77.0.2:8080"
                .parse()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            addrs: vec![],
            role: Role::Node,
            version: "0.1.0".into(),
            memory_total: 16 << 30,
            memory_free: 6 << 29,
            memory_budget: 12 << 30,
            cores: 8,
            engines: vec!["llama-cpu".into()],
            tunnel_port: 0,
            shard_device: "CPU".into(),
            models: vec![],
            last_seen_ms: if is_self { 0 } else { 1234 },
            is_self,
        }
    }

    #[test]
    fn the_table_shows_every_node_and_its_state() {
        let view = ClusterView {
            cluster: "home".into(),
            self_id: NodeId("0".repeat(32)),
            clustered: true,
            nodes: vec![
                node("studio", MemberState::Alive, true),
                node("mini", MemberState::Suspect, false),
            ],
            deployments: Vec::new(),
        };
        let text = render(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "cluster home: 2 nodes, 1 alive (as seen by studio)"
        );
        assert!(
            lines[1].starts_with("NAME") && lines[1].contains("LAST SEEN"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("studio *")
                && lines[2].contains("alive")
                && lines[2].contains("3.0G/16.0G"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("mini")
                && lines[3].contains("suspect")
                && lines[3].ends_with("1.2s ago"),
            "{text}"
        );
        let col = |l: &str| {
            l.find("STATE")
                .or_else(|| l.find("alive"))
                .or_else(|| l.find("suspect"))
        };
        assert_eq!(col(lines[1]), col(lines[2]), "columns line up:\n{text}");
        assert_eq!(col(lines[1]), col(lines[3]), "columns line up:\n{text}");
    }

    #[test]
    fn deployments_show_state_head_and_each_shard() {
        let shard = |node: &str, layers: std::ops::Range<u32>| herd_cluster::ShardView {
            node: node.into(),
            node_id: NodeId(format!("{node:0>32}")),
            layers,
            device: "CPU".into(),
            loaded: None,
        };
        let view = ClusterView {
            cluster: "home".into(),
            self_id: NodeId("0".repeat(32)),
            clustered: true,
            nodes: vec![node("studio", MemberState::Alive, true)],
            deployments: vec![
                herd_cluster::DeploymentView {
                    id: "smollm".into(),
                    model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                    state: "ready".into(),
                    reason: None,
                    head: Some("studio".into()),
                    shards: vec![shard("studio", 0..15), shard("mini", 15..30)],
                    conflict: None,
                    upstream: None,
                },
                herd_cluster::DeploymentView {
                    id: "big".into(),
                    model: "big.gguf".into(),
                    state: "refused".into(),
                    reason: Some("does not fit: mini needs 9.00 GiB, offers 4.00 GiB".into()),
                    head: None,
                    shards: Vec::new(),
                    conflict: None,
                    upstream: None,
                },
            ],
        };
        let text = render(&view);
        assert!(text.contains("DEPLOYMENT"), "{text}");
        let smol = text
            .lines()
            .find(|l| l.starts_with("smollm"))
            .unwrap_or_default();
        assert!(
            smol.contains("ready") && smol.contains("studio[0..15) CPU, mini[15..30) CPU"),
            "{text}"
        );
        let big = text
            .lines()
            .find(|l| l.starts_with("big"))
            .unwrap_or_default();
        assert!(
            big.contains("refused") && big.ends_with("offers 4.00 GiB"),
            "{text}"
        );
    }

    #[test]
    fn a_lone_node_says_so() {
        let view = ClusterView {
            cluster: "herd".into(),
            self_id: NodeId("0".repeat(32)),
            clustered: false,
            nodes: vec![node("solo", MemberState::Alive, true)],
            deployments: Vec::new(),
        };
        assert!(render(&view).starts_with("solo: a lone node"));
    }
}
