//! Reload (SPEC §11): `ten reload`, SIGHUP and `POST /api/reload` all land in
//! [`Reloader::reload`]. It re-reads the file `ten serve` was started with (its flags applied
//! again, [`Source`]), validates it as `ten config check` does (invalid: every error, nothing
//! changes), computes the [`plan`] against the running config and applies it:
//!
//! 1. new `listen` addresses, a new TLS `listen` and a new `admin_listen` bound (a bind failure
//!    changes nothing);
//! 2. new processes' instances, new `[instances]` and new external upstreams started;
//! 3. processes whose spawn definition changed replaced one instance at a time, health-gated
//!    like a deploy ([`Reloader::replace`]); one that never gets healthy is stopped, the old
//!    instance keeps serving and that process keeps its old definition;
//! 4. the next routing table built from the new config (routes, domain, plugins, timeouts,
//!    `trusted_proxies`); the client connection limits (`header_timeout`, `keepalive_timeout`
//!    for new connections, `max_connections` of every listener at once); a changed `http2`
//!    gets the TLS listener replaced on its socket;
//! 5. removed processes drained and stopped, removed listeners (a moved TLS listener's old
//!    address included) closed;
//! 6. the new config becomes the running one (the supervisor's: the one place it lives).
//!
//! Reloads are serialised: a second one waits for the first to finish, then compares against
//! what the first applied.
//!
//! Every reload (not a dry run, valid file or not) also reopens the access log file by its path,
//! as SIGUSR1 does (logrotate's `postrotate ten reload`); a changed `access_log` path is opened
//! before anything changes (a path that cannot be opened refuses the reload) and the log
//! switches to it.

pub mod plan;
pub mod source;

use std::sync::Arc;

use serde::Serialize;
use tenement_conf::{Config, InstanceName};
use tenement_supervisor::{Kind, Supervisor};

use crate::server::admin::AdminListener;
use crate::server::compose::Publisher;
use crate::server::listeners::Listeners;
use crate::server::notify::Notifier;
use crate::server::serve::TlsMaker;
pub use plan::Plan;
pub use source::Source;
use tenement_proxy::access::{AccessLog, Target};

/// The suffix of the id of an instance's temporary replacement while a reload replaces it.
const STAGING: &str = "-reload";

/// What a reload did (or, dry, would do).
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// One line per change.
    pub changes: Vec<String>,
    /// Why it was refused (nothing changed) or what failed while applying.
    pub errors: Vec<String>,
    pub dry_run: bool,
    /// True when nothing changed because of the errors (an invalid file, a refused key, a
    /// listener that cannot be bound).
    #[serde(skip)]
    pub refused: bool,
}

pub struct Reloader {
    source: Source,
    supervisor: Supervisor,
    publisher: Arc<Publisher>,
    listeners: Arc<Listeners>,
    notifier: Arc<Notifier>,
    /// The TLS certificate set (None without `[settings.tls]`), rebuilt by every reload.
    certs: Option<Arc<tenement_proxy::tls::Certs>>,
    /// The access log (None when off at start), reopened by every reload.
    access: Option<Arc<AccessLog>>,
    /// The log store (its retention limits follow reloads).
    logs: Option<tenement_supervisor::logs::LogStore>,
    /// The admin listener (`admin_listen`), bound and closed by reloads.
    admin: Option<Arc<AdminListener>>,
    /// Makes the TLS listener's settings (None without `[settings.tls]` at start).
    tls: Option<TlsMaker>,
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: Source,
        supervisor: Supervisor,
        publisher: Arc<Publisher>,
        listeners: Arc<Listeners>,
        notifier: Arc<Notifier>,
        certs: Option<Arc<tenement_proxy::tls::Certs>>,
    ) -> Self {
        Reloader {
            source,
            supervisor,
            publisher,
            listeners,
            notifier,
            certs,
            access: None,
            logs: None,
            admin: None,
            tls: None,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The access log each reload reopens (or switches to a changed `access_log`).
    /// The log store whose retention limits a reload sets.
    pub fn with_logs(mut self, logs: tenement_supervisor::logs::LogStore) -> Self {
        self.logs = Some(logs);
        self
    }

    pub fn with_access_log(mut self, access: Option<Arc<AccessLog>>) -> Self {
        self.access = access;
        self
    }

    /// The admin listener and the TLS listener's settings, which reloads change.
    pub fn with_edge(mut self, admin: Arc<AdminListener>, tls: Option<TlsMaker>) -> Self {
        self.admin = Some(admin);
        self.tls = tls;
        self
    }

    /// Re-read the file and apply it (or, `dry_run`, only say what would change).
    pub async fn reload(&self, dry_run: bool) -> Outcome {
        let _one_at_a_time = self.serial.lock().await;
        if let (false, Some(log)) = (dry_run, &self.access) {
            log.reopen();
        }
        let new = match self.source.load() {
            Ok(c) => c,
            Err(errors) => {
                return Outcome {
                    errors,
                    dry_run,
                    refused: true,
                    ..Outcome::default()
                }
            }
        };
        let old = self.supervisor.config();
        let running: Vec<InstanceName> = self
            .supervisor
            .view()
            .instances
            .iter()
            .filter(|v| v.kind == Kind::Spawned)
            .map(|v| v.name.clone())
            .collect();
        let plan = plan::plan(&old, &new, &running);
        if !plan.refused.is_empty() {
            return Outcome {
                changes: plan.lines,
                errors: plan.refused,
                dry_run,
                refused: true,
            };
        }
        // A changed access_log path, opened first: one that cannot be opened refuses the
        // reload (nothing changed yet); the log switches once nothing else can refuse.
        let mut access_to = None;
        if let (false, Some(_)) = (dry_run, &self.access) {
            if plan::access_log_applies(&old.settings, &new.settings) {
                let opened = Target::of(&new.settings.access_log)
                    .map(|t| AccessLog::open(&t))
                    .transpose();
                match opened {
                    Ok(o) => access_to = o,
                    Err(e) => {
                        return Outcome {
                            errors: vec![format!("settings.access_log: {e}")],
                            dry_run,
                            refused: true,
                            ..Outcome::default()
                        }
                    }
                }
            }
        }
        // The certificate files, first: a file rustls cannot use refuses the reload (nothing
        // changed yet). Every reload rebuilds the set, so files renewed in place apply too.
        if let (false, Some(certs), Some(tls)) = (dry_run, &self.certs, &new.settings.tls) {
            if plan::tls_files_apply(&old.settings, &new.settings) {
                if let Err(e) = certs.reload_files(tls) {
                    return Outcome {
                        errors: vec![e.to_string()],
                        dry_run,
                        refused: true,
                        ..Outcome::default()
                    };
                }
            }
        }
        if let (Some(log), Some(to)) = (&self.access, access_to) {
            log.switch(to);
        }
        if dry_run || plan.is_empty() {
            return Outcome {
                changes: plan.lines,
                dry_run,
                ..Outcome::default()
            };
        }
        self.notifier.reloading();
        let outcome = self.apply(&old, new, plan).await;
        self.notifier.ready();
        outcome
    }

    async fn apply(&self, old: &Config, new: Config, plan: Plan) -> Outcome {
        let mut changes = plan.lines.clone();
        let mut errors = Vec::new();

        // 1. New listeners first: one that cannot be bound changes nothing.
        if let Err(e) = self.bind_new(&plan, &new, &mut changes).await {
            return Outcome {
                changes: plan.lines,
                errors: vec![format!("{e:#}")],
                dry_run: false,
                refused: true,
            };
        }

        // 2. The supervisor learns the new processes; removed ones stay known until stopped.
        let mut during = new.clone();
        for name in &plan.removed {
            if let Some(p) = old.process(name) {
                during.processes.push(p.clone());
            }
        }
        self.supervisor.set_config(Arc::new(during.clone()));
        for name in &plan.added {
            if let Some(p) = new.process(name).filter(|p| p.is_external()) {
                self.supervisor.start_external(p).await;
            }
        }
        for i in &plan.spawn {
            if let Err(e) = self.supervisor.spawn(i, 100).await {
                errors.push(format!("instance + {i}: {e}"));
            }
        }

        // 3. Changed spawn definitions: one instance at a time, health-gated.
        let mut applied = new;
        plan::keep_read_once(old, &mut applied);
        for name in &plan.replaced {
            for i in self.instances_of(name, Kind::Spawned) {
                if let Err(e) = self.replace(&i).await {
                    errors.push(format!(
                        "process ~ {name}: {e}; it keeps its old definition (reload again to retry)"
                    ));
                    // The running config says what runs: the old definition.
                    if let (Some(slot), Some(o)) = (
                        applied.processes.iter_mut().find(|p| p.name == *name),
                        old.process(name),
                    ) {
                        *slot = o.clone();
                    }
                    if let Some(slot) = during.processes.iter_mut().find(|p| p.name == *name) {
                        if let Some(o) = old.process(name) {
                            *slot = o.clone();
                        }
                    }
                    self.supervisor.set_config(Arc::new(during.clone()));
                    break;
                }
            }
        }
        for name in &plan.externals_changed {
            for i in self.instances_of(name, Kind::External) {
                let _ = self.supervisor.stop_external(&i).await;
            }
            if let Some(p) = applied.process(name).filter(|p| p.is_external()) {
                self.supervisor.start_external(p).await;
            }
        }

        // 4. The next table: routes, domain, plugins, timeouts, body limits.
        // (The TLS certificate set was rebuilt before the plan was applied: see `reload`.)
        let applied = Arc::new(applied);
        if let Err(e) = self.publisher.reconfigure(applied.clone()).await {
            errors.push(format!("routing table: {e}"));
        }

        // Header case: HTTP/1 messages read from now on.
        pingora_core::protocols::http::v1::common::set_keep_header_case(
            applied.settings.preserve_header_case,
        );

        // The log store's retention limits.
        if let (true, Some(logs)) = (plan.log_limits, &self.logs) {
            let st = &applied.settings;
            logs.set_limits(st.log_retention, st.log_max_rows, st.log_max_bytes);
        }

        // The client connection limits; a new http2 on the TLS listener's socket.
        if plan.limits {
            let st = &applied.settings;
            let limits = tenement_proxy::EdgeLimits {
                header_timeout: st.header_timeout,
                keepalive_timeout: st.keepalive_timeout,
            };
            let max = usize::try_from(st.max_connections).unwrap_or(usize::MAX);
            self.listeners.set_limits(limits, max);
        }
        if let (true, Some(tls), Some(make)) = (plan.tls_http2, &applied.settings.tls, &self.tls) {
            let replaced = self
                .listeners
                .replace_tls(&format!("tls {}", tls.listen), &|| make(tls))
                .await;
            if let Err(e) = replaced {
                errors.push(format!("settings.tls.http2: {e:#}"));
            }
        }

        // 5. Removed processes and listeners.
        for name in &plan.removed {
            for i in self.instances_of(name, Kind::Spawned) {
                if let Err(e) = self.supervisor.stop(&i).await {
                    errors.push(format!("process - {name}: stopping {i}: {e}"));
                }
            }
            for i in self.instances_of(name, Kind::External) {
                let _ = self.supervisor.stop_external(&i).await;
            }
        }
        for a in &plan.listen_removed {
            if let Some(local) = self.listeners.close(a).await {
                tracing::info!("reload: stopped listening on {local}");
            }
        }
        if let Some((old_tls, _)) = &plan.tls_listen {
            if let Some(local) = self.listeners.close(&format!("tls {old_tls}")).await {
                tracing::info!("reload: stopped listening on {local} (TLS)");
            }
        }
        if let (Some((Some(_), None)), Some(admin)) = (&plan.admin, &self.admin) {
            if let Some(local) = admin.close().await {
                tracing::info!("reload: the admin listener on {local} closed");
            }
        }

        // 6. What runs now.
        self.supervisor.set_config(applied);
        Outcome {
            changes,
            errors,
            dry_run: false,
            refused: false,
        }
    }

    /// Bind what the plan adds: `listen` addresses, the TLS listener's new address, the new
    /// `admin_listen` (the old admin listener stops accepting then). On an error, what was
    /// bound here is closed again and nothing else has changed. Each line of `changes` about
    /// them gets the bound address.
    async fn bind_new(
        &self,
        plan: &Plan,
        new: &Config,
        changes: &mut [String],
    ) -> anyhow::Result<()> {
        let mut opened = Vec::new();
        let undo = |opened: Vec<String>| async move {
            for a in &opened {
                self.listeners.close(a).await;
            }
        };
        for a in &plan.listen_added {
            match self.listeners.open_http(a) {
                Ok(local) => {
                    let line = format!("listen + {a}");
                    if let Some(l) = changes.iter_mut().find(|l| **l == line) {
                        *l = format!("listen + {a} (listening on http://{local})");
                    }
                    println!("ten: listening on http://{local}");
                    opened.push(a.clone());
                }
                Err(e) => {
                    undo(opened).await;
                    return Err(e);
                }
            }
        }
        if let (Some((_, Some(to))), Some(tls)) = (&plan.tls_listen, &new.settings.tls) {
            let make = self
                .tls
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no TLS listener was set up at start"));
            let opened_tls = make.and_then(|make| self.listeners.open_tls(to, &|| make(tls)));
            match opened_tls {
                Ok(local) => {
                    if let Some(l) = changes
                        .iter_mut()
                        .find(|l| l.starts_with("setting ~ tls.listen"))
                    {
                        l.push_str(&format!(": listening on https://{local}"));
                    }
                    println!("ten: listening on https://{local}");
                    opened.push(format!("tls {to}"));
                }
                Err(e) => {
                    undo(opened).await;
                    return Err(e.context("settings.tls.listen"));
                }
            }
        }
        if let (Some((_, Some(to))), Some(admin)) = (&plan.admin, &self.admin) {
            match admin.open(to) {
                Ok(local) => {
                    if let Some(l) = changes
                        .iter_mut()
                        .find(|l| l.starts_with("setting ~ admin_listen"))
                    {
                        *l = format!("setting ~ admin_listen: listening on http://{local}");
                    }
                    println!("ten: admin listening on http://{local}");
                    admin.retire_previous().await;
                }
                Err(e) => {
                    undo(opened).await;
                    return Err(e.context("settings.admin_listen"));
                }
            }
        }
        Ok(())
    }

    /// The instances of `process` of `kind` now (replacement copies left out).
    fn instances_of(&self, process: &str, kind: Kind) -> Vec<InstanceName> {
        self.supervisor
            .view()
            .instances
            .iter()
            .filter(|v| v.kind == kind && v.name.process == process)
            .filter(|v| !v.name.id.ends_with(STAGING))
            .map(|v| v.name.clone())
            .collect()
    }

    /// Replace `name` by a copy started from the running config's (new) definition, keeping
    /// its name, weight and DATA_DIR, without a moment where its traffic has nowhere to go:
    /// a temporary copy `{id}-reload` is started and must get healthy (else it is stopped and
    /// `name` keeps serving: Err), takes `name`'s weight in one table swap, `name` is drained
    /// and stopped, started again with the new definition (health-gated too), takes its weight
    /// back, and the temporary copy is drained and stopped.
    async fn replace(&self, name: &InstanceName) -> Result<(), String> {
        let sup = &self.supervisor;
        let weight = sup.instance(name).map_or(100, |v| v.weight);
        let staging = InstanceName {
            process: name.process.clone(),
            id: format!("{}{STAGING}", name.id),
        };
        if sup.instance(&staging).is_some() {
            // Left by an interrupted reload.
            let _ = sup.stop(&staging).await;
        }
        sup.spawn(&staging, 0).await.map_err(|e| {
            format!("its replacement for {name} did not get healthy ({e}); {name} keeps serving")
        })?;
        sup.set_weights(&[(staging.clone(), weight), (name.clone(), 0)])
            .await
            .map_err(|e| e.to_string())?;
        sup.stop_keeping(name).await.map_err(|e| e.to_string())?;
        if let Err(e) = sup.spawn(name, 0).await {
            return Err(format!(
                "{name} did not get healthy with the new definition ({e}); {staging} serves in its place"
            ));
        }
        sup.set_weights(&[(name.clone(), weight), (staging.clone(), 0)])
            .await
            .map_err(|e| e.to_string())?;
        sup.stop(&staging).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
