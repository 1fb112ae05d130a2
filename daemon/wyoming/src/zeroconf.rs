//! The `_wyoming._tcp.local.` announcement that lets Home Assistant discover the server: its
//! zeroconf flow takes the host and port of the record and asks `describe` (HA's
//! `components/wyoming/config_flow.py`, `async_step_zeroconf`); no TXT properties are read, as
//! the `wyoming` package's own announcer (`wyoming/zeroconf.py`) writes none.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{ServiceDaemon, ServiceInfo};

use qwenedge_config::WyomingSettings;

/// The service type Home Assistant browses for.
pub const SERVICE_TYPE: &str = "_wyoming._tcp.local.";

/// What is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The instance name (`qwenedge-<hostname>` unless configured).
    pub instance: String,
    /// The host name (`<hostname>.local.`).
    pub host: String,
    /// The port clients connect to.
    pub port: u16,
    /// The address announced; `None`: every address of the machine, kept up to date.
    pub ip: Option<IpAddr>,
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() {
        "qwenedge".into()
    } else {
        name
    }
}

/// The record to announce for a server bound to `bound`, or `None` when `wyoming.zeroconf`
/// (or its default: only when listening beyond loopback) says not to.
pub fn record(settings: &WyomingSettings, bound: &[SocketAddr], host: Option<&str>) -> Option<Record> {
    if !settings.announce() {
        return None;
    }
    let addr = bound.iter().find(|a| !a.ip().is_loopback()).or(bound.first())?;
    let host = host.map_or_else(hostname, str::to_string);
    let instance = settings.zeroconf_name.clone().unwrap_or_else(|| format!("qwenedge-{host}"));
    let ip = (!addr.ip().is_unspecified()).then(|| addr.ip());
    Some(Record { instance, host: format!("{host}.local."), port: addr.port(), ip })
}

/// A running announcement; withdrawn by [`stop`](Announcement::stop).
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Announcement {
    /// Starts announcing `record` (a thread of its own answers mDNS queries).
    pub fn start(record: &Record) -> Result<Self, String> {
        let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
        let ips: Vec<IpAddr> = record.ip.into_iter().collect();
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &record.instance,
            &record.host,
            ips.as_slice(),
            record.port,
            None::<std::collections::HashMap<String, String>>,
        )
        .map_err(|e| format!("mDNS record: {e}"))?;
        let info = if record.ip.is_none() { info.enable_addr_auto() } else { info };
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(|e| format!("mDNS: {e}"))?;
        Ok(Self { daemon, fullname })
    }

    /// The announced name (`<instance>._wyoming._tcp.local.`).
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the announcement (a goodbye packet) and stops the mDNS thread.
    pub fn stop(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenedge_config::http::ListenText;

    #[test]
    fn the_record_names_the_service_port_and_host_and_follows_the_default() {
        let open = WyomingSettings { listen: ListenText::One("0.0.0.0:10800".into()).try_into().unwrap(), ..Default::default() };
        let bound = [SocketAddr::from(([0, 0, 0, 0], 10800))];
        let r = record(&open, &bound, Some("kitchen-pi")).unwrap();
        assert_eq!(r, Record { instance: "qwenedge-kitchen-pi".into(), host: "kitchen-pi.local.".into(), port: 10800, ip: None });
        let named = WyomingSettings { zeroconf_name: Some("speaker".into()), ..open.clone() };
        let at = [SocketAddr::from(([192, 168, 1, 5], 10811))];
        let r = record(&named, &at, Some("h")).unwrap();
        assert_eq!((r.instance.as_str(), r.port, r.ip), ("speaker", 10811, Some(IpAddr::from([192, 168, 1, 5]))));
        let local = WyomingSettings::default();
        assert_eq!(record(&local, &[SocketAddr::from(([127, 0, 0, 1], 10800))], Some("h")), None, "loopback: not announced");
        let forced = WyomingSettings { zeroconf: Some(true), ..local };
        assert!(record(&forced, &[SocketAddr::from(([127, 0, 0, 1], 10800))], Some("h")).is_some());
    }
}
