//! Invariants of [`place`] over random models, clusters and wishes.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MIB: u64 = 1 << 20;

fn facts() -> impl Strategy<Value = ModelFacts> {
    (
        1u32..=64,
        0u64..=2 << 30,
        0u32..=8192,
        0u32..=300_000,
        0u64..=8192,
    )
        .prop_flat_map(|(n, other, n_embd, n_vocab, kv)| {
            prop::collection::vec(0u64..=1 << 30, n as usize).prop_map(move |layer_bytes| {
                ModelFacts {
                    arch: "llama".into(),
                    n_layers: n,
                    file_bytes: layer_bytes.iter().sum::<u64>() + other,
                    layer_bytes,
                    other_bytes: other,
                    n_embd,
                    n_vocab,
                    kv_bytes_per_token_per_layer: kv,
                }
            })
        })
}

/// Node `i` is named `n{i}`; ids run against age so id order ≠ list order.
fn nodes() -> impl Strategy<Value = Vec<NodeCap>> {
    let budget = prop_oneof![0u64..=256 * MIB, 0u64..=64 << 30];
    prop::collection::vec(budget, 1..=6).prop_map(|budgets| {
        budgets
            .into_iter()
            .enumerate()
            .map(|(i, budget)| NodeCap {
                id: NodeId(format!("{:032x}", 100 - i)),
                name: format!("n{i}"),
                budget,
            })
            .collect()
    })
}

/// Pinned names include ones no node has (`n6`, `n7`, and any beyond the list).
fn want() -> impl Strategy<Value = NodeWant> {
    prop_oneof![
        (1u32..=4).prop_map(NodeWant::Count),
        prop::collection::vec(0u8..8, 1..=4)
            .prop_map(|ix| NodeWant::Pinned(ix.iter().map(|i| format!("n{i}")).collect())),
    ]
}

fn specs() -> impl Strategy<Value = Vec<DeploymentSpec>> {
    let one = (0u8..5, 0u8..2, want(), 1u32..=4, 1u32..=8192, facts()).prop_map(
        |(id, model, want, slots, ctx_size, facts)| DeploymentSpec {
            id: format!("d{id}"),
            model: format!("m{model}"),
            want,
            slots,
            ctx_size,
            facts,
        },
    );
    prop::collection::vec(one, 1..=4)
}

fn placed(p: &Placement) -> BTreeMap<&String, &Assignment> {
    p.deployments
        .iter()
        .filter_map(|(id, d)| match d {
            Decision::Placed(a) => Some((id, a)),
            Decision::Refused { .. } => None,
        })
        .collect()
}

/// Everything a placement promises, checked against its inputs.
fn check(specs: &[DeploymentSpec], nodes: &[NodeCap], p: &Placement) -> Result<(), TestCaseError> {
    let ids: BTreeSet<&String> = specs.iter().map(|s| &s.id).collect();
    prop_assert_eq!(p.deployments.keys().collect::<BTreeSet<_>>(), ids);
    let mut used: BTreeMap<&NodeId, u64> = BTreeMap::new();
    for (id, decision) in &p.deployments {
        let spec = specs.iter().find(|s| &s.id == id);
        let spec = spec.ok_or_else(|| TestCaseError::fail(format!("no spec {id}")))?;
        let a = match decision {
            Decision::Placed(a) => a,
            Decision::Refused { reason, .. } => {
                prop_assert!(!reason.is_empty());
                continue;
            }
        };
        prop_assert_eq!(a.shards.first().map(|s| &s.node), Some(&a.head));
        let ranges: Vec<Range<u32>> = a.shards.iter().map(|s| s.layers.clone()).collect();
        prop_assert!(covers(&ranges, spec.facts.n_layers), "{:?}", ranges);
        let distinct: BTreeSet<&NodeId> = a.shards.iter().map(|s| &s.node).collect();
        prop_assert_eq!(distinct.len(), a.shards.len());
        match &spec.want {
            NodeWant::Count(k) => prop_assert_eq!(a.shards.len(), *k as usize),
            NodeWant::Pinned(names) => {
                prop_assert!(a.shards.iter().map(|s| &s.name).eq(names.iter()))
            }
        }
        for (i, shard) in a.shards.iter().enumerate() {
            let node = nodes.iter().find(|n| n.id == shard.node);
            prop_assert_eq!(node.map(|n| &n.name), Some(&shard.name));
            prop_assert_eq!(shard.bytes, shard_bytes(spec, shard.layers.clone(), i == 0));
            *used.entry(&shard.node).or_default() += shard.bytes;
        }
    }
    for (id, bytes) in used {
        let budget = nodes.iter().find(|n| &n.id == id).map_or(0, |n| n.budget);
        prop_assert!(bytes <= budget, "{} uses {} of {}", id, bytes, budget);
    }
    Ok(())
}

/// Every assignment placed in `before` is in `after` unchanged.
fn kept(before: &Placement, after: &Placement) -> Result<(), TestCaseError> {
    let after = placed(after);
    for (id, a) in placed(before) {
        prop_assert_eq!(after.get(id), Some(&a), "{} moved", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn placements_keep_their_promises(specs in specs(), nodes in nodes()) {
        let p = place(&specs, &nodes, &Placement::default());
        check(&specs, &nodes, &p)?;
    }

    #[test]
    fn placing_again_changes_nothing(specs in specs(), nodes in nodes()) {
        let p = place(&specs, &nodes, &Placement::default());
        prop_assert_eq!(place(&specs, &nodes, &p), p);
    }

    #[test]
    fn a_joining_node_moves_nothing(
        specs in specs(),
        nodes in nodes(),
        budget in 0u64..=64 << 30,
    ) {
        let before = place(&specs, &nodes, &Placement::default());
        let mut more = nodes.clone();
        more.push(NodeCap { id: NodeId(format!("{:032x}", 7)), name: "n9".into(), budget });
        let after = place(&specs, &more, &before);
        check(&specs, &more, &after)?;
        kept(&before, &after)?;
    }

    #[test]
    fn losing_an_unused_node_moves_nothing(specs in specs(), nodes in nodes(), pick in 0usize..6) {
        let before = place(&specs, &nodes, &Placement::default());
        let in_use: BTreeSet<&NodeId> =
            placed(&before).values().flat_map(|a| a.shards.iter().map(|s| &s.node)).collect();
        let Some(gone) = nodes.iter().cycle().skip(pick).take(nodes.len()).find(|n| !in_use.contains(&n.id))
        else {
            return Ok(());
        };
        let fewer: Vec<NodeCap> = nodes.iter().filter(|n| n.id != gone.id).cloned().collect();
        let after = place(&specs, &fewer, &before);
        check(&specs, &fewer, &after)?;
        kept(&before, &after)?;
    }

    #[test]
    fn dropping_a_deployment_moves_no_other(specs in specs(), nodes in nodes(), pick in 0usize..4) {
        let before = place(&specs, &nodes, &Placement::default());
        let Some(dropped) = specs.get(pick % specs.len()).map(|s| s.id.clone()) else {
            return Ok(());
        };
        let rest: Vec<DeploymentSpec> = specs.iter().filter(|s| s.id != dropped).cloned().collect();
        let after = place(&rest, &nodes, &before);
        check(&rest, &nodes, &after)?;
        let mut before = before;
        before.deployments.remove(&dropped);
        kept(&before, &after)?;
    }
}
