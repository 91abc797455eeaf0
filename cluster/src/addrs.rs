//! Which addresses a node advertises, and where its static peers are.

use crate::membership::{Event, Source};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often static peer names are resolved again (DHCP, `.local` names).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// The address peers use, and all addresses of this node. An unspecified
/// bind address (0.0.0.0, ::) stands for every interface: advertise those.
pub(crate) fn advertised_addrs(bound: SocketAddr) -> (SocketAddr, Vec<SocketAddr>) {
    if !bound.ip().is_unspecified() {
        return (bound, vec![bound]);
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip) && (bound.is_ipv6() || ip.is_ipv4()))
        .collect();
    ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    ips.dedup();
    let addrs: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    let primary = addrs
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], bound.port())));
    (
        primary,
        if addrs.is_empty() {
            vec![primary]
        } else {
            addrs
        },
    )
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Resolves `host:port` (or bare `host`, which gets our port) now and every
/// [`RESOLVE_EVERY`], feeding the addresses to the membership as static peers.
pub(crate) async fn resolve_peers(peers: Vec<String>, default_port: u16, tx: mpsc::Sender<Event>) {
    let mut failing: HashSet<String> = HashSet::new();
    loop {
        let mut addrs = Vec::new();
        for peer in &peers {
            let target = if peer.parse::<SocketAddr>().is_ok()
                || peer
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                peer.clone()
            } else {
                format!("{peer}:{default_port}")
            };
            let resolved = tokio::net::lookup_host(target.as_str())
                .await
                .map(|found| found.collect::<Vec<_>>());
            match resolved {
                Ok(found) => {
                    failing.remove(peer);
                    addrs.extend(found.into_iter().map(|a| (a, None)));
                }
                Err(e) => {
                    if failing.insert(peer.clone()) {
                        tracing::warn!(peer = %peer, error = %e, "cannot resolve static peer; will retry");
                    }
                }
            }
        }
        let event = Event::Mentioned {
            addrs,
            source: Source::Static,
        };
        if tx.send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(if failing.is_empty() {
            RESOLVE_EVERY
        } else {
            Duration::from_secs(2)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_is_advertised_as_is() {
        let a = SocketAddr::from(([10, 0, 0, 5], 8080));
        assert_eq!(advertised_addrs(a), (a, vec![a]));
    }

    #[test]
    fn every_interface_means_the_interfaces_addresses() {
        let (primary, all) = advertised_addrs(SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(primary.port(), 8080);
        assert!(!primary.ip().is_unspecified());
        assert!(all.contains(&primary));
        assert!(
            all.iter().all(|a| a.is_ipv4() && !is_link_local(&a.ip())),
            "{all:?}"
        );
    }
}
