//! The admin listener (`[settings] admin_listen`): the management API and `/metrics` on their
//! own port. Opened at start (or adopted from the previous ten on an upgrade), and by a reload
//! that sets or changes `admin_listen` (the new address bound before anything else changes: a
//! bind failure refuses the reload); the old one stops accepting and its open connections
//! finish. Its socket is bound by `ten` and handed to Pingora in its own fd table, as the proxy
//! listeners' are (`listeners.rs`).

use std::net::TcpListener;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use anyhow::{Context, Result};
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::Service as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use tenement_proxy::management::Management;
use tenement_proxy::ManagementApp;

/// The open admin listener.
struct Open {
    local: String,
    fd: RawFd,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// At most one admin listener.
pub struct AdminListener {
    api: Arc<dyn Management>,
    /// `admin_loopback_trusted` (read at start).
    loopback_trusted: bool,
    open: parking_lot::Mutex<Option<Open>>,
    /// The listener a reload moved away from, until its accept loop has ended.
    retired: parking_lot::Mutex<Option<Open>>,
}

impl AdminListener {
    pub fn new(api: Arc<dyn Management>, loopback_trusted: bool) -> Arc<Self> {
        Arc::new(AdminListener {
            api,
            loopback_trusted,
            open: parking_lot::Mutex::new(None),
            retired: parking_lot::Mutex::new(None),
        })
    }

    /// Bind `addr` (as written in the config) and serve on it; returns the bound address. The
    /// listener open before (if any) stops accepting ([`AdminListener::retire_previous`] waits
    /// for it). The old one still holds its socket while the new one binds: a move to another
    /// address on the same port (`0.0.0.0:9000` → `127.0.0.1:9000`) fails with "address in
    /// use" and takes two reloads (remove, then set).
    pub fn open(&self, addr: &str) -> Result<String> {
        let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        l.set_nonblocking(true)?;
        let local = l.local_addr()?.to_string();
        self.serve(&local, OwnedFd::from(l));
        Ok(local)
    }

    /// Serve on the socket handed over by the previous ten (an upgrade).
    pub fn adopt(&self, local: &str, fd: OwnedFd) {
        self.serve(local, fd);
    }

    fn serve(&self, local: &str, fd: OwnedFd) {
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        let raw = fd.into_raw_fd();
        fds.lock().add(local.to_string(), raw);
        let mut svc =
            ManagementApp::admin(self.api.clone(), self.loopback_trusted).into_service("ten-admin");
        svc.add_tcp(local);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { svc.start_service(Some(fds), rx, 1).await });
        let previous = self.open.lock().replace(Open {
            local: local.to_string(),
            fd: raw,
            stop,
            task,
        });
        if let Some(p) = previous {
            // A reload moving `admin_listen`: the old listener stops accepting now;
            // `retire_previous` waits for its accept loop to end.
            p.stop.send_replace(true);
            *self.retired.lock() = Some(p);
        }
    }

    /// Wait until the listener replaced by the last [`AdminListener::open`] has stopped
    /// accepting (its open connections finish on their own).
    pub async fn retire_previous(&self) {
        let retired = self.retired.lock().take();
        if let Some(p) = retired {
            let _ = p.task.await;
        }
    }

    /// Stop accepting on the open listener and wait until its accept loop ended; its open
    /// connections finish on their own. Returns its bound address.
    pub async fn close(&self) -> Option<String> {
        let open = self.open.lock().take()?;
        open.stop.send_replace(true);
        let _ = open.task.await;
        Some(open.local)
    }

    /// The open listener's bound address and socket (what an upgrade hands over; the caller
    /// duplicates the descriptor).
    pub fn handover(&self) -> Option<(String, RawFd)> {
        self.open.lock().as_ref().map(|o| (o.local.clone(), o.fd))
    }

    /// Shutdown or an upgrade: stop accepting (open connections finish).
    pub fn stop_accepting(&self) {
        if let Some(o) = self.open.lock().as_ref() {
            o.stop.send_replace(true);
        }
    }
}
