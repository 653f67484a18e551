//! `ip_filter` {allow, deny}: by client IP -> 403.
//!
//! Deny wins; a non-empty allow list admits only what it lists. IPv4 rules also match
//! IPv4-mapped IPv6 clients (`::ffff:a.b.c.d`, what a dual-stack listener reports), and a rule
//! written as `::ffff:a.b.c.d/len` (len >= 96) is an IPv4 rule. Masks are computed once.
//! A client without an IP (Unix-socket listener) matches no rule: refused when allow is set.

use std::net::IpAddr;

use super::{Plugin, Reply, RequestInfo};
use crate::trust::Nets;

pub(crate) const KIND: &str = "ip_filter";

/// Allow and deny lists of networks.
#[derive(Debug)]
pub struct IpFilter {
    allow: Nets,
    deny: Nets,
}

impl IpFilter {
    /// `allow` and `deny` are CIDRs (`addr/len`, or a bare address).
    pub fn new(allow: &[String], deny: &[String]) -> Result<IpFilter, String> {
        Ok(IpFilter {
            allow: Nets::parse(allow).map_err(|e| format!("allow: {e}"))?,
            deny: Nets::parse(deny).map_err(|e| format!("deny: {e}"))?,
        })
    }

    /// Whether a client may pass.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) => {
                !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
            }
            None => self.allow.is_empty(),
        }
    }
}

impl Plugin for IpFilter {
    fn name(&self) -> &'static str {
        KIND
    }

    fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        if self.admits(req.client_ip) {
            None
        } else {
            Some(Reply::text(403, "forbidden: client address not allowed"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::{get, info};

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IpFilter::new(&v(allow), &v(deny)).unwrap()
    }

    fn ok(f: &IpFilter, ip: &str) -> bool {
        f.admits(Some(ip.parse().unwrap()))
    }

    #[test]
    fn v4_allow_and_deny() {
        let f = filter(&["10.0.0.0/8", "192.0.2.7/32"], &["10.9.0.0/16"]);
        assert!(ok(&f, "10.1.2.3"));
        assert!(ok(&f, "192.0.2.7"));
        assert!(!ok(&f, "192.0.2.8"), "/32 is one address");
        assert!(!ok(&f, "10.9.1.1"), "deny wins");
        assert!(!ok(&f, "11.0.0.1"), "not in allow");
        assert!(!ok(&f, "2001:db8::1"), "no v6 rule allows it");
    }

    #[test]
    fn deny_only_admits_the_rest() {
        let f = filter(&[], &["192.0.2.0/24", "2001:db8::/32"]);
        assert!(!ok(&f, "192.0.2.200"));
        assert!(ok(&f, "192.0.3.1"));
        assert!(!ok(&f, "2001:db8:ffff::1"));
        assert!(ok(&f, "2001:db9::1"));
        assert!(f.admits(None));
    }

    #[test]
    fn v6_prefixes_and_128() {
        let f = filter(&["2001:db8:a::/48", "fe80::1/128"], &[]);
        assert!(ok(&f, "2001:db8:a:ffff::1"));
        assert!(!ok(&f, "2001:db8:b::1"));
        assert!(ok(&f, "fe80::1"));
        assert!(!ok(&f, "fe80::2"));
        assert!(!ok(&f, "10.0.0.1"));
        assert!(!f.admits(None), "no address, allow list set: refused");
    }

    #[test]
    fn host_bits_in_a_rule_are_ignored() {
        let f = filter(&["10.1.2.3/8", "2001:db8::1/32"], &[]);
        assert!(ok(&f, "10.200.0.1"));
        assert!(ok(&f, "2001:db8:1::1"));
    }

    #[test]
    fn slash_zero_matches_everything_of_its_family() {
        let f = filter(&[], &["0.0.0.0/0"]);
        assert!(!ok(&f, "1.2.3.4"));
        assert!(!ok(&f, "::ffff:1.2.3.4"));
        assert!(ok(&f, "2001:db8::1"));
        let f = filter(&[], &["::/0"]);
        assert!(!ok(&f, "2001:db8::1"));
        assert!(ok(&f, "1.2.3.4"));
        let f = filter(&["0.0.0.0/0", "::/0"], &[]);
        assert!(ok(&f, "1.2.3.4") && ok(&f, "::1"));
    }

    #[test]
    fn mapped_v6_clients_match_v4_rules() {
        let f = filter(&["192.0.2.0/24"], &["192.0.2.66"]);
        assert!(ok(&f, "::ffff:192.0.2.1"));
        assert!(!ok(&f, "::ffff:192.0.2.66"));
        assert!(!ok(&f, "::ffff:198.51.100.1"));
        // A rule written in mapped form is an IPv4 rule.
        let f = filter(&["::ffff:198.51.100.0/120"], &[]);
        assert!(ok(&f, "198.51.100.9"));
        assert!(ok(&f, "::ffff:198.51.100.9"));
        assert!(!ok(&f, "198.51.101.9"));
    }

    #[test]
    fn replies_403() {
        let f = filter(&["10.0.0.0/8"], &[]);
        let req = get("/");
        assert!(f.on_request(&info(&req, "10.0.0.1")).is_none());
        assert_eq!(f.on_request(&info(&req, "8.8.8.8")).unwrap().status, 403);
    }

    #[test]
    fn bad_cidr_is_an_error() {
        let e = IpFilter::new(&[], &["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.starts_with("deny: "), "{e}");
    }
}
