//! Who the client is: `[settings] trusted_proxies` and the right-most-untrusted rule over
//! `X-Forwarded-For` (SPEC §12), and the CIDR sets ([`Nets`]) it shares with `ip_filter`.
//!
//! The client IP is computed once per request (`Ctx::client_ip`) and feeds `ip_filter`,
//! `rate_limit`, the `basic_auth` and API lockouts and the access log. Only a peer inside
//! `trusted_proxies` may speak for someone else; from any other peer the TCP address is the
//! client, and `forwarded.rs` replaces the three `X-Forwarded-*` headers.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderName;
use pingora_http::RequestHeader;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Networks of one list, split by family: `(network, mask)` with host bits cleared. IPv4 rules
/// also match IPv4-mapped IPv6 addresses, and a rule written `::ffff:a.b.c.d/len` (len >= 96)
/// is an IPv4 rule.
#[derive(Debug, Default)]
pub(crate) struct Nets {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Nets {
    /// CIDRs (`addr/len`, or a bare address = `/32` or `/128`).
    pub(crate) fn parse(cidrs: &[String]) -> Result<Nets, String> {
        let mut nets = Nets::default();
        for cidr in cidrs {
            let (ip, len) = tenement_conf::parse_cidr(cidr)?;
            match ip {
                IpAddr::V4(v4) => nets.push_v4(u32::from(v4), len),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) if len >= 96 => nets.push_v4(u32::from(v4), len - 96),
                    _ => {
                        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                        nets.v6.push((u128::from(v6) & mask, mask));
                    }
                },
            }
        }
        Ok(nets)
    }

    fn push_v4(&mut self, addr: u32, len: u8) {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        self.v4.push((addr & mask, mask));
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        match (v4, ip) {
            (Some(v4), _) => {
                let a = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            (None, IpAddr::V6(v6)) => {
                let a = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
            (None, IpAddr::V4(_)) => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// `[settings] trusted_proxies`: the peers that may supply `X-Forwarded-For/Proto/Host`.
#[derive(Debug, Default)]
pub struct TrustedProxies {
    nets: Nets,
}

/// Who sent a request: the client as the trust rule resolves it, and the TCP peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Client {
    /// The client IP (the peer's, or taken from `X-Forwarded-For` for a trusted peer). None on
    /// a Unix-socket listener.
    pub(crate) ip: Option<IpAddr>,
    /// The TCP peer, IPv4-mapped IPv6 unmapped.
    pub(crate) peer: Option<IpAddr>,
    /// The peer is in `trusted_proxies`: its `X-Forwarded-*` headers are kept.
    pub(crate) trusted: bool,
}

impl TrustedProxies {
    /// Validated CIDRs (see `tenement_conf::parse_cidr`); an empty list trusts nobody.
    pub fn new(cidrs: &[String]) -> Result<TrustedProxies, String> {
        Ok(TrustedProxies {
            nets: Nets::parse(cidrs)?,
        })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        !self.nets.is_empty() && self.nets.contains(ip)
    }

    /// The client of a request from `peer`. For a trusted peer: the right-most address of
    /// `X-Forwarded-For` that is not itself trusted (all trusted: the left-most; an entry that
    /// is not an address stops the walk at the last good one). No allocation.
    #[inline]
    pub(crate) fn resolve(&self, peer: Option<IpAddr>, req: &RequestHeader) -> Client {
        let peer = peer.map(|ip| ip.to_canonical());
        let untrusted = Client {
            ip: peer,
            peer,
            trusted: false,
        };
        let Some(p) = peer else {
            return untrusted;
        };
        if !self.contains(p) {
            return untrusted;
        }
        let mut client = p;
        'lines: for line in req.headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(line) = line.to_str() else {
                break;
            };
            for entry in line.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_entry(entry) else {
                    break 'lines;
                };
                client = ip.to_canonical();
                if !self.nets.contains(client) {
                    break 'lines;
                }
            }
        }
        Client {
            ip: Some(client),
            peer,
            trusted: true,
        }
    }
}

/// One `X-Forwarded-For` entry: an address, `[v6]`, or either with a port.
fn parse_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        let v: Vec<String> = cidrs.iter().map(|s| s.to_string()).collect();
        TrustedProxies::new(&v).unwrap()
    }

    fn resolve(t: &TrustedProxies, peer: &str, xff: &[&str]) -> Client {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for l in xff {
            req.append_header("x-forwarded-for", *l).unwrap();
        }
        t.resolve(Some(peer.parse().unwrap()), &req)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn nobody_is_trusted_by_default() {
        let t = TrustedProxies::default();
        let c = resolve(&t, "10.0.0.1", &["1.2.3.4"]);
        assert_eq!(c.ip, ip("10.0.0.1"));
        assert!(!c.trusted);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = resolve(&t, "192.0.2.9", &["10.1.1.1"]);
        assert_eq!(
            (c.ip, c.peer, c.trusted),
            (ip("192.0.2.9"), ip("192.0.2.9"), false)
        );
    }

    #[test]
    fn a_trusted_peer_gives_the_right_most_untrusted_address() {
        let t = trusted(&["10.0.0.0/8", "::1"]);
        let c = resolve(&t, "10.0.0.1", &["6.6.6.6, 7.7.7.7", "10.2.2.2"]);
        assert_eq!(c.ip, ip("7.7.7.7"), "the client cannot pick 6.6.6.6");
        assert!(c.trusted);
        let c = resolve(&t, "::1", &["[2001:db8::5]:443 , 10.9.9.9"]);
        assert_eq!(c.ip, ip("2001:db8::5"));
        let c = resolve(&t, "10.0.0.1", &["1.2.3.4:5678"]);
        assert_eq!(c.ip, ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_gives_the_left_most_and_none_gives_the_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(&t, "10.0.0.1", &["10.3.3.3, 10.2.2.2"]).ip,
            ip("10.3.3.3")
        );
        assert_eq!(resolve(&t, "10.0.0.1", &[]).ip, ip("10.0.0.1"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_address() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(&t, "10.0.0.1", &["1.1.1.1, unknown, 10.2.2.2"]).ip,
            ip("10.2.2.2")
        );
        assert_eq!(resolve(&t, "10.0.0.1", &["nonsense"]).ip, ip("10.0.0.1"));
    }

    #[test]
    fn v4_mapped_peers_and_entries_are_unmapped() {
        let t = trusted(&["127.0.0.1"]);
        let c = resolve(&t, "::ffff:127.0.0.1", &["::ffff:192.0.2.1"]);
        assert_eq!(
            (c.ip, c.peer, c.trusted),
            (ip("192.0.2.1"), ip("127.0.0.1"), true)
        );
        let c = resolve(&TrustedProxies::default(), "::ffff:192.0.2.1", &[]);
        assert_eq!(c.ip, ip("192.0.2.1"));
    }

    #[test]
    fn no_peer_address_is_never_trusted() {
        let t = trusted(&["0.0.0.0/0", "::/0"]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "1.2.3.4").unwrap();
        assert_eq!(t.resolve(None, &req), Client::default());
    }
}
