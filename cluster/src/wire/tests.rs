//! Every message a node sends encodes, and decodes to itself: what lets the
//! server and the heartbeat treat an encoding failure as unreachable (logged,
//! never an empty body).

use super::*;
use crate::config::Role;
use crate::gguf::ModelFacts;
use crate::node::HeadStatus;
use crate::spec::{DeploySpec, Wanted};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::PathBuf;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 8080))
}

fn spec(nodes: Wanted) -> DeploySpec {
    DeploySpec {
        id: "smol \"quoted\" é".into(),
        model: "m.gguf".into(),
        path: Some(PathBuf::from("/models/m.gguf")),
        nodes,
        threads: 2,
        slots: 4,
        ctx_size: 4096,
        max_queue: 64,
        max_queue_wait_ms: 30_000,
        max_tokens_limit: 4096,
        max_n: 8,
        progress_timeout_ms: 120_000,
        mmap: false,
        cpu_repack: true,
        embeddings: false,
        upstream: None,
        facts: Some(ModelFacts {
            arch: "llama".into(),
            n_layers: 2,
            layer_bytes: vec![10, 20],
            other_bytes: 5,
            n_embd: 64,
            n_vocab: 100,
            kv_bytes_per_token_per_layer: 256,
            file_bytes: 35,
        }),
        facts_error: Some("a reason".into()),
        sha256: Some("ab".repeat(32)),
    }
}

fn info(role: Role) -> NodeInfo {
    NodeInfo {
        id: NodeId("0123".into()),
        name: "studio-1".into(),
        role,
        version: "0.1.0".into(),
        addr: addr(1),
        addrs: vec![addr(1), "[::1]:8080".parse().unwrap_or(addr(2))],
        memory_total: u64::MAX,
        memory_free: 0,
        memory_budget: 1 << 40,
        cores: 8,
        engines: vec!["llama-cpu".into()],
        started_at_ms: 1,
        tunnel_port: 9000,
        shard_device: "CPU".into(),
        models: vec!["m.gguf".into()],
        heads: vec![HeadStatus {
            id: "smol".into(),
            state: "failed".into(),
            reason: Some("line 1\nline 2".into()),
            layout: vec![("CPU".into(), 0..2)],
        }],
        specs: vec![
            spec(Wanted::Count(2)),
            spec(Wanted::Names(vec!["a".into()])),
        ],
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = serde_json::to_vec(value);
    assert!(bytes.is_ok(), "{value:?} does not encode: {bytes:?}");
    let back: Result<T, _> = serde_json::from_slice(&bytes.unwrap_or_default());
    assert_eq!(back.ok().as_ref(), Some(value));
}

#[test]
fn every_wire_message_encodes_and_decodes_to_itself() {
    for role in [Role::Gateway, Role::Node] {
        for leaving in [false, true] {
            round_trip(&Gossip {
                from: info(role),
                members: vec![PeerRef {
                    id: NodeId("9".into()),
                    addr: addr(9),
                }],
                leaving,
            });
        }
    }
    round_trip(&Refusal {
        error: "no \u{0} way".into(),
    });
    let nodes = [MemberState::Alive, MemberState::Suspect, MemberState::Dead]
        .into_iter()
        .enumerate()
        .map(|(i, state)| NodeView::new(&info(Role::Node), state, i as u64, i == 0))
        .collect();
    round_trip(&ClusterView {
        cluster: "herd".into(),
        self_id: NodeId("0123".into()),
        clustered: true,
        nodes,
        deployments: vec![DeploymentView {
            id: "smol".into(),
            model: "m.gguf".into(),
            state: "ready".into(),
            reason: None,
            head: Some("studio-1".into()),
            shards: vec![ShardView {
                node: "studio-1".into(),
                node_id: NodeId("0123".into()),
                layers: 0..2,
                device: "CPU".into(),
                loaded: Some(0..2),
            }],
            conflict: Some("defined twice".into()),
            upstream: None,
        }],
    });
}

/// Why the config refuses a non-UTF-8 model path: a heartbeat could not carry it.
#[test]
fn a_non_utf8_path_is_the_one_thing_that_would_not_encode() {
    use std::os::unix::ffi::OsStrExt;
    let mut s = spec(Wanted::Count(1));
    s.path = Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/m/\xff.gguf")));
    assert!(serde_json::to_vec(&s).is_err());
}
