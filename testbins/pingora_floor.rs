//! `ten-bench-pingora`: the framework's floor for `make bench`.
//!
//! A minimal vanilla Pingora reverse proxy (same Pingora version and features as `ten`): every
//! request goes to one fixed upstream over Pingora's pooled keep-alive connections. No routing,
//! no headers added, no metrics: whatever `ten` costs above this is ours.
//!
//! ```text
//! ten-bench-pingora --listen 127.0.0.1:8090 --upstream 127.0.0.1:8081 [--threads 1]
//! ten-bench-pingora --listen 127.0.0.1:8090 --upstream unix:/run/up.sock
//! ten-bench-pingora --listen 127.0.0.1:8090 --upstream 127.0.0.1:8081 --l4-read-buffer 8192
//! ```
//!
//! `--l4-read-buffer` sets the per-connection read buffer of the listener (Pingora's default:
//! 64 KiB), to measure what it costs per idle keep-alive connection.
//!
//! SIGINT stops it at once (Pingora's fast shutdown); SIGTERM waits for a grace period.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

/// Forwards everything to one upstream; the peer is built once and cloned per request.
struct Floor {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

struct Args {
    listen: SocketAddr,
    upstream: String,
    threads: usize,
    l4_read_buffer: Option<usize>,
}

const USAGE: &str = "usage: ten-bench-pingora --listen IP:PORT --upstream IP:PORT|unix:/PATH \
                     [--threads N] [--l4-read-buffer BYTES]";

fn parse_args() -> std::result::Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 1;
    let mut l4_read_buffer = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                let addr = v
                    .parse()
                    .map_err(|e| format!("--listen: expected IP:PORT, got {v:?}: {e}"))?;
                listen = Some(addr);
            }
            "--upstream" => upstream = Some(value()?),
            "--threads" => {
                let v = value()?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--threads: expected a number > 0, got {v:?}"))?;
            }
            "--l4-read-buffer" => {
                let v = value()?;
                let n = v.parse().map_err(|_| {
                    format!("--l4-read-buffer: expected a number of bytes, got {v:?}")
                })?;
                l4_read_buffer = Some(n);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    match (listen, upstream) {
        (Some(listen), Some(upstream)) => Ok(Args {
            listen,
            upstream,
            threads,
            l4_read_buffer,
        }),
        _ => Err(USAGE.into()),
    }
}

fn peer(upstream: &str) -> std::result::Result<HttpPeer, String> {
    if let Some(path) = upstream.strip_prefix("unix:") {
        return HttpPeer::new_uds(path, false, String::new())
            .map_err(|e| format!("--upstream: bad unix socket path {path:?}: {e}"));
    }
    let addr: std::net::SocketAddr = upstream.parse().map_err(|e| {
        format!("--upstream: expected IP:PORT or unix:/PATH, got {upstream:?}: {e}")
    })?;
    Ok(HttpPeer::new(addr, false, String::new()))
}

fn main() -> ExitCode {
    let (args, peer) = match parse_args().and_then(|a| peer(&a.upstream).map(|p| (a, p))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ten-bench-pingora: {e}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service =
        pingora_proxy::http_proxy_service(&Arc::clone(&server.configuration), Floor { peer });
    match args.l4_read_buffer {
        Some(n) => service.add_listener(
            ListenerConfig::tcp(args.listen.to_string())
                .l4_buffer(L4BufferSettings::default().read(n)),
        ),
        None => service.add_tcp(&args.listen.to_string()),
    }
    server.add_service(service);
    println!(
        "ten-bench-pingora: listening on http://{} -> {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
