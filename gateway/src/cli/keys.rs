//! `herd keys create|list|revoke|rotate`: manages the key file in a node's
//! state dir (the same dir `herd serve` uses, found the same way). A
//! running server picks the change up within 250 ms, and its cluster peers
//! about a second later.

use super::cluster_args::{read_config, resolve_state_dir};
use crate::caller::Role;
use crate::keys::file::KeyFile;
use crate::keys::ops::{self, KeyView};
use crate::keys::{now_ms, parse_duration_ms, KeySpec, Limits};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// TOML config file (its `[cluster] state_dir` / `node_name` say where the keys are).
    #[arg(long, env = "HERD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The server's state dir (default ~/.local/state/herd/<node name>).
    #[arg(long, env = "HERD_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// The server's node name, which names its default state dir.
    #[arg(
        long = "name",
        env = "HERD_NODE_NAME",
        value_name = "NODE",
        global = true
    )]
    pub node_name: Option<String>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print its secret (the only time it is shown).
    Create(CreateArgs),
    /// List keys: name, prefix, limits, created, last used, status (never a secret).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working within 2 s, on every node.
    Revoke { name: String },
    /// Replace a key's secret (same name, role and limits); prints the new one.
    Rotate { name: String },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The key's name, shown in logs, metrics and usage (never the secret).
    pub name: String,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + completion).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[arg(long)]
    pub max_concurrency: Option<u64>,
    /// The only models (ids or aliases) the key may use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Lifetime: 30d, 12h, 90m.
    #[arg(long)]
    pub expires: Option<String>,
    /// `admin` may also manage keys and read usage over HTTP.
    #[arg(long, value_parser = ["user", "admin"], default_value = "user")]
    pub role: String,
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let raw = read_config(args.config.as_ref())?;
    let dir = resolve_state_dir(
        args.state_dir.as_ref(),
        args.node_name.as_ref(),
        &raw.cluster,
    );
    let file = KeyFile::new(&dir);
    match args.command {
        KeysCommand::Create(c) => {
            let spec = KeySpec {
                role: if c.role == "admin" {
                    Role::Admin
                } else {
                    Role::User
                },
                limits: Limits {
                    rpm: c.rpm,
                    tpm: c.tpm,
                    max_concurrency: c.max_concurrency,
                    models: c.models,
                },
                expires_in_ms: c
                    .expires
                    .as_deref()
                    .map(parse_duration_ms)
                    .transpose()
                    .map_err(|m| anyhow::anyhow!("--expires: {m}"))?,
            };
            let created = ops::create(&file, &c.name, &spec)?;
            println!("{}", created.key);
            eprintln!(
                "created key `{}` in {}; this is the only time its secret is shown",
                created.view.name,
                file.path().display()
            );
        }
        KeysCommand::Rotate { name } => {
            let created = ops::rotate(&file, &name)?;
            println!("{}", created.key);
            eprintln!("rotated key `{name}`: the old secret no longer works; this is the only time the new one is shown");
        }
        KeysCommand::Revoke { name } => {
            ops::revoke(&file, &name)?;
            eprintln!("revoked key `{name}`");
        }
        KeysCommand::List { json } => {
            let keys = ops::list(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", table(&keys, now_ms()));
            }
        }
    }
    Ok(())
}

fn table(keys: &[KeyView], now: u64) -> String {
    let mut rows = vec![[
        "NAME",
        "PREFIX",
        "ROLE",
        "RPM",
        "TPM",
        "CONC",
        "MODELS",
        "CREATED",
        "LAST USED",
        "STATUS",
    ]
    .map(String::from)];
    let num = |v: Option<u64>| v.map_or_else(|| "-".into(), |n| n.to_string());
    for k in keys {
        let status = match (k.status, k.expires_ms) {
            ("active", Some(e)) => format!("active, expires in {}", ago(e.saturating_sub(now))),
            (s, _) => s.to_string(),
        };
        rows.push([
            k.name.clone(),
            format!("{}…", k.prefix),
            k.role.as_str().to_string(),
            num(k.limits.rpm),
            num(k.limits.tpm),
            num(k.limits.max_concurrency),
            k.limits
                .models
                .as_ref()
                .map_or("all".into(), |m| m.join(",")),
            format!("{} ago", ago(now.saturating_sub(k.created_ms))),
            k.last_used_ms.map_or("never".into(), |t| {
                format!("{} ago", ago(now.saturating_sub(t)))
            }),
            status,
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `3d`, `5h`, `12m`, `40s`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
