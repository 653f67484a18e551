//! The proxy listeners: one Pingora service per address (its own `max_connections` filter and
//! its own shutdown), opened at start and by a reload (a new `listen` address), closed by a
//! reload (a removed one: it stops accepting, its open connections finish with
//! `Connection: close`) or at shutdown. Each listener's socket is bound by `ten` itself (port 0
//! gets a real port) and handed to Pingora in its own fd table, so closing one never leaves a
//! stale descriptor in a shared table. An upgrade (`ten upgrade`) hands each listening socket to
//! the new `ten serve` ([`Listeners::handover`]), which serves on it ([`Listeners::adopt`]);
//! the old one then only stops accepting ([`Listeners::stop_accepting`]) and drains.
//!
//! Every listener is served by each proxy worker ([`Workers`]: one single-threaded runtime per
//! thread): each worker runs its own Pingora service on its own duplicate of the socket, all
//! counting against the listener's one `max_connections`, so a connection is accepted by
//! whichever worker is free and stays on it.
//!
//! A reload changes the limits in place ([`Listeners::set_limits`]): `header_timeout` and
//! `keepalive_timeout` for the connections accepted from then on, `max_connections` of every
//! open listener at once (no listener is reopened). A changed `[settings.tls]` `http2` gets the
//! TLS listener replaced on the same socket ([`Listeners::replace_tls`]).

use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{ListenerConfig, PreTlsCallback};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::listening::Service;
use pingora_core::services::Service as _;
use pingora_proxy::HttpProxy;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use tenement_proxy::{ConnLimit, Edge, EdgeLimits, LiveLimits, TenProxy};

use crate::server::workers::Workers;

type App = Arc<HttpProxy<TenProxy>>;

/// The TLS listener's settings and pre-handshake hook, made once per worker (each worker's
/// service builds its own acceptor from them).
pub type MakeTls<'a> =
    &'a (dyn Fn() -> Result<(TlsSettings, Option<PreTlsCallback>)> + Send + Sync);

/// One worker's service of a listener, with the fd table it serves from.
type PerWorker = (Service<Edge<HttpProxy<TenProxy>>>, ListenFds);

/// The L4 buffers of every proxy listener, plain and TLS: no read buffer (Pingora's default
/// is 64 KiB per connection), Pingora's default write buffer. Plain HTTP reads go straight into
/// the HTTP session's own buffers; TLS reads into rustls's own record buffer (4 KiB, grown for
/// a larger record), so an idle keep-alive connection holds no second read buffer
/// (docs/benchmarks.md: RSS with 1000 connections).
const L4_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// One open listener.
struct Open {
    /// As written in the config (`127.0.0.1:0`): what a reload compares.
    configured: String,
    /// The bound address.
    local: String,
    /// Its socket (the first worker's descriptor; the others serve on duplicates).
    fd: RawFd,
    tls: bool,
    limit: Arc<ConnLimit>,
    stop: watch::Sender<bool>,
    /// Watches the workers' service tasks (`abort`) and reports an unexpected end.
    task: JoinHandle<()>,
    abort: Vec<tokio::task::AbortHandle>,
}

/// Every open proxy listener.
pub struct Listeners {
    app: App,
    workers: Arc<Workers>,
    limits: Arc<LiveLimits>,
    max_connections: AtomicUsize,
    open: parking_lot::Mutex<Vec<Open>>,
    /// A listener's service ended without being asked to (it panicked, or its accept loop
    /// failed): `ten serve` stops.
    failed: mpsc::UnboundedSender<String>,
}

/// Close the socket in `fds` under `local`, which no service serves (a listener that failed to
/// open): Pingora's fd table never closes what it holds.
fn close_socket(fds: &ListenFds, local: &str) {
    if let Some(fd) = fds.lock().get(local).copied() {
        // SAFETY: the table owns `fd` and nothing else uses it: no service started from it,
        // and the table is dropped right after.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Bind `addr` now and put the socket in a fresh fd table under its bound address, the
/// address to give Pingora (it adopts the socket instead of binding again).
fn prebind(addr: &str) -> Result<(ListenFds, String)> {
    let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    l.set_nonblocking(true)?;
    let local = l.local_addr()?.to_string();
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    fds.lock().add(local.clone(), l.into_raw_fd());
    Ok((fds, local))
}

impl Listeners {
    /// Returns the listeners and the channel on which an unexpected end is reported.
    pub fn new(
        app: App,
        workers: Arc<Workers>,
        limits: EdgeLimits,
        max_connections: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (failed, rx) = mpsc::unbounded_channel();
        let me = Listeners {
            app,
            workers,
            limits: LiveLimits::new(limits),
            max_connections: AtomicUsize::new(max_connections),
            open: parking_lot::Mutex::new(Vec::new()),
            failed,
        };
        (Arc::new(me), rx)
    }

    /// A listener's connection count: `limit`, the count of the listener it takes over from
    /// (its open connections still count), else a new one.
    fn limit(&self, tls: bool, limit: Option<Arc<ConnLimit>>) -> Arc<ConnLimit> {
        limit.unwrap_or_else(|| ConnLimit::new(self.max_connections.load(Ordering::Acquire), tls))
    }

    /// One worker's service of a listener, counting against `limit`.
    fn service(&self, name: String, limit: &Arc<ConnLimit>) -> Service<Edge<HttpProxy<TenProxy>>> {
        let edge = Edge::new(self.app.clone(), self.limits.clone(), Some(limit.clone()));
        let mut service = Service::new(name, edge);
        service.set_connection_filter(limit.clone());
        service
    }

    /// The fd table of each worker's service: the first worker's is `fds` (its service owns
    /// the socket), each other one a duplicate of the socket in a table of its own (each
    /// service closes its own descriptor when it stops).
    /// On an error nothing is left open: the duplicates made so far and the socket itself
    /// are closed (a listener that failed to open must not keep its port).
    fn fds_per_worker(&self, fds: ListenFds, local: &str) -> Result<Vec<ListenFds>> {
        let fd = fds.lock().get(local).copied().unwrap_or(-1);
        let dups = (1..self.workers.len())
            .map(|_| {
                // SAFETY: `fd` is the socket bound for this listener, owned by the first
                // table, which no service has started from yet (nothing can have closed it).
                unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
            })
            .collect::<std::io::Result<Vec<OwnedFd>>>();
        let dups = match dups {
            Ok(dups) => dups,
            Err(e) => {
                close_socket(&fds, local);
                return Err(e).with_context(|| format!("cannot duplicate the socket of {local}"));
            }
        };
        let mut all = vec![fds];
        for dup in dups {
            let table: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
            table.lock().add(local.to_string(), dup.into_raw_fd());
            all.push(table);
        }
        Ok(all)
    }

    /// Open a plain HTTP listener on `addr` (as written in the config); returns its bound
    /// address.
    pub fn open_http(&self, addr: &str) -> Result<String> {
        let (fds, local) = prebind(addr)?;
        self.serve_http(addr, &local, fds)?;
        Ok(local)
    }

    /// Serve on a listening socket handed over by the previous ten (an upgrade): `configured`
    /// as that one had it (`tls ADDR` for the TLS listener), `local` its bound address.
    pub fn adopt(
        &self,
        configured: &str,
        local: &str,
        fd: OwnedFd,
        tls: Option<MakeTls<'_>>,
    ) -> Result<()> {
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        fds.lock().add(local.to_string(), fd.into_raw_fd());
        match tls {
            None => self.serve_http(configured, local, fds),
            Some(make) => self.serve_tls(configured, local, fds, make, None),
        }
    }

    /// Every open listener as (configured, bound address, tls, socket): what an upgrade hands
    /// over (the caller duplicates the descriptors).
    pub fn handover(&self) -> Vec<(String, String, bool, RawFd)> {
        self.open
            .lock()
            .iter()
            .map(|o| (o.configured.clone(), o.local.clone(), o.tls, o.fd))
            .collect()
    }

    fn serve_http(&self, configured: &str, local: &str, fds: ListenFds) -> Result<()> {
        let limit = self.limit(false, None);
        let fd = fds.lock().get(local).copied().unwrap_or(-1);
        let services = self
            .fds_per_worker(fds, local)?
            .into_iter()
            .map(|fds| {
                let mut service = self.service(format!("ten-proxy {local}"), &limit);
                service.add_listener(ListenerConfig::tcp(local).l4_buffer(L4_BUFFERS));
                (service, fds)
            })
            .collect();
        self.run(configured, local, fd, services, limit, false);
        Ok(())
    }

    /// Open the TLS listener (`[settings.tls]`) with the rustls settings `make` gives each
    /// worker (certificate resolver, ALPN) and a hook run before each handshake (on-demand
    /// ACME); returns its bound address.
    pub fn open_tls(&self, addr: &str, make: MakeTls<'_>) -> Result<String> {
        let (fds, local) = prebind(addr)?;
        self.serve_tls(&format!("tls {addr}"), &local, fds, make, None)?;
        Ok(local)
    }

    fn serve_tls(
        &self,
        configured: &str,
        local: &str,
        fds: ListenFds,
        make: MakeTls<'_>,
        limit: Option<Arc<ConnLimit>>,
    ) -> Result<()> {
        let limit = self.limit(true, limit);
        let fd = fds.lock().get(local).copied().unwrap_or(-1);
        // Every worker's settings first: a failure leaves nothing to undo but the socket.
        let made = (0..self.workers.len())
            .map(|_| make())
            .collect::<Result<Vec<_>>>();
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                close_socket(&fds, local);
                return Err(e);
            }
        };
        let mut services = Vec::new();
        for (fds, (settings, pre_tls)) in self.fds_per_worker(fds, local)?.into_iter().zip(made) {
            let mut service = self.service(format!("ten-proxy-tls {local}"), &limit);
            if let Some(hook) = pre_tls {
                service.endpoints().set_pre_tls_callback(hook);
            }
            service.add_listener(
                ListenerConfig::tcp(local)
                    .tls(settings)
                    .l4_buffer(L4_BUFFERS),
            );
            services.push((service, fds));
        }
        self.run(configured, local, fd, services, limit, true);
        Ok(())
    }

    /// Start each worker's service of a listener on that worker's runtime.
    fn run(
        &self,
        configured: &str,
        local: &str,
        fd: RawFd,
        services: Vec<PerWorker>,
        limit: Arc<ConnLimit>,
        tls: bool,
    ) {
        let (stop, stop_rx) = watch::channel(false);
        let asked = stop_rx.clone();
        let failed = self.failed.clone();
        let name = local.to_string();
        let mut inner = tokio::task::JoinSet::new();
        let abort = services
            .into_iter()
            .zip(self.workers.handles())
            .map(|((mut service, fds), worker)| {
                let stop_rx = stop_rx.clone();
                inner.spawn_on(
                    async move { service.start_service(Some(fds), stop_rx, 1).await },
                    worker,
                )
            })
            .collect();
        let task = tokio::spawn(async move {
            // The first worker's service to end unasked (or by a panic) is reported at once.
            while let Some(end) = inner.join_next().await {
                let why = match end {
                    Err(e) if e.is_panic() => Some("panicked (see the log above)"),
                    _ if !*asked.borrow() => Some("stopped"),
                    _ => None,
                };
                if let Some(why) = why {
                    let _ = failed.send(format!("the proxy service on {name} {why}"));
                    return;
                }
            }
        });
        self.open.lock().push(Open {
            configured: configured.to_string(),
            local: local.to_string(),
            fd,
            tls,
            limit,
            stop,
            task,
            abort,
        });
    }

    /// A reload's limits: connections accepted from now on get `limits`; every listener (open
    /// or opened later) allows `max_connections`.
    pub fn set_limits(&self, limits: EdgeLimits, max_connections: usize) {
        self.limits.set(limits);
        self.max_connections
            .store(max_connections, Ordering::Release);
        for o in self.open.lock().iter() {
            o.limit.set_max(max_connections);
        }
    }

    /// Serve the TLS listener opened for `configured` with new `settings` (another `http2`)
    /// on the same socket: a second service accepts on a duplicate of it, then the first one
    /// stops accepting and its connections finish on their own. No moment without a listener.
    pub async fn replace_tls(&self, configured: &str, make: MakeTls<'_>) -> Result<()> {
        let (local, fd, old) = {
            let mut all = self.open.lock();
            let i = all
                .iter()
                .position(|o| o.configured == configured)
                .with_context(|| format!("no listener {configured} is open"))?;
            // SAFETY: the descriptor is open while its listener is in the list (the lock is
            // held) and its service has not been told to stop.
            let fd = unsafe { BorrowedFd::borrow_raw(all[i].fd) }
                .try_clone_to_owned()
                .with_context(|| format!("cannot duplicate the socket of {configured}"))?;
            let old = all.remove(i);
            (old.local.clone(), fd, old)
        };
        // The new service counts with the old one's limit: the old listener's connections,
        // still open, stay counted against max_connections (and in `connections()`).
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        fds.lock().add(local.clone(), fd.into_raw_fd());
        if let Err(e) = self.serve_tls(configured, &local, fds, make, Some(old.limit.clone())) {
            // The old listener goes on serving.
            self.open.lock().push(old);
            return Err(e);
        }
        old.stop.send_replace(true);
        let _ = old.task.await;
        Ok(())
    }

    /// Stop accepting on the listener opened for `configured` and wait until its accept loop
    /// ended (the socket is closed); its open connections finish on their own. Returns its
    /// bound address, or None if no such listener is open.
    pub async fn close(&self, configured: &str) -> Option<String> {
        let open = {
            let mut all = self.open.lock();
            let i = all.iter().position(|o| o.configured == configured)?;
            all.remove(i)
        };
        open.stop.send_replace(true);
        let _ = open.task.await;
        Some(open.local)
    }

    /// Shutdown: every listener stops accepting (their tasks are left to end) and parked
    /// keep-alive connections close (Pingora's cleanup of the shared app, which `Edge` leaves
    /// to us: one listener closing must not end the others' connections).
    pub async fn close_all(&self) {
        for o in self.open.lock().iter() {
            o.stop.send_replace(true);
        }
        pingora_core::apps::HttpServerApp::http_cleanup(&*self.app).await;
    }

    /// An upgrade: every listener stops accepting (the new ten accepts on the same sockets);
    /// requests on open connections are answered with `Connection: close`.
    pub fn stop_accepting(&self) {
        for o in self.open.lock().iter() {
            o.stop.send_replace(true);
        }
    }

    /// Client connections open on every listener.
    pub fn connections(&self) -> usize {
        self.open.lock().iter().map(|o| o.limit.open()).sum()
    }

    /// Close parked keep-alive connections (the end of an upgrade's drain).
    pub async fn close_idle(&self) {
        pingora_core::apps::HttpServerApp::http_cleanup(&*self.app).await;
    }

    /// Abort every listener's task (the very end of `ten serve`).
    pub fn abort_all(&self) {
        for o in self.open.lock().iter() {
            o.task.abort();
            for a in &o.abort {
                a.abort();
            }
        }
    }
}
