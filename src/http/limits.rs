//! Connection admission (issue 9, item 3): a cap on all connections and one
//! per client address, checked before a connection's HTTP request is read,
//! so one host with many idle sockets cannot take every descriptor.
//!
//! Counted per address: IPv4 addresses as they are, IPv6 by /64 (one host's
//! usual allocation: counting single IPv6 addresses would let one host
//! open as many connections as it has addresses), IPv4-mapped IPv6 as IPv4.
//! The counts sit behind one mutex shared by all shards; it is taken once
//! when a connection arrives and once when it ends, never per message.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The admission limits, from `--max-connections` and `--max-connections-per-ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimitSettings {
    /// All open connections (HTTP, WebSocket, still in TLS) together.
    pub max_total: usize,
    /// Open connections from one client address (see the module doc).
    pub max_per_ip: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `--max-connections` connections are open.
    #[error("server connection limit reached")]
    Total,
    /// `--max-connections-per-ip` connections are open from this client.
    #[error("per-client connection limit reached")]
    PerIp,
}

/// Open connections, in total and per client address.
#[derive(Debug)]
pub struct ConnLimits {
    settings: ConnLimitSettings,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives its places back.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

/// The address a client is counted under.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnLimits {
    pub fn new(settings: ConnLimitSettings) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            settings,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let key = client_key(ip);
        // A panic while the lock is held cannot leave the counts half-updated
        // (each update is one statement), so a poisoned lock is still usable.
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.settings.max_total {
            return Err(Refused::Total);
        }
        let n = c.per_ip.entry(key).or_insert(0);
        if *n >= self.settings.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            key,
        })
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        ConnLimits::new(ConnLimitSettings {
            max_total,
            max_per_ip,
        })
    }

    #[test]
    fn per_ip_and_total_caps() {
        let l = limits(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp);
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.admit(a).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn places_come_back_and_empty_entries_go() {
        let l = limits(10, 1);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            let g = l.admit(a).unwrap();
            assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp);
            drop(g);
        }
        assert_eq!(l.open(), 0);
        assert!(l.counts.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let l = limits(10, 1);
        let _g = l.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .unwrap_err(),
            Refused::PerIp
        );
        let _other_net = l.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _v4 = l.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("::ffff:192.0.2.7".parse().unwrap()).unwrap_err(),
            Refused::PerIp
        );
    }
}
