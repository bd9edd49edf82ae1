//! mDNS: announce this host while sharing is on, and keep a live list of
//! the hosts nearby. Only the interfaces chosen are used (tests and demos
//! pick `lo` or veths of their own namespaces). What a peer announces is a
//! hint: the fingerprint in its TXT record is shown, never trusted; trust
//! comes from the TLS handshake and the code people compare.
//!
//! Announced: protocol version, display name, host name, port and
//! fingerprint, nothing about VMs or people (who shares what is seen only
//! once let in).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{IfKind, IfPredicate, ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util_shim::CancelOnDrop;

use crate::identity::Fingerprint;

/// The service type: at most 15 characters before `._tcp` (RFC 6763).
pub const SERVICE_TYPE: &str = "_ensemble._tcp.local.";

/// How often the hosts listed are probed (a TCP connect to their port); one
/// that does not answer is re-queried at once (`verify`), so a host that
/// crashed leaves the list within seconds instead of the records' 120 s TTL.
const PROBE_EVERY: Duration = Duration::from_millis(1000);
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Interface name prefixes left out by default: containers, VM bridges and
/// tunnels, where announcing would reach nobody or the wrong machine (a
/// peer that dials a docker bridge address reaches itself).
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "virbr",
    "veth",
    "vmnet",
    "vboxnet",
    "cni",
    "flannel",
    "podman",
    "tun",
    "tap",
    "utun",
    "wg",
    "zt",
    "tailscale",
    "lxc",
    "lxd",
];

/// Which interfaces mDNS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface that is up, except loopback and virtual ones.
    Default,
    /// Exactly these, by name (`lo` included if named).
    Named(Vec<String>),
}

impl Interfaces {
    /// Parses a comma-separated list; empty or `default` means
    /// [`Interfaces::Default`].
    pub fn parse(list: &str) -> Interfaces {
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() || names == ["default"] {
            Interfaces::Default
        } else {
            Interfaces::Named(names)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// What this host announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The owner's display name.
    pub display_name: String,
    /// This machine's host name (without `.local`).
    pub host_name: String,
    pub port: u16,
    pub fingerprint: Fingerprint,
    pub protocol: u32,
}

/// A host seen on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NearbyHost {
    /// The mDNS instance name; stable while the host runs.
    pub instance: String,
    pub display_name: String,
    pub host_name: String,
    /// Addresses to try, IPv4 first.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// Announced fingerprint: a hint, checked by the handshake.
    pub fingerprint: String,
    pub protocol: u32,
}

impl NearbyHost {
    /// The first address to dial.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addresses
            .first()
            .map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// One mDNS daemon, restricted to the chosen interfaces.
pub struct Discovery {
    daemon: ServiceDaemon,
}

impl Discovery {
    pub fn new(interfaces: &Interfaces) -> Result<Discovery, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        // Commands run in order on the daemon's thread: nothing is sent
        // before this restriction is in force.
        daemon.disable_interface(IfKind::All)?;
        match interfaces {
            Interfaces::Default => {
                daemon.enable_interface(IfKind::Predicate(IfPredicate::new(|intf| {
                    !intf.is_loopback()
                        && !VIRTUAL_PREFIXES.iter().any(|p| intf.name.starts_with(p))
                })))?;
            }
            Interfaces::Named(names) => {
                let kinds: Vec<IfKind> = names.iter().map(|n| IfKind::Name(n.clone())).collect();
                daemon.enable_interface(kinds)?;
            }
        }
        Ok(Discovery { daemon })
    }

    /// Announces this host until the returned handle is dropped or
    /// [`Announced::withdraw`]n (which sends goodbye packets).
    pub fn announce(&self, a: &Announcement) -> Result<Announced, DiscoveryError> {
        let instance = format!("{} {}", a.host_name, &a.fingerprint.hex()[..8]);
        let host = format!("{}.local.", sanitize_host(&a.host_name));
        let fp = a.fingerprint.hex();
        let version = a.protocol.to_string();
        let props = [
            ("v", version.as_str()),
            ("name", a.display_name.as_str()),
            ("host", a.host_name.as_str()),
            ("fp", fp.as_str()),
        ];
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", a.port, &props[..])?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        self.daemon.register(info)?;
        Ok(Announced {
            daemon: self.daemon.clone(),
            fullname: Some(fullname),
        })
    }

    /// Starts browsing: the list is kept current until the returned
    /// [`Nearby`] is dropped. Hosts announcing `own` are left out.
    pub fn browse(&self, own: Option<Fingerprint>) -> Result<Nearby, DiscoveryError> {
        let events = self.daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = watch::channel(Vec::new());
        let daemon = self.daemon.clone();
        let task = tokio::spawn(follow(daemon, events, tx, own.map(|f| f.hex())));
        Ok(Nearby {
            list: rx,
            _task: CancelOnDrop(task),
        })
    }

    /// Stops the daemon (after goodbyes for whatever it still announces).
    pub fn shutdown(self) {
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// An announcement in force.
pub struct Announced {
    daemon: ServiceDaemon,
    fullname: Option<String>,
}

impl Announced {
    /// Sends goodbye packets and waits (at most a second) until they left.
    pub fn withdraw(mut self) {
        self.unregister(true);
    }

    fn unregister(&mut self, wait: bool) {
        if let Some(name) = self.fullname.take() {
            if let Ok(done) = self.daemon.unregister(&name) {
                if wait {
                    let _ = done.recv_timeout(Duration::from_secs(1));
                }
            }
        }
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.unregister(false);
    }
}

/// The live list of nearby hosts.
pub struct Nearby {
    list: watch::Receiver<Vec<NearbyHost>>,
    _task: CancelOnDrop,
}

impl Nearby {
    pub fn list(&self) -> Vec<NearbyHost> {
        self.list.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<Vec<NearbyHost>> {
        self.list.clone()
    }
}

mod tokio_util_shim {
    /// Aborts a task when dropped.
    pub struct CancelOnDrop(pub tokio::task::JoinHandle<()>);

    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
}

async fn follow(
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    tx: watch::Sender<Vec<NearbyHost>>,
    own: Option<String>,
) {
    let mut hosts: HashMap<String, NearbyHost> = HashMap::new();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |hosts: &HashMap<String, NearbyHost>| {
        let mut list: Vec<NearbyHost> = hosts.values().cloned().collect();
        list.sort_by(|a, b| {
            a.display_name
                .cmp(&b.display_name)
                .then(a.instance.cmp(&b.instance))
        });
        tx.send_if_modified(|old| {
            if *old == list {
                false
            } else {
                *old = list;
                true
            }
        });
    };
    let probes = Arc::new(tokio::sync::Semaphore::new(8));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(64);
    loop {
        tokio::select! {
            event = events.recv_async() => {
                let Ok(event) = event else { return };
                match event {
                    ServiceEvent::ServiceResolved(service) => {
                        let Some(host) = nearby_host(&service) else { continue };
                        if own.as_deref() == Some(host.fingerprint.as_str()) {
                            continue;
                        }
                        // IPv4 and IPv6 resolve separately: merge addresses.
                        let entry = hosts.entry(host.instance.clone()).or_insert_with(|| host.clone());
                        for ip in host.addresses {
                            if !entry.addresses.contains(&ip) {
                                entry.addresses.push(ip);
                            }
                        }
                        entry.addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
                        entry.display_name = host.display_name;
                        entry.port = host.port;
                        entry.fingerprint = host.fingerprint;
                        publish(&hosts);
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) if hosts.remove(&fullname).is_some() => {
                        publish(&hosts);
                    }
                    _ => {}
                }
            }
            _ = probe.tick() => {
                for host in hosts.values() {
                    let (Some(addr), Ok(permit)) = (host.socket_addr(), probes.clone().try_acquire_owned()) else {
                        continue;
                    };
                    let (name, failed) = (host.instance.clone(), failed_tx.clone());
                    tokio::spawn(async move {
                        let ok = matches!(
                            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                            Ok(Ok(_))
                        );
                        drop(permit);
                        if !ok {
                            let _ = failed.send(name).await;
                        }
                    });
                }
            }
            Some(name) = failed_rx.recv() => {
                // The records may still be cached for minutes: ask the
                // network again, which removes them if nobody answers.
                if hosts.contains_key(&name) {
                    let _ = daemon.verify(name, VERIFY_TIMEOUT);
                }
            }
        }
    }
}

fn nearby_host(service: &mdns_sd::ResolvedService) -> Option<NearbyHost> {
    let props = &service.txt_properties;
    let fingerprint = props.get_property_val_str("fp")?.to_owned();
    fingerprint.parse::<Fingerprint>().ok()?;
    let mut addresses: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(|a| a.to_ip_addr())
        .collect();
    addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    let host_name = props
        .get_property_val_str("host")
        .map(str::to_owned)
        .unwrap_or_else(|| service.host.trim_end_matches(".local.").to_owned());
    Some(NearbyHost {
        instance: service.fullname.clone(),
        display_name: props
            .get_property_val_str("name")
            .unwrap_or("Ensemble")
            .chars()
            .take(64)
            .collect(),
        host_name: host_name.chars().take(64).collect(),
        addresses,
        port: service.port,
        fingerprint,
        protocol: props
            .get_property_val_str("v")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// A DNS label: letters, digits and dashes.
fn sanitize_host(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if label.trim_matches('-').is_empty() {
        "ensemble".to_owned()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_lists_parse() {
        assert_eq!(Interfaces::parse(""), Interfaces::Default);
        assert_eq!(Interfaces::parse("default"), Interfaces::Default);
        assert_eq!(
            Interfaces::parse("lo, ensva0"),
            Interfaces::Named(vec!["lo".into(), "ensva0".into()])
        );
    }

    #[test]
    fn host_names_become_dns_labels() {
        assert_eq!(sanitize_host("alice's laptop"), "alice-s-laptop");
        assert_eq!(sanitize_host("..."), "ensemble");
    }

    /// Announce on `lo` only, browse on `lo` only: the host shows up with
    /// its fingerprint, our own announcement is hidden, and a withdrawal
    /// removes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_announced_on_loopback_is_found_and_leaves() {
        let lo = Interfaces::Named(vec!["lo".into()]);
        let host = Discovery::new(&lo).unwrap();
        let fp = Fingerprint::of(b"host");
        // A port that answers, so the probe keeps the entry.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let announced = host
            .announce(&Announcement {
                display_name: "Alice".into(),
                host_name: format!("unit-{port}"),
                port,
                fingerprint: fp,
                protocol: 1,
            })
            .unwrap();
        let browser = Discovery::new(&lo).unwrap();
        let nearby = browser.browse(Some(Fingerprint::of(b"me"))).unwrap();
        let mut list = nearby.watch();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(h) = list.borrow().iter().find(|h| h.port == port).cloned() {
                    return h;
                }
                list.changed().await.unwrap();
            }
        })
        .await
        .expect("the host was not found");
        assert_eq!(found.display_name, "Alice");
        assert_eq!(found.fingerprint, fp.hex());
        assert!(found.addresses.iter().any(|a| a.is_loopback()));
        announced.withdraw();
        tokio::time::timeout(Duration::from_secs(10), async {
            while list.borrow().iter().any(|h| h.port == port) {
                list.changed().await.unwrap();
            }
        })
        .await
        .expect("the host was not removed after its goodbye");
        let hidden = browser.browse(Some(fp)).unwrap();
        let own = host
            .announce(&Announcement {
                display_name: "Alice".into(),
                host_name: format!("unit2-{port}"),
                port,
                fingerprint: fp,
                protocol: 1,
            })
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(hidden.list().iter().all(|h| h.port != port));
        drop(own);
        host.shutdown();
        browser.shutdown();
    }
}
