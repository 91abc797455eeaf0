//! The candidate table: its cap under an mDNS flood, and where probes go.

use super::*;

fn flood_addr(n: u32) -> SocketAddr {
    let [_, _, hi, lo] = n.to_be_bytes();
    SocketAddr::from(([10, 2, hi, lo], 9000))
}

#[test]
fn an_mdns_flood_leaves_the_table_at_its_cap_with_static_peers_kept() {
    let (mut m, t0) = fresh();
    let statics: Vec<(SocketAddr, Option<NodeId>)> = (0..3)
        .map(|i| (SocketAddr::from(([10, 1, 0, i], 8080)), None))
        .collect();
    m.apply(
        Event::Mentioned {
            addrs: statics.clone(),
            source: Source::Static,
        },
        t0,
    );
    for batch in 0..100u32 {
        let addrs = (0..100u32)
            .map(|i| (flood_addr(batch * 100 + i), None))
            .collect();
        m.apply(
            Event::Mentioned {
                addrs,
                source: Source::Discovery,
            },
            t0 + ms_(u64::from(batch)),
        );
    }
    assert_eq!(m.candidates.len(), MAX_CANDIDATES);
    for (addr, _) in &statics {
        assert_eq!(
            m.candidates.get(addr).map(|c| c.source),
            Some(Source::Static),
            "{addr} kept"
        );
    }
    assert!(
        m.candidates.contains_key(&flood_addr(9_999)),
        "the newest finds are kept, the oldest evicted"
    );
    assert!(!m.candidates.contains_key(&flood_addr(0)));
    // A static peer named after the flood still gets in.
    let late = SocketAddr::from(([10, 1, 0, 9], 8080));
    m.apply(
        Event::Mentioned {
            addrs: vec![(late, None)],
            source: Source::Static,
        },
        t0 + ms_(200),
    );
    assert!(m.candidates.contains_key(&late));
    assert_eq!(m.candidates.len(), MAX_CANDIDATES);
}

#[test]
fn a_table_of_static_peers_refuses_mdns_finds_but_not_more_static_peers() {
    let (mut m, t0) = fresh();
    let statics = (0..MAX_CANDIDATES as u32)
        .map(|n| (flood_addr(n), None))
        .collect();
    m.apply(
        Event::Mentioned {
            addrs: statics,
            source: Source::Static,
        },
        t0,
    );
    m.apply(
        Event::Mentioned {
            addrs: vec![(flood_addr(5_000), None)],
            source: Source::Discovery,
        },
        t0,
    );
    assert_eq!(m.candidates.len(), MAX_CANDIDATES, "no room for mDNS");
    m.apply(
        Event::Mentioned {
            addrs: vec![(flood_addr(5_001), None)],
            source: Source::Static,
        },
        t0,
    );
    assert_eq!(m.candidates.len(), MAX_CANDIDATES + 1);
}

#[test]
fn probes_are_addressed_to_the_node_expected_there() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Mentioned {
            addrs: vec![(addr(3), Some(info(3, 1).id)), (addr(4), None)],
            source: Source::Discovery,
        },
        t0,
    );
    assert_eq!(m.targets(t0), vec![probe(3, Some(3)), probe(4, None)]);
    // Another secret holder answers at addr(3): probe it as itself.
    m.apply(
        Event::Misaddressed {
            addr: addr(3),
            answered: info(5, 1).id,
        },
        t0 + ms_(10),
    );
    assert_eq!(m.targets(t0 + ms_(20)), vec![probe(3, Some(5))]);
}

#[test]
fn a_new_node_at_a_members_address_is_probed_once_it_refuses_our_heartbeat() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: Some(addr(2)),
        },
        t0,
    );
    assert_eq!(m.targets(t0), vec![member(2)]);
    // Node 2's address now belongs to node 3, which refuses what we sent node 2.
    m.apply(
        Event::Misaddressed {
            addr: addr(2),
            answered: info(3, 1).id,
        },
        t0 + ms_(10),
    );
    assert_eq!(
        m.targets(t0 + ms_(500)),
        vec![
            member(2),
            Target::Candidate {
                addr: addr(2),
                id: Some(info(3, 1).id)
            }
        ]
    );
    let mut three = info(3, 1);
    three.addr = addr(2);
    let c = m.apply(
        Event::Heard {
            info: three,
            via: Some(addr(2)),
        },
        t0 + ms_(520),
    );
    assert!(
        matches!(
            c.as_slice(),
            [
                Change::Removed {
                    reason: RemoveReason::Replaced,
                    ..
                },
                Change::Joined { .. }
            ]
        ),
        "{c:?}"
    );
}

#[test]
fn our_own_answer_at_a_misaddressed_address_sends_an_unaddressed_probe() {
    let (mut m, t0) = fresh();
    let alias = SocketAddr::from(([192, 168, 1, 9], 8080));
    m.apply(
        Event::Mentioned {
            addrs: vec![(alias, Some(info(7, 1).id))],
            source: Source::Gossip,
        },
        t0,
    );
    m.apply(
        Event::Misaddressed {
            addr: alias,
            answered: m.me().id.clone(),
        },
        t0,
    );
    assert_eq!(
        m.targets(t0),
        vec![Target::Candidate {
            addr: alias,
            id: None
        }]
    );
}
