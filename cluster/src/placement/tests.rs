use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A model of `n` layers of `layer` bytes each, 1 GiB of embeddings/output,
/// and a KV cache of 1 KiB per token per layer.
fn facts(n: u32, layer: u64) -> ModelFacts {
    ModelFacts {
        arch: "llama".into(),
        n_layers: n,
        layer_bytes: vec![layer; n as usize],
        other_bytes: GIB,
        n_embd: 2048,
        n_vocab: 32_000,
        kv_bytes_per_token_per_layer: 1024,
        file_bytes: GIB + layer * u64::from(n),
    }
}

fn spec(id: &str, want: NodeWant, facts: ModelFacts) -> DeploymentSpec {
    DeploymentSpec {
        id: id.into(),
        model: format!("{id}.gguf"),
        want,
        slots: 2,
        ctx_size: 4096,
        facts,
    }
}

fn node(n: u8, budget: u64) -> NodeCap {
    NodeCap {
        id: NodeId(format!("{n:032x}")),
        name: format!("n{n}"),
        budget,
    }
}

fn pinned(names: &[&str]) -> NodeWant {
    NodeWant::Pinned(names.iter().map(|n| n.to_string()).collect())
}

fn placed<'a>(p: &'a Placement, id: &str) -> Option<&'a Assignment> {
    match p.deployments.get(id) {
        Some(Decision::Placed(a)) => Some(a),
        _ => None,
    }
}

fn layout(a: Option<&Assignment>) -> Vec<(String, Range<u32>)> {
    a.map(|a| {
        a.shards
            .iter()
            .map(|s| (s.name.clone(), s.layers.clone()))
            .collect()
    })
    .unwrap_or_default()
}

fn reason(p: &Placement, id: &str) -> String {
    match p.deployments.get(id) {
        Some(Decision::Refused { reason, .. }) => reason.clone(),
        other => format!("not refused: {other:?}"),
    }
}

#[test]
fn the_memory_model_adds_weights_kv_and_compute() {
    let s = spec("a", NodeWant::default(), facts(10, 100 * MIB));
    // 3 layers: weights, then KV for 2 slots × 4096 tokens × 1 KiB.
    let layers = 3 * 100 * MIB + 3 * 2 * 4096 * 1024;
    let head = GIB + 64 * MIB + 32_000 * 4 * 512;
    let other = 32 * MIB + 2048 * 4 * 512 * 8;
    assert_eq!(shard_bytes(&s, 2..5, true), layers + head);
    assert_eq!(shard_bytes(&s, 2..5, false), layers + other);
    assert_eq!(shard_bytes(&s, 0..0, false), other);
}

#[test]
fn two_pinned_pairs_split_by_memory() {
    let nodes = [
        node(1, 8 * GIB),
        node(2, 4 * GIB),
        node(3, 3 * GIB),
        node(4, 6 * GIB),
    ];
    let specs = [
        spec("a", pinned(&["n1", "n2"]), facts(16, 200 * MIB)),
        spec("b", pinned(&["n3", "n4"]), facts(16, 200 * MIB)),
    ];
    let p = place(&specs, &nodes, &Placement::default());
    let (a, b) = (layout(placed(&p, "a")), layout(placed(&p, "b")));
    assert_eq!(
        a.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert_eq!(
        b.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["n3", "n4"]
    );
    let len = |r: &Range<u32>| r.end - r.start;
    assert!(len(&a[0].1) > len(&a[1].1), "n1 has more room: {a:?}");
    assert!(len(&b[1].1) > len(&b[0].1), "n4 has more room: {b:?}");
    assert_eq!(placed(&p, "b").map(|a| &a.head), Some(&nodes[2].id));
}

#[test]
fn a_too_big_pinned_deployment_is_refused_and_others_still_place() {
    let nodes = [node(1, 4 * GIB), node(2, 8 * GIB)];
    let specs = [
        spec("big", pinned(&["n1"]), facts(10, GIB)),
        spec("small", NodeWant::Count(1), facts(4, 100 * MIB)),
    ];
    let p = place(&specs, &nodes, &Placement::default());
    let needed = shard_bytes(&specs[0], 0..10, true);
    assert_eq!(
        p.deployments.get("big"),
        Some(&Decision::Refused {
            reason: format!(
                "does not fit: n1 needs {:.2} GiB, offers 4.00 GiB",
                needed as f64 / GIB as f64
            ),
            shortfall: vec![NodeShortfall {
                node: "n1".into(),
                needed,
                offered: 4 * GIB,
            }],
        })
    );
    assert_eq!(layout(placed(&p, "small")), [("n2".to_string(), 0..4)]);
}

#[test]
fn losing_a_node_re_places_only_the_deployments_on_it() {
    let nodes = vec![
        node(1, 10 * GIB),
        node(2, 9 * GIB),
        node(3, 8 * GIB),
        node(4, 7 * GIB),
    ];
    let specs = [
        spec("a", NodeWant::Count(2), facts(8, GIB)),
        spec("b", NodeWant::Count(1), facts(2, 512 * MIB)),
        spec("c", NodeWant::Count(1), facts(2, 512 * MIB)),
    ];
    let before = place(&specs, &nodes, &Placement::default());
    assert_eq!(layout(placed(&before, "b"))[0].0, "n3");
    assert_eq!(layout(placed(&before, "c"))[0].0, "n4");
    let a_nodes: Vec<String> = layout(placed(&before, "a"))
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(a_nodes, ["n1", "n2"]);

    let after = place(
        &specs,
        &[nodes[0].clone(), nodes[2].clone(), nodes[3].clone()],
        &before,
    );
    assert_eq!(placed(&after, "b"), placed(&before, "b"));
    assert_eq!(placed(&after, "c"), placed(&before, "c"));
    let a_nodes: Vec<String> = layout(placed(&after, "a"))
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(a_nodes, ["n1", "n3"], "{after:?}");
}

#[test]
fn count_takes_the_roomiest_nodes_head_first_ties_by_id() {
    let nodes = [
        node(4, 5 * GIB),
        node(1, 3 * GIB),
        node(3, 9 * GIB),
        node(2, 5 * GIB),
    ];
    let specs = [spec("a", NodeWant::Count(3), facts(6, 100 * MIB))];
    let p = place(&specs, &nodes, &Placement::default());
    let names: Vec<String> = layout(placed(&p, "a")).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["n3", "n2", "n4"]);
}

#[test]
fn impossible_wishes_are_refused_with_reasons() {
    let nodes = [node(1, 64 * GIB), node(2, 64 * GIB)];
    let specs = [
        spec("ghost", pinned(&["n1", "n9"]), facts(4, MIB)),
        spec("many", NodeWant::Count(3), facts(4, MIB)),
        spec("thin", NodeWant::Count(2), facts(1, MIB)),
        spec("twice", pinned(&["n2", "n2"]), facts(4, MIB)),
        spec("none", NodeWant::Count(0), facts(4, MIB)),
    ];
    let p = place(&specs, &nodes, &Placement::default());
    assert_eq!(
        reason(&p, "ghost"),
        "pinned node n9 is not in the cluster (or not alive)"
    );
    assert_eq!(reason(&p, "many"), "wants 3 nodes but only 2 are alive");
    assert_eq!(
        reason(&p, "thin"),
        "wants 2 nodes but the model has 1 layers (each node needs at least one)"
    );
    assert_eq!(reason(&p, "twice"), "pinned node n2 is listed twice");
    assert_eq!(reason(&p, "none"), "wants 0 nodes (at least 1 is needed)");
}

#[test]
fn the_first_of_a_repeated_id_wins() {
    let nodes = [node(1, 64 * GIB), node(2, 64 * GIB)];
    let specs = [
        spec("a", pinned(&["n2"]), facts(4, MIB)),
        spec("a", pinned(&["n1"]), facts(4, MIB)),
    ];
    let p = place(&specs, &nodes, &Placement::default());
    assert_eq!(p.deployments.len(), 1);
    assert_eq!(layout(placed(&p, "a")), [("n2".to_string(), 0..4)]);
}

#[test]
fn a_new_model_or_wish_under_the_same_id_is_re_placed() {
    let nodes = [node(1, 64 * GIB), node(2, 32 * GIB)];
    let old = [spec("a", NodeWant::Count(1), facts(4, MIB))];
    let before = place(&old, &nodes, &Placement::default());
    assert_eq!(layout(placed(&before, "a"))[0].0, "n1");

    let mut moved = old.clone();
    moved[0].want = pinned(&["n2"]);
    let after = place(&moved, &nodes, &before);
    assert_eq!(layout(placed(&after, "a")), [("n2".to_string(), 0..4)]);

    let mut renamed = old.clone();
    renamed[0].model = "other.gguf".into();
    let after = place(&renamed, &nodes, &before);
    assert_eq!(
        placed(&after, "a").map(|a| a.model.as_str()),
        Some("other.gguf")
    );
}

#[test]
fn placements_round_trip_through_json() -> Result<(), serde_json::Error> {
    let nodes = [node(1, 8 * GIB), node(2, 4 * GIB)];
    let specs = [
        spec("a", pinned(&["n1", "n2"]), facts(8, 100 * MIB)),
        spec("b", pinned(&["n3"]), facts(8, 100 * MIB)),
    ];
    let p = place(&specs, &nodes, &Placement::default());
    let text = serde_json::to_string(&p)?;
    assert_eq!(serde_json::from_str::<Placement>(&text)?, p);
    let spec_text = serde_json::to_string(&specs[0])?;
    assert_eq!(
        serde_json::from_str::<DeploymentSpec>(&spec_text)?,
        specs[0]
    );
    Ok(())
}
