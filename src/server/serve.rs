//! `ten serve`: wires the proxy, the supervisor and the table publisher together, then runs until
//! SIGTERM/SIGINT: stop accepting, drain in-flight requests, stop every instance, exit 0. SIGHUP
//! reloads the config file (`reload`), as `ten reload` does; systemd is notified (`notify`).
//! `ten upgrade` hands everything to a new process (`upgrade`): this one then stops accepting,
//! drains and exits 0 without stopping any instance. Started as that new process
//! (`--takeover-fd`), it serves on the handed sockets and adopts the handed instances.

use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::PreTlsCallback;
use pingora_core::protocols::ALPN;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::Service as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use tenement_conf::{AccessLog as AccessLogConf, Config};
use tenement_fleet::{Fleet, FleetStore};
use tenement_proxy::access::{self, AccessLog};
use tenement_proxy::tls::{Certs, Challenges, SniHook};
use tenement_proxy::{h2_server_options, EdgeLimits, ManagementApp, TenProxy};
use tenement_supervisor::logs::{LogOptions, LogStore};
use tenement_supervisor::{StateStore, Supervisor};

use crate::server::acme::{Acme, HANDSHAKE_WAIT};
use crate::server::admin::AdminListener;
use crate::server::api::{register_process_collector, Api, Auth};
use crate::server::audit::Audit;
use crate::server::compose::{Publisher, Wake};
use crate::server::listeners::Listeners;
use crate::server::notify::Notifier;
use crate::server::reload::{Reloader, Source};
use crate::server::upgrade::takeover::Takeover;
use crate::server::upgrade::Upgrader;
use crate::server::workers::{self, OnMain, Workers};
use tenement_proxy::metrics::Metrics;

/// Makes the TLS listener's settings from `[settings.tls]` (see [`tls_settings`]).
pub type TlsMaker =
    Arc<dyn Fn(&tenement_conf::Tls) -> Result<(TlsSettings, Option<PreTlsCallback>)> + Send + Sync>;

/// The TLS listener's settings: certificates by SNI (one ArcSwap'd set: exact name, wildcard,
/// default), h2 + http/1.1 by ALPN unless `http2 = false`, and with ACME a hook run before
/// each handshake (the SNI name, and an order when ten routes it and no certificate covers
/// it; waits at most HANDSHAKE_WAIT).
fn tls_settings(
    tls: &tenement_conf::Tls,
    certs: &Arc<Certs>,
    acme: Option<&Arc<Acme>>,
) -> Result<(TlsSettings, Option<PreTlsCallback>)> {
    let mut settings = TlsSettings::intermediate("", "")
        .map_err(|e| anyhow::anyhow!("cannot set up TLS on {}: {e}", tls.listen))?;
    settings.set_cert_resolver(certs.resolver());
    if tls.http2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(ALPN::H1);
    }
    let hook = acme.map(|acme| {
        let hook: PreTlsCallback = SniHook::new(certs.clone(), acme.clone(), HANDSHAKE_WAIT);
        hook
    });
    Ok((settings, hook))
}

/// Bind the control socket (mode 0600). A live socket means another `ten serve` owns this data
/// dir: refuse. A stale one (left by a crash) is replaced.
fn bind_control(fds: &ListenFds, path: &Path) -> Result<String> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another ten serve is already running with data_dir {} (its control socket {} answers)",
                path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    let key = path.to_string_lossy().into_owned();
    fds.lock().add(key.clone(), l.into_raw_fd());
    Ok(key)
}

/// Raise the open-file soft limit to the hard limit: every client connection, upstream
/// connection, health probe and instance pipe is a file descriptor, and the usual soft limit
/// (1024) is reached by a few hundred idle clients (SPEC §14).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit already at its hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Serve until stopped; `takeover_fd`: started by `ten upgrade`, the old server's handover
/// socket (its answer says whether this one took over).
pub async fn run(source: Source, config: Config, takeover_fd: Option<RawFd>) -> Result<()> {
    let mut takeover = match takeover_fd {
        Some(fd) => Some(tokio::task::block_in_place(|| Takeover::receive(fd))?),
        None => None,
    };
    let r = serve(source, config, &mut takeover).await;
    if let (Err(e), Some(t)) = (&r, takeover.as_mut()) {
        t.failed(&format!("{e:#}"));
    }
    r
}

async fn serve(source: Source, config: Config, takeover: &mut Option<Takeover>) -> Result<()> {
    // This binary's path now (a package upgrade later puts the new one there).
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "ten".into());
    raise_nofile();
    // SIGHUP's default action ends the process: handled from the start (a reload asked during
    // startup runs once the listeners are open).
    let mut hup = signal(SignalKind::hangup())?;
    let notifier = Arc::new(Notifier::from_env());
    let config = Arc::new(config);
    for w in tenement_conf::root_warnings(&config) {
        tracing::warn!("{w}");
    }
    let s = &config.settings;
    // umask 077, 0711, ten.lock (handed over by an upgrade: the same locked file)
    let mut held = match takeover.as_mut() {
        Some(t) => crate::server::data_dir::take_over(&s.data_dir, t.lock.take())?,
        None => crate::server::data_dir::prepare(&s.data_dir)?,
    };
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    let sock = crate::wire::control_socket(&s.data_dir);
    let sock_key = match takeover.as_mut().and_then(|t| t.control.take()) {
        Some(fd) => {
            // The same socket (and path) the old server answered on: nothing is unlinked.
            let key = sock.to_string_lossy().into_owned();
            fds.lock().add(key.clone(), fd.into_raw_fd());
            key
        }
        None => bind_control(&fds, &sock)?,
    };

    let metrics = if s.metrics {
        register_process_collector();
        Some(Metrics::new().context("cannot create the metrics registry")?)
    } else {
        None
    };
    let db = s.data_dir.join("tenement.db");
    let publisher =
        Publisher::new(config.clone(), metrics.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = StateStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?;
    let logs = LogStore::open(
        &db,
        LogOptions {
            retention: s.log_retention,
            max_rows: s.log_max_rows,
            ..LogOptions::from_settings(s)
        },
    )
    .with_context(|| format!("cannot open the log store {}", db.display()))?;
    let supervisor = Supervisor::new(
        config.clone(),
        publisher.clone(),
        Arc::new(logs.clone()),
        Some(store),
    );
    let (fleet_stop_tx, fleet_stop_rx) = watch::channel(false);
    let fleet = match &config.fleet {
        None => None,
        Some(conf) => {
            // The SQLite file in data_dir, or the PostgreSQL store several routers share.
            let fleet_store =
                FleetStore::open_conf(conf.store.as_deref(), &db, Duration::from_secs(10))
                    .map_err(|e| match conf.store.as_deref() {
                        None => anyhow::anyhow!("cannot open {}: {e}", db.display()),
                        Some(_) => anyhow::anyhow!("cannot open the fleet store: {e}"),
                    })?;
            // Status changes are traced by the fleet itself; the log store gets them as `ten`.
            let sink = logs.clone();
            let events: tenement_fleet::Events = Arc::new(move |line: &str| {
                sink.record("ten", "fleet", tenement_supervisor::Stream::Stdout, line);
            });
            let fleet = Fleet::new(fleet_store, conf.clone(), events);
            tokio::spawn(fleet.clone().run(fleet_stop_rx));
            Some(fleet)
        }
    };
    // The one place tables are built: from the supervisor's and the fleet's views.
    tokio::spawn(publisher.clone().run(
        supervisor.clone(),
        supervisor.follow(),
        fleet.as_ref().map(|f| (f.subscribe(), f.conf().failover)),
    ));

    let waker = Arc::new(Wake {
        supervisor: supervisor.clone(),
        fleet: fleet.clone().map(|f| (f, publisher.clone())),
    });
    // Certificates: files now, ACME's as they come.
    let certs = match &s.tls {
        Some(tls) => Some(Certs::load(tls).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let api = Arc::new(Api {
        supervisor: supervisor.clone(),
        publisher: publisher.clone(),
        auth: Auth::open(&db).with_context(|| format!("cannot open {}", db.display()))?,
        audit: Audit::open(&db).with_context(|| format!("cannot open {}", db.display()))?,
        metrics,
        logs: logs.clone(),
        fleet: fleet.clone(),
        rendered: Default::default(),
        reloader: Default::default(),
        certs: certs.clone(),
        upgrader: Default::default(),
    });
    // Orphans killed, desired instances announced and external upstreams resolved before any
    // listener opens, and the table that shows them live.
    // After an upgrade the handed instances are adopted (same processes), not respawned.
    let wanted = match takeover.as_mut() {
        Some(t) => {
            let handover = std::mem::take(&mut t.handover);
            supervisor.prepare_adopting(handover).await
        }
        None => supervisor.prepare().await,
    };
    supervisor.settle().await;
    if let Some(f) = &fleet {
        // Server urls resolved (by the fleet) and routed before the first request.
        f.resolve_pending(Duration::from_secs(5)).await;
        publisher.settle_fleet(f.view().generation).await;
    }
    let access = match &s.access_log {
        AccessLogConf::Off => None,
        conf => {
            let target = match conf {
                AccessLogConf::File(p) => access::Target::File(p.clone()),
                _ => access::Target::Stdout,
            };
            let dropped = match &api.metrics {
                Some(m) => m.access_log_dropped(),
                None => prometheus::IntCounter::new("unregistered", "-")?,
            };
            Some(AccessLog::start(&target, dropped)?)
        }
    };
    // With [settings.acme], the HTTP-01 answers the plain listeners give before routing.
    let acme = match (&s.acme, &certs) {
        (Some(conf), Some(certs)) => Some(Acme::new(
            conf.clone(),
            &s.data_dir,
            certs.clone(),
            Arc::new(Challenges::default()),
            publisher.router(),
        )?),
        _ => None,
    };
    // The proxy's worker threads; what a proxy connection hands to the API, the supervisor,
    // the fleet or ACME runs on this (the main) runtime.
    let workers = Workers::start(workers::count(s.threads))?;
    tracing::info!(
        proxy_workers = workers.len(),
        "proxy workers started, one runtime per thread ([settings] threads, else one per CPU)"
    );
    let main = tokio::runtime::Handle::current();
    let on_main: Arc<dyn tenement_proxy::management::Management> = Arc::new(OnMain::new(
        api.clone() as Arc<dyn tenement_proxy::management::Management>,
        main.clone(),
    ));
    let waker = Arc::new(OnMain::new(waker, main));
    let proxy = TenProxy::new(publisher.router(), on_main, Some(waker))
        .with_access_log(access.clone())
        .with_challenges(acme.as_ref().map(|a| a.challenges()));
    let traffic = proxy.traffic();
    // HTTP/1 header names: one map per message unless the config keeps their case.
    pingora_core::protocols::http::v1::common::set_keep_header_case(s.preserve_header_case);
    // Nothing in ten reads how long a socket's reads and writes waited (Pingora's timing
    // digest): no clock reads to account it (vendor/patches/pingora-core/0008).
    pingora_core::protocols::l4::stream::set_track_pending_time(false);
    let conf = Arc::new(ServerConf {
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        ..ServerConf::default()
    });
    // Pingora's proxy inside ten's connection loop (header_timeout, keepalive_timeout: see
    // tenement_proxy::Edge for why there and not a Pingora option), one service per listener
    // so that each has its own max_connections (its connection filter).
    let limits = EdgeLimits {
        header_timeout: s.header_timeout,
        keepalive_timeout: s.keepalive_timeout,
    };
    let mut app = pingora_proxy::http_proxy(&conf, proxy);
    app.server_options = Some(h2_server_options(&limits));
    let app = Arc::new(app);
    let max_connections = usize::try_from(s.max_connections).unwrap_or(usize::MAX);
    let (listeners, mut listener_failed) =
        Listeners::new(app, workers.clone(), limits, max_connections);
    let mut announced = Vec::new();
    for addr in &s.listen {
        let local = match takeover.as_mut().and_then(|t| t.listener(addr, false)) {
            Some((local, fd)) => {
                listeners.adopt(addr, &local, fd, None)?;
                local
            }
            None => listeners.open_http(addr)?,
        };
        announced.push(format!("http://{local}"));
    }
    // The TLS listener's settings, made from `[settings.tls]` at start and by a reload that
    // moves the listener or changes `http2`.
    let tls_maker: Option<TlsMaker> = certs.clone().map(|certs| {
        let acme = acme.clone();
        let maker: TlsMaker =
            Arc::new(move |tls: &tenement_conf::Tls| tls_settings(tls, &certs, acme.as_ref()));
        maker
    });
    if let (Some(tls), Some(make)) = (&s.tls, &tls_maker) {
        let make = || make(tls);
        let configured = format!("tls {}", tls.listen);
        let local = match takeover
            .as_mut()
            .and_then(|t| t.listener(&configured, true))
        {
            Some((local, fd)) => {
                listeners.adopt(&configured, &local, fd, Some(&make))?;
                local
            }
            None => listeners.open_tls(&tls.listen, &make)?,
        };
        announced.push(format!("https://{local}"));
    }
    let mut control = ManagementApp::control(api.clone()).into_service("ten-control");
    control.add_uds(&sock_key, Some(std::fs::Permissions::from_mode(0o600)));
    let admin = AdminListener::new(api.clone(), s.admin_loopback_trusted);
    if let Some(addr) = &s.admin_listen {
        let local = match takeover.as_mut().and_then(|t| t.admin.take()) {
            Some((local, fd)) => {
                admin.adopt(&local, fd);
                local
            }
            None => admin.open(addr)?,
        };
        announced.push(format!("admin http://{local}"));
    }
    let reloader = Arc::new(
        Reloader::new(
            source.clone(),
            supervisor.clone(),
            publisher.clone(),
            listeners.clone(),
            notifier.clone(),
            certs.clone(),
        )
        .with_access_log(access.clone())
        .with_logs(logs.clone())
        .with_edge(admin.clone(), tls_maker),
    );
    let _ = api.reloader.set(reloader);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    {
        let (fds, rx) = (fds.clone(), shutdown_rx.clone());
        tokio::spawn(async move { control.start_service(Some(fds), rx, 1).await });
    }
    if let Some(acme) = &acme {
        tokio::spawn(acme.clone().renew_loop());
    }
    // SIGUSR1: reopen the access log file (logrotate). Handled even without one, so that the
    // signal never kills ten.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let reopen = access.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match &reopen {
                Some(log) => {
                    log.reopen();
                    tracing::info!("SIGUSR1: the access log is reopened before its next line");
                }
                None => tracing::info!("SIGUSR1: no access log to reopen"),
            }
        }
    });
    for a in &announced {
        match a.strip_prefix("admin ") {
            Some(a) => println!("ten: admin listening on {a}"),
            None => println!("ten: listening on {a}"),
        }
    }
    println!("ten: control socket {}", sock.display());
    println!("ten: domain {} data_dir {}", s.domain, s.data_dir.display());

    let (upgraded_tx, mut upgraded_rx) = tokio::sync::mpsc::unbounded_channel();
    let upgrader = Arc::new(Upgrader {
        exe,
        source,
        supervisor: supervisor.clone(),
        listeners: listeners.clone(),
        fds: fds.clone(),
        control_key: sock_key.clone(),
        admin: admin.clone(),
        lock: held.fd().map(|f| f.try_clone_to_owned()).transpose()?,
        notifier: notifier.clone(),
        done: upgraded_tx,
        serial: tokio::sync::Mutex::new(None),
    });
    let _ = api.upgrader.set(upgrader);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    match takeover.as_mut() {
        // The old server tells systemd (MAINPID=, READY=1): it is the main process still.
        Some(t) => {
            t.ready()?;
            held.set_shared(false); // the old one exits: the lock is ours
            supervisor.resume_output();
            tracing::info!(old = t.old_pid, "upgrade: took over from the old ten serve");
        }
        None => notifier.ready(),
    }
    let boot = {
        let supervisor = supervisor.clone();
        tokio::spawn(async move { supervisor.start_desired(wanted).await })
    };
    let mut failure = None;
    let mut upgraded = None;
    loop {
        tokio::select! {
            Some(pid) = upgraded_rx.recv() => upgraded = Some(pid),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = hup.recv() => {
                // Applied in its own task: signals (a SIGTERM) are still handled meanwhile.
                let api = api.clone();
                tokio::spawn(async move { api.reload_logged("SIGHUP").await });
                continue;
            }
            why = listener_failed.recv() => {
                let why = why.unwrap_or_else(|| "the proxy service stopped".into());
                tracing::error!("{why}: stopping instances");
                failure = Some(why);
            }
        }
        break;
    }
    boot.abort();
    if let Some(pid) = upgraded {
        // ten.lock stays locked for the new process (the same open file).
        held.set_shared(true);
        admin.stop_accepting();
        let drained = drain_after_upgrade(
            pid,
            s,
            &listeners,
            &traffic,
            &logs,
            shutdown_tx,
            fleet_stop_tx,
        )
        .await;
        // Its connections closed: the lines of the last requests it answered.
        close_access_log(access).await;
        stop_workers(workers).await;
        return drained;
    }
    notifier.stopping();

    // Stop accepting, end open log streams, let in-flight requests finish, then stop the
    // instances.
    let _ = shutdown_tx.send(true);
    admin.stop_accepting();
    listeners.close_all().await;
    traffic.close();
    let _ = fleet_stop_tx.send(true);
    let deadline = Instant::now() + s.drain_timeout;
    while traffic.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if traffic.in_flight() > 0 {
        tracing::warn!(
            in_flight = traffic.in_flight(),
            "drain_timeout reached with requests in flight"
        );
    }
    close_access_log(access).await;
    supervisor.stop_all().await;
    listeners.abort_all();
    stop_workers(workers).await;
    logs.close(); // flush what the instances printed last
    let _ = std::fs::remove_file(&sock);
    if let Some(why) = failure {
        bail!("{why}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The new process (`pid`) serves on the same sockets with the instances: stop accepting,
/// answer the requests still coming on open connections with `Connection: close`, wait until
/// none is in flight and every client connection closed (at most `drain_timeout`), close the
/// idle ones left, and return without stopping any instance or removing the control socket.
async fn drain_after_upgrade(
    pid: u32,
    s: &tenement_conf::Settings,
    listeners: &Listeners,
    traffic: &tenement_proxy::Traffic,
    logs: &LogStore,
    shutdown_tx: watch::Sender<bool>,
    fleet_stop_tx: watch::Sender<bool>,
) -> Result<()> {
    tracing::info!(
        new = pid,
        "upgrade: draining, then exiting (instances keep running)"
    );
    let _ = shutdown_tx.send(true);
    listeners.stop_accepting();
    traffic.close();
    let _ = fleet_stop_tx.send(true);
    // The answer to `ten upgrade` (on the control socket) is on its way: give it a moment.
    let floor = Instant::now() + Duration::from_millis(200);
    let deadline = Instant::now() + s.drain_timeout;
    while (Instant::now() < floor || traffic.in_flight() > 0 || listeners.connections() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if traffic.in_flight() > 0 {
        tracing::warn!(
            in_flight = traffic.in_flight(),
            "drain_timeout reached with requests in flight"
        );
    }
    listeners.close_idle().await;
    listeners.abort_all();
    logs.close();
    tracing::info!("upgraded: exiting");
    Ok(())
}

/// End the proxy workers' runtimes (their listeners are closed and drained) and wait for the
/// threads, off the main runtime's workers.
async fn stop_workers(workers: Arc<Workers>) {
    let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
}

/// Write out the access-log lines still queued (the proxy has answered its last request) and
/// stop the writer thread, off the runtime's workers.
async fn close_access_log(access: Option<Arc<AccessLog>>) {
    if let Some(log) = access {
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
}

/// The server's log: `TEN_LOG` (an `EnvFilter`), else info without Pingora's chatter; on
/// stderr, coloured on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
