use super::*;
use crate::config::Role;
use proptest::prelude::*;

mod candidates;

fn info(n: u8, started: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId(format!("{n:032x}")),
        name: format!("n{n}"),
        role: Role::Node,
        version: "0.1.0".into(),
        addr: addr(n),
        addrs: vec![addr(n)],
        memory_total: 8 << 30,
        memory_free: 4 << 30,
        memory_budget: 6 << 30,
        cores: 4,
        engines: vec!["llama-cpu".into()],
        started_at_ms: started,
        tunnel_port: 0,
        shard_device: String::new(),
        models: Vec::new(),
        heads: Vec::new(),
        specs: Vec::new(),
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 77, 0, n], 8080))
}

fn ms_(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fresh() -> (Membership, Instant) {
    (
        Membership::new(info(1, 1), Timeouts::default()),
        Instant::now(),
    )
}

/// A probe of node `n`'s address, addressed to node `to` (if known).
fn probe(n: u8, to: Option<u8>) -> Target {
    Target::Candidate {
        addr: addr(n),
        id: to.map(|t| info(t, 1).id),
    }
}

/// A heartbeat to member `n` at its own address.
fn member(n: u8) -> Target {
    Target::Member {
        addr: addr(n),
        id: info(n, 1).id,
    }
}

fn states(m: &Membership) -> Vec<(String, MemberState)> {
    m.members()
        .map(|m| (m.info.name.clone(), m.state))
        .collect()
}

#[test]
fn a_heard_peer_joins_once() {
    let (mut m, t0) = fresh();
    let c = m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    assert_eq!(
        c,
        vec![Change::Joined {
            id: info(2, 1).id,
            name: "n2".into(),
            addr: addr(2)
        }]
    );
    assert!(m
        .apply(
            Event::Heard {
                info: info(2, 1),
                via: None
            },
            t0 + ms_(500)
        )
        .is_empty());
    assert_eq!(states(&m), vec![("n2".into(), MemberState::Alive)]);
}

#[test]
fn silence_walks_alive_suspect_dead_removed() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    assert!(m.apply(Event::Tick, t0 + ms_(1499)).is_empty());
    let c = m.apply(Event::Tick, t0 + ms_(1500));
    assert!(
        matches!(
            c.as_slice(),
            [Change::StateChanged {
                from: MemberState::Alive,
                to: MemberState::Suspect,
                ..
            }]
        ),
        "{c:?}"
    );
    let c = m.apply(Event::Tick, t0 + ms_(2500));
    assert!(
        matches!(
            c.as_slice(),
            [Change::StateChanged {
                from: MemberState::Suspect,
                to: MemberState::Dead,
                silent_ms: 2500,
                ..
            }]
        ),
        "{c:?}"
    );
    assert_eq!(
        m.view("c", true, t0 + ms_(3000)).nodes[1].state,
        MemberState::Dead,
        "shown as dead before removal"
    );
    let c = m.apply(Event::Tick, t0 + ms_(3500));
    assert!(
        matches!(
            c.as_slice(),
            [Change::Removed {
                reason: RemoveReason::Timeout,
                ..
            }]
        ),
        "{c:?}"
    );
    assert!(states(&m).is_empty(), "no ghost");
    // Its address is still probed (under its id), so it can come back.
    assert_eq!(m.targets(t0 + ms_(3500)), vec![probe(2, Some(2))]);
}

#[test]
fn a_long_sleep_reports_death_then_removal_in_one_tick() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    let c = m.apply(Event::Tick, t0 + Duration::from_secs(60));
    assert!(
        matches!(
            c.as_slice(),
            [
                Change::StateChanged {
                    to: MemberState::Dead,
                    ..
                },
                Change::Removed {
                    reason: RemoveReason::Timeout,
                    ..
                }
            ]
        ),
        "{c:?}"
    );
}

#[test]
fn a_suspect_or_dead_peer_recovers_when_heard() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    m.apply(Event::Tick, t0 + ms_(2600));
    let c = m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0 + ms_(2700),
    );
    assert!(
        matches!(
            c.as_slice(),
            [Change::StateChanged {
                from: MemberState::Dead,
                to: MemberState::Alive,
                ..
            }]
        ),
        "{c:?}"
    );
    assert!(
        m.apply(Event::Tick, t0 + ms_(3600)).is_empty(),
        "the silence restarted"
    );
}

#[test]
fn a_removed_peer_rejoins_cleanly_and_a_restart_is_noticed() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    m.apply(Event::Tick, t0 + ms_(4000));
    let c = m.apply(
        Event::Heard {
            info: info(2, 2),
            via: Some(addr(2)),
        },
        t0 + ms_(5000),
    );
    assert!(matches!(c.as_slice(), [Change::Joined { .. }]), "{c:?}");
    let c = m.apply(
        Event::Heard {
            info: info(2, 3),
            via: None,
        },
        t0 + ms_(5100),
    );
    assert!(matches!(c.as_slice(), [Change::Restarted { .. }]), "{c:?}");
    assert!(
        m.targets(t0 + ms_(6000)) == vec![member(2)],
        "probed once, as a member"
    );
}

#[test]
fn leaving_removes_at_once() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    let c = m.apply(Event::Left { id: info(2, 1).id }, t0 + ms_(10));
    assert!(
        matches!(
            c.as_slice(),
            [Change::Removed {
                reason: RemoveReason::Left,
                ..
            }]
        ),
        "{c:?}"
    );
    assert!(
        m.targets(t0 + ms_(20)).is_empty(),
        "a peer that left is not probed right away"
    );
}

#[test]
fn a_new_id_at_an_old_address_replaces_the_old_member() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0,
    );
    let mut other = info(3, 1);
    other.addr = addr(2);
    let c = m.apply(
        Event::Heard {
            info: other,
            via: None,
        },
        t0 + ms_(100),
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
    assert_eq!(states(&m).len(), 1);
}

#[test]
fn mentioned_addresses_are_probed_until_they_answer() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Mentioned {
            addrs: vec![(addr(2), None), (addr(1), None)],
            source: Source::Static,
        },
        t0,
    );
    assert_eq!(
        m.targets(t0),
        vec![probe(2, None)],
        "our own address is never a target"
    );
    assert!(
        m.targets(t0 + ms_(100)).is_empty(),
        "not twice per interval"
    );
    m.apply(Event::ContactFailed { addr: addr(2) }, t0 + ms_(500));
    assert!(
        m.targets(t0 + ms_(1000)).is_empty(),
        "backs off after a failure"
    );
    assert_eq!(m.targets(t0 + ms_(1500)), vec![probe(2, None)]);
    assert!(
        states(&m).is_empty(),
        "an address that never answered is not a member"
    );
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: Some(addr(2)),
        },
        t0 + ms_(1600),
    );
    assert_eq!(
        m.targets(t0 + ms_(2200)),
        vec![member(2)],
        "once a member, sent heartbeats as one"
    );
}

#[test]
fn heartbeats_go_where_the_peer_answered() {
    let (mut m, t0) = fresh();
    let bridge = SocketAddr::from(([169, 254, 7, 2], 8080));
    m.apply(
        Event::Mentioned {
            addrs: vec![(bridge, None)],
            source: Source::Static,
        },
        t0,
    );
    assert_eq!(
        m.targets(t0),
        vec![Target::Candidate {
            addr: bridge,
            id: None
        }]
    );
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: Some(bridge),
        },
        t0 + ms_(10),
    );
    assert_eq!(
        m.targets(t0 + ms_(600)),
        vec![Target::Member {
            addr: bridge,
            id: info(2, 1).id
        }],
        "not its advertised Wi-Fi address"
    );
    assert_eq!(
        m.view("c", true, t0 + ms_(600)).nodes[1].addr,
        addr(2),
        "the view shows what it advertises"
    );
}

#[test]
fn gossip_about_ourselves_is_ignored_but_an_id_clash_is_reported() {
    let (mut m, t0) = fresh();
    let alias = SocketAddr::from(([192, 168, 1, 9], 8080));
    m.apply(
        Event::Mentioned {
            addrs: vec![(alias, None)],
            source: Source::Discovery,
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
    assert!(m
        .apply(
            Event::Heard {
                info: info(1, 1),
                via: Some(alias)
            },
            t0
        )
        .is_empty());
    assert!(
        m.targets(t0 + ms_(5000)).is_empty(),
        "we found ourselves there"
    );
    let c = m.apply(
        Event::Heard {
            info: info(1, 99),
            via: Some(addr(7)),
        },
        t0,
    );
    assert_eq!(c, vec![Change::IdClash { addr: addr(7) }]);
    assert!(states(&m).is_empty());
}

#[test]
fn gossip_candidates_are_forgotten_static_peers_are_not() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Mentioned {
            addrs: vec![(addr(2), None)],
            source: Source::Gossip,
        },
        t0,
    );
    m.apply(
        Event::Mentioned {
            addrs: vec![(addr(3), None)],
            source: Source::Static,
        },
        t0,
    );
    m.apply(Event::Tick, t0 + FORGET_AFTER + ms_(1));
    assert_eq!(m.targets(t0 + FORGET_AFTER + ms_(1)), vec![probe(3, None)]);
}

#[test]
fn the_view_lists_self_first_then_by_name() {
    let (mut m, t0) = fresh();
    m.apply(
        Event::Heard {
            info: info(3, 1),
            via: None,
        },
        t0,
    );
    m.apply(
        Event::Heard {
            info: info(2, 1),
            via: None,
        },
        t0 + ms_(200),
    );
    let v = m.view("home", true, t0 + ms_(300));
    let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert!(v.nodes[0].is_self && v.nodes[0].last_seen_ms == 0);
    assert_eq!(
        (v.nodes[1].last_seen_ms, v.nodes[2].last_seen_ms),
        (100, 300)
    );
    assert_eq!(v.peer_refs().len(), 2);
}

#[derive(Debug, Clone)]
enum Op {
    Heard(u8, u64),
    Left(u8),
    Mention(u8),
    Failed(u8),
    Misaddressed(u8, u8),
    Tick,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..6, 1u64..3).prop_map(|(n, s)| Op::Heard(n, s)),
        (1u8..6).prop_map(Op::Left),
        (1u8..6).prop_map(Op::Mention),
        (1u8..6).prop_map(Op::Failed),
        (1u8..6, 1u8..6).prop_map(|(a, n)| Op::Misaddressed(a, n)),
        Just(Op::Tick),
        (0u64..4000).prop_map(Op::Wait),
    ]
}

proptest! {
    #[test]
    fn membership_invariants_hold(ops in proptest::collection::vec(op(), 0..80)) {
        let (mut m, t0) = fresh();
        let mut now = t0;
        for op in ops {
            let event = match op {
                Op::Heard(n, s) => Event::Heard { info: info(n, s), via: Some(addr(n)) },
                Op::Left(n) => Event::Left { id: info(n, 1).id },
                Op::Mention(n) => Event::Mentioned { addrs: vec![(addr(n), None)], source: Source::Gossip },
                Op::Failed(n) => Event::ContactFailed { addr: addr(n) },
                Op::Misaddressed(a, n) => Event::Misaddressed { addr: addr(a), answered: info(n, 1).id },
                Op::Tick => Event::Tick,
                Op::Wait(d) => { now += ms_(d); continue; }
            };
            let is_tick = matches!(event, Event::Tick);
            m.apply(event, now);
            let t = Timeouts::default();
            prop_assert!(m.members().all(|x| x.info.id != m.me().id), "we are never our own member");
            let addrs: BTreeSet<SocketAddr> = m.members().map(|x| x.info.addr).collect();
            prop_assert_eq!(addrs.len(), m.members().count(), "one member per address");
            if is_tick {
                for x in m.members() {
                    let silent = now.saturating_duration_since(x.last_heard);
                    prop_assert_eq!(x.state, classify(&t, silent));
                    prop_assert!(silent < t.dead_after + t.remove_after, "no ghosts after a tick");
                }
            }
            let targets = m.targets(now);
            prop_assert!(targets.iter().all(|t| t.addr() != addr(1) && t.id() != Some(&m.me().id)), "never probe ourselves");
            let unique: BTreeSet<_> = targets.iter().collect();
            prop_assert_eq!(unique.len(), targets.len());
            for t in &targets {
                let is_member = t.id().is_some_and(|id| m.members().any(|x| &x.info.id == id));
                prop_assert_eq!(matches!(t, Target::Member { .. }), is_member, "only members get heartbeats: {:?}", t);
            }
            prop_assert!(m.candidates.len() <= MAX_CANDIDATES);
        }
    }
}
