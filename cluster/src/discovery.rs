//! mDNS/DNS-SD: announce `_herd._tcp.local.` and browse for it.
//!
//! An announcement only says "a herd node of cluster X is at this address";
//! found addresses become candidates, and nothing about them is believed until
//! they answer a MACed heartbeat.

use crate::config::ClusterError;
use crate::membership::{Event, Source};
use crate::node::{NodeId, NodeInfo};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;

pub const SERVICE_TYPE: &str = "_herd._tcp.local.";

pub(crate) struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Discovery {
    pub(crate) fn start(
        me: &NodeInfo,
        cluster: &str,
        tx: mpsc::Sender<Event>,
    ) -> Result<Self, ClusterError> {
        let err = |e: mdns_sd::Error| ClusterError::Discovery(e.to_string());
        let daemon = ServiceDaemon::new().map_err(err)?;
        let ips: Vec<IpAddr> = me
            .addrs
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_loopback())
            .collect();
        let instance = format!("{}-{}", me.name, me.id.short());
        let host = format!("herd-{}.local.", me.id.short());
        let properties = [
            ("cluster", cluster.to_string()),
            ("id", me.id.0.clone()),
            ("name", me.name.clone()),
            ("version", me.version.clone()),
        ];
        let service = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            &ips[..],
            me.addr.port(),
            &properties[..],
        )
        .map_err(err)?;
        let fullname = service.get_fullname().to_string();
        daemon.register(service).map_err(err)?;
        let found = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let (cluster, my_id) = (cluster.to_string(), me.id.clone());
        // mdns-sd runs its own thread and hands events over a blocking channel.
        std::thread::Builder::new()
            .name("herd-mdns".into())
            .spawn(move || {
                while let Ok(event) = found.recv() {
                    let ServiceEvent::ServiceResolved(info) = event else {
                        continue;
                    };
                    if info.get_property_val_str("cluster") != Some(cluster.as_str()) {
                        continue;
                    }
                    let id = info
                        .get_property_val_str("id")
                        .map(|s| NodeId(s.to_string()));
                    if id.as_ref() == Some(&my_id) {
                        continue;
                    }
                    let addrs: Vec<(SocketAddr, Option<NodeId>)> = info
                        .get_addresses()
                        .iter()
                        .map(|ip| (SocketAddr::new(*ip, info.get_port()), id.clone()))
                        .collect();
                    tracing::debug!(
                        instance = info.get_fullname(),
                        ?addrs,
                        "mDNS: found a herd node"
                    );
                    let event = Event::Mentioned {
                        addrs,
                        source: Source::Discovery,
                    };
                    if tx.blocking_send(event).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ClusterError::Discovery(e.to_string()))?;
        Ok(Self { daemon, fullname })
    }

    /// Says goodbye on the LAN (so browsers drop us now) and stops the daemon.
    pub(crate) fn stop(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}
