//! Whose listener answers on 127.0.0.1:port (review S1). ten picks a free port and closes it
//! before the app binds it, so another process can take it first; the readiness probe would
//! then pass against that process. A TCP instance is ready only once the listening socket that
//! gets connections to 127.0.0.1:port belongs to its process group: the socket's inode, from
//! /proc/net/tcp and tcp6, must be among the open files (/proc/PID/fd) of a process whose
//! process group is the instance's (its children included).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Who holds the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The instance's process group.
    Ours,
    /// Another process (not in the group).
    Other,
    /// Nothing listens there (right now).
    NoListener,
    /// It cannot be told (no /proc): the check is skipped.
    Unknown(String),
}

/// TCP state LISTEN in /proc/net/tcp.
const LISTEN: u8 = 0x0A;

/// One socket of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ip: IpAddr,
    port: u16,
    state: u8,
    inode: u64,
}

/// Parse the kernel's hex address: IPv4 as one native-endian u32, IPv6 as four.
fn parse_addr(hex: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The sockets of a /proc/net/tcp(6) text (the header line and bad lines skipped).
fn parse_table(text: &str) -> Vec<Entry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (ip, port) = parse_addr(f.get(1)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some(Entry {
                ip,
                port,
                state,
                inode,
            })
        })
        .collect()
}

/// The inodes of the listeners that get connections to 127.0.0.1:port: one bound to 127.0.0.1
/// itself wins over the wildcards (as in the kernel's lookup), else the wildcards.
fn candidates(entries: &[Entry], port: u16) -> Vec<u64> {
    let loopback_v6 = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    let listening = || {
        entries
            .iter()
            .filter(move |e| e.state == LISTEN && e.port == port)
    };
    let exact: Vec<u64> = listening()
        .filter(|e| e.ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || e.ip == IpAddr::V6(loopback_v6))
        .map(|e| e.inode)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    listening()
        .filter(|e| e.ip.is_unspecified())
        .map(|e| e.inode)
        .collect()
}

/// The process group of a /proc/PID/stat text (the field after state and ppid).
fn pgrp_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Socket inodes among `pid`'s open files.
fn sockets_of(pid: u32, into: &mut HashSet<u64>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for fd in dir.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse().ok());
            if let Some(i) = inode {
                into.insert(i);
            }
        }
    }
}

/// Does every listener that gets connections to 127.0.0.1:`port` belong to process group
/// `pgid` (the instance's leader's pid)? Blocking (reads /proc).
pub fn check(port: u16, pgid: u32) -> Owner {
    let mut entries = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            entries.extend(parse_table(&text));
        }
    }
    if !read_any {
        return Owner::Unknown("/proc/net/tcp is not readable".into());
    }
    let wanted = candidates(&entries, port);
    if wanted.is_empty() {
        return Owner::NoListener;
    }
    // The leader first (the usual case: the app itself listens), then the rest of its group.
    let mut ours = HashSet::new();
    sockets_of(pgid, &mut ours);
    if wanted.iter().all(|i| ours.contains(i)) {
        return Owner::Ours;
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == pgid {
                continue;
            }
            let in_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| pgrp_of(&s))
                == Some(pgid);
            if in_group {
                sockets_of(pid, &mut ours);
            }
        }
    }
    if wanted.iter().all(|i| ours.contains(i)) {
        Owner::Ours
    } else {
        Owner::Other
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   garbage line
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_the_kernel_tables() {
        let mut e = parse_table(TCP);
        e.extend(parse_table(TCP6));
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((e[0].port, e[0].state, e[0].inode), (8080, LISTEN, 1111));
        assert!(e[1].ip.is_unspecified());
        assert_eq!(e[2].state, 1, "an established connection is not a listener");
        assert_eq!(e[4].ip, IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()));
        // The exact loopback listener wins; the established connection on 8080 is not one.
        assert_eq!(candidates(&e, 8080), vec![1111]);
        assert_eq!(candidates(&e, 8081), vec![2222]);
        assert_eq!(candidates(&e, 8082), vec![4444]);
        assert_eq!(candidates(&e, 8083), vec![5555]);
        assert!(candidates(&e, 9).is_empty());
    }

    #[test]
    fn process_group_from_stat() {
        assert_eq!(pgrp_of("42 (my app) S 1 42 42 0 -1"), Some(42));
        assert_eq!(pgrp_of("43 (a) (b)) R 42 42 7 0"), Some(42));
        assert_eq!(pgrp_of("garbage"), None);
    }

    /// In the child: clear close-on-exec on `fd`, so the exec'd program holds it (a dup2 onto
    /// a fixed number would be a no-op, close-on-exec kept, when `fd` already is that number).
    fn keep_across_exec(fd: i32) -> std::io::Result<()> {
        // SAFETY: fcntl on a descriptor of this process.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `sleep 30` in its own process group, holding `fd` across exec (or nothing).
    fn child_holding(fd: Option<i32>) -> std::process::Child {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30").process_group(0);
        if let Some(fd) = fd {
            // SAFETY: fcntl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    keep_across_exec(fd)?;
                    Ok(())
                });
            }
        }
        cmd.spawn().unwrap()
    }

    #[test]
    fn a_listener_of_the_group_is_ours_anyone_elses_is_not() {
        // The test (not the child) holds this one: the port is taken by "another app".
        let theirs = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs_port = theirs.local_addr().unwrap().port();
        // This one is handed to the child, and the test lets go of its copy.
        let given = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let given_port = given.local_addr().unwrap().port();
        let mut child = child_holding(Some(given.as_raw_fd()));
        drop(given);
        let pid = child.id();
        let got = (check(theirs_port, pid), check(given_port, pid));
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let none = check(free, pid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, (Owner::Other, Owner::Ours));
        assert_eq!(none, Owner::NoListener);
    }

    #[test]
    fn another_member_of_the_group_counts_as_the_group() {
        let given = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = given.local_addr().unwrap().port();
        // The leader has no socket; a second process in its group (like a worker the app
        // forked) holds the listener.
        let mut leader = child_holding(None);
        let pid = leader.id();
        let mut member = std::process::Command::new("sleep");
        member.arg("30").process_group(i32::try_from(pid).unwrap());
        let fd = given.as_raw_fd();
        // SAFETY: fcntl only, between fork and exec.
        unsafe {
            member.pre_exec(move || {
                keep_across_exec(fd)?;
                Ok(())
            });
        }
        let mut member = member.spawn().unwrap();
        drop(given);
        let got = check(port, pid);
        let alone = check(port, member.id() + 1_000_000);
        for c in [&mut leader, &mut member] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(got, Owner::Ours);
        assert_eq!(alone, Owner::Other, "a group without it does not own it");
    }
}
