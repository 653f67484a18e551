//! The PostgreSQL backend of the fleet store (`[fleet] store = "postgres://..."`), shared by
//! several routers. It owns a small tokio runtime of its own (one worker thread, `fleet-pg`)
//! that drives three sessions, each reconnecting by itself with backoff (100 ms doubling to
//! 5 s):
//! - the **main** session, for reads and writes. The store's methods are synchronous (like the
//!   SQLite backend's): each runs on that runtime and the caller waits (at most [`OP_TIMEOUT`]).
//!   While it is down a write fails at once with an error naming the store (its URL without
//!   the password); the router keeps routing on its last table.
//! - the **listen** session: `LISTEN tenement_fleet`. Every write NOTIFYs that channel inside
//!   its transaction (so the others hear it once committed); a notification from another
//!   session, and every (re)connect, bumps the `changes` feed: the fleet re-reads the store.
//! - the **leader** session: `pg_try_advisory_lock` every `leader_retry` until it holds the
//!   lock, then holds it for as long as the session lives. PostgreSQL releases it when the
//!   session dies (a killed router, a lost connection): another router takes it at its next
//!   try. The `leader` feed says whether this router holds it.
//!
//! Every session speaks TLS as the URL's `sslmode` and `sslrootcert` say (`store/tls.rs`).
//!
//! The schema is versioned like SQLite's (`schema_version`, component `fleet`): migrations are
//! applied in one transaction under a transaction-scoped advisory lock, so routers that start
//! together never race. Tokens of member servers are stored as the SQLite backend stores them
//! (the router needs them to call those servers); protect the database accordingly.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client, Config, IsolationLevel, Row};

use super::tls::{split_url, MakeRustls, TlsParams};
use super::{
    domain_taken, server_exists, still_homed, tenant_exists, unknown_server, unknown_tenant,
    Copied, PlaceState, Placement, Server, Snapshot, Tenant,
};
use crate::db::DbError;
use crate::FleetError;

/// The channel every write notifies.
pub(crate) const CHANNEL: &str = "tenement_fleet";
/// The advisory lock of the leader ("tenement" in ASCII).
const LEADER_KEY: i64 = 0x7465_6e65_6d65_6e74;
/// The advisory lock the migrations run under.
const MIGRATE_KEY: i64 = LEADER_KEY + 1;
/// The longest a store call waits for PostgreSQL.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `ten fleet migrate-store`'s copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(300);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The migrations (component `fleet` in `schema_version`); migration N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &["
CREATE TABLE fleet_servers (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    domain     TEXT NOT NULL,
    region     TEXT,
    token      TEXT,
    created_ms BIGINT NOT NULL
);
CREATE TABLE fleet_tenants (
    id       TEXT PRIMARY KEY,
    domain   TEXT NOT NULL UNIQUE,
    server   TEXT NOT NULL REFERENCES fleet_servers(id) ON DELETE RESTRICT,
    process  TEXT NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX fleet_tenants_server ON fleet_tenants(server);
CREATE TABLE fleet_placements (
    tenant    TEXT PRIMARY KEY REFERENCES fleet_tenants(id) ON DELETE CASCADE,
    server    TEXT NOT NULL REFERENCES fleet_servers(id) ON DELETE CASCADE,
    spawned   BOOLEAN NOT NULL,
    state     TEXT NOT NULL,
    error     TEXT,
    placed_ms BIGINT NOT NULL
);
CREATE TABLE fleet_outages (
    server      TEXT PRIMARY KEY REFERENCES fleet_servers(id) ON DELETE CASCADE,
    since_ms    BIGINT NOT NULL,
    notified_ms BIGINT NOT NULL
);
"];

const SERVER_COLS: &str = "id, url, domain, region, token";
const TENANT_COLS: &str = "id, domain, server, process, instance";
const PLACEMENT_COLS: &str = "tenant, server, spawned, state, error, placed_ms";

pub struct PgStore {
    /// Dropped with `shutdown_background` (a runtime cannot be dropped in async code).
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
}

struct Shared {
    /// The URL without its password.
    name: String,
    config: Config,
    /// TLS as the URL's `sslmode` and `sslrootcert` say (`store/tls.rs`).
    tls: MakeRustls,
    /// The main session (None while it is down).
    main: tokio::sync::Mutex<Option<Client>>,
    /// Its backend pid: its own notifications are not news.
    main_pid: AtomicI32,
    /// Why the main session is down.
    down: Mutex<String>,
    changes: watch::Sender<u64>,
    leader: watch::Sender<bool>,
    feeds_started: AtomicBool,
}

/// A failure inside a call: PostgreSQL's, or a refusal of ours.
enum Fail {
    Pg(tokio_postgres::Error),
    Fleet(FleetError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<FleetError> for Fail {
    fn from(e: FleetError) -> Self {
        Fail::Fleet(e)
    }
}

type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, Fail>> + Send + 'a>>;

/// `postgres://user@host:port/db`: how messages name a store (never its password).
pub(crate) fn display_name(config: &Config) -> String {
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Unix(dir)) => format!("postgres://{user}@/{db}?host={}", dir.display()),
        Some(Host::Tcp(h)) if h.contains(':') => format!("postgres://{user}@[{h}]:{port}/{db}"),
        Some(Host::Tcp(h)) => format!("postgres://{user}@{h}:{port}/{db}"),
        None => format!("postgres://{user}@localhost:{port}/{db}"),
    }
}

/// The store's URL parsed, its `sslmode` set on the config, and its TLS parameters (an error
/// never repeats the URL: it may hold a password).
pub fn parse_url(url: &str) -> Result<(Config, TlsParams), FleetError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(FleetError::Invalid(
            "fleet store: expected a postgres:// URL".into(),
        ));
    }
    let (rest, tls) =
        split_url(url).map_err(|e| FleetError::Invalid(format!("fleet store: {e}")))?;
    let mut config = Config::from_str(&rest)
        .map_err(|e| FleetError::Invalid(format!("fleet store: not a PostgreSQL URL: {e}")))?;
    config.ssl_mode(tls.wire_mode());
    Ok((config, tls))
}

impl PgStore {
    /// Connects the main session (at most `timeout`) and brings the schema up to date; fails
    /// if PostgreSQL cannot be reached now. Later losses are retried in the background.
    pub(crate) fn connect(url: &str, timeout: Duration) -> Result<PgStore, FleetError> {
        let (mut config, tls) = parse_url(url)?;
        let tls =
            MakeRustls::new(&tls).map_err(|e| FleetError::Invalid(format!("fleet store: {e}")))?;
        config
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("tenement");
        let name = display_name(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-pg")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Store(format!("fleet store {name}: no runtime: {e}")))?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            config,
            tls,
            main: tokio::sync::Mutex::new(None),
            main_pid: AtomicI32::new(0),
            down: Mutex::new("not connected yet".into()),
            changes: watch::Sender::new(0),
            leader: watch::Sender::new(false),
            feeds_started: AtomicBool::new(false),
        });
        let store = PgStore {
            rt: Some(rt),
            shared: shared.clone(),
        };
        let first = store.block_on(timeout + OP_TIMEOUT, async move {
            let (mut client, conn) = shared.config.connect(shared.tls.clone()).await?;
            let driver = tokio::spawn(conn);
            migrate(&mut client, &shared.name).await?;
            install(&shared, client).await;
            Ok(driver)
        })?;
        let shared = store.shared.clone();
        store.spawn(main_session(shared, Some(first)));
        Ok(store)
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.rt {
            rt.spawn(f);
        }
    }

    /// Runs `f` on the store's runtime and waits for it (at most `limit`), from any thread.
    fn block_on<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T, Fail>> + Send + 'static,
    ) -> Result<T, FleetError> {
        let name = self.shared.name.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = &self.rt else {
            return Err(FleetError::Store(format!("fleet store {name}: closed")));
        };
        rt.spawn(async move {
            let r = match tokio::time::timeout(limit, f).await {
                Ok(r) => r,
                Err(_) => Err(Fail::Fleet(FleetError::Store(format!(
                    "fleet store {name}: no answer within {}s",
                    limit.as_secs()
                )))),
            };
            let _ = tx.send(r);
        });
        let name = &self.shared.name;
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Fleet(e))) => Err(e),
            Ok(Err(Fail::Pg(e))) => Err(pg_error(name, &e)),
            Err(_) => Err(FleetError::Store(format!("fleet store {name}: closed"))),
        }
    }

    /// Runs `f` on the main session; fails at once while it is down.
    fn call<T, F>(&self, f: F) -> Result<T, FleetError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> Call<'a, T> + Send + 'static,
    {
        self.call_within(OP_TIMEOUT, f)
    }

    /// [`PgStore::call`], waiting at most `limit`.
    fn call_within<T, F>(&self, limit: Duration, f: F) -> Result<T, FleetError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> Call<'a, T> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.block_on(limit, async move {
            let mut guard = shared.main.lock().await;
            match guard.as_mut() {
                Some(client) if !client.is_closed() => f(client).await,
                _ => {
                    let why = shared.down.lock().map(|d| d.clone()).unwrap_or_default();
                    Err(Fail::Fleet(FleetError::Store(format!(
                        "fleet store {} is unreachable ({why}); retrying in the background, \
                         routing continues on the last table",
                        shared.name
                    ))))
                }
            }
        })
    }

    /// Starts the listen and leader sessions (once) and returns their feeds.
    pub(crate) fn feeds(&self, leader_retry: Duration) -> super::Feeds {
        if !self.shared.feeds_started.swap(true, Ordering::SeqCst) {
            self.spawn(listen_session(self.shared.clone()));
            let retry = leader_retry.max(Duration::from_millis(50));
            self.spawn(leader_session(self.shared.clone(), retry));
        }
        super::Feeds {
            changes: self.shared.changes.subscribe(),
            leader: self.shared.leader.subscribe(),
        }
    }

    pub(crate) fn add_server(&self, s: &Server, now: i64) -> Result<(), FleetError> {
        let s = s.clone();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if let Some(old) = get_server(&tx, &s.id).await? {
                    return Err(server_exists(&old).into());
                }
                tx.execute(
                    "INSERT INTO fleet_servers (id, url, domain, region, token, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&s.id, &s.url, &s.domain, &s.region, &s.token, &now],
                )
                .await?;
                notify(&tx, "servers").await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn servers(&self) -> Result<Vec<Server>, FleetError> {
        self.call(|c| Box::pin(async move { servers(&*c).await }))
    }

    pub(crate) fn server(&self, id: &str) -> Result<Option<Server>, FleetError> {
        let id = id.to_string();
        self.call(move |c| Box::pin(async move { get_server(&*c, &id).await }))
    }

    pub(crate) fn created_ms(&self) -> Result<HashMap<String, i64>, FleetError> {
        self.call(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT id, created_ms FROM fleet_servers", &[])
                    .await?;
                let mut out = HashMap::new();
                for r in rows {
                    out.insert(r.try_get(0)?, r.try_get(1)?);
                }
                Ok(out)
            })
        })
    }

    pub(crate) fn remove_server(&self, id: &str) -> Result<(), FleetError> {
        let id = id.to_string();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if get_server(&tx, &id).await?.is_none() {
                    return Err(unknown_server(&id).into());
                }
                let homed: Vec<String> = tx
                    .query(
                        "SELECT id FROM fleet_tenants WHERE server = $1 ORDER BY id",
                        &[&id],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                if !homed.is_empty() {
                    return Err(still_homed(&id, &homed).into());
                }
                tx.execute("DELETE FROM fleet_servers WHERE id = $1", &[&id])
                    .await?;
                notify(&tx, "servers").await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn add_tenant(&self, t: &Tenant) -> Result<(), FleetError> {
        let t = t.clone();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if let Some(old) = get_tenant(&tx, &t.id).await? {
                    return Err(tenant_exists(&old).into());
                }
                let owner = tx
                    .query_opt(
                        "SELECT id FROM fleet_tenants WHERE domain = $1",
                        &[&t.domain],
                    )
                    .await?;
                if let Some(owner) = owner {
                    return Err(domain_taken(&t.domain, &owner.try_get::<_, String>(0)?).into());
                }
                if get_server(&tx, &t.server).await?.is_none() {
                    return Err(unknown_server(&t.server).into());
                }
                tx.execute(
                    "INSERT INTO fleet_tenants (id, domain, server, process, instance)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&t.id, &t.domain, &t.server, &t.process, &t.instance],
                )
                .await?;
                notify(&tx, "tenants").await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn tenants(&self) -> Result<Vec<Tenant>, FleetError> {
        self.call(|c| Box::pin(async move { tenants(&*c).await }))
    }

    pub(crate) fn tenant(&self, id: &str) -> Result<Option<Tenant>, FleetError> {
        let id = id.to_string();
        self.call(move |c| Box::pin(async move { get_tenant(&*c, &id).await }))
    }

    pub(crate) fn remove_tenant(&self, id: &str) -> Result<(), FleetError> {
        let id = id.to_string();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let n = tx
                    .execute("DELETE FROM fleet_tenants WHERE id = $1", &[&id])
                    .await?;
                if n == 0 {
                    return Err(unknown_tenant(&id).into());
                }
                notify(&tx, "tenants").await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn migrate_tenant(&self, id: &str, server: &str) -> Result<Tenant, FleetError> {
        let (id, server) = (id.to_string(), server.to_string());
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let Some(mut tenant) = get_tenant(&tx, &id).await? else {
                    return Err(unknown_tenant(&id).into());
                };
                if get_server(&tx, &server).await?.is_none() {
                    return Err(unknown_server(&server).into());
                }
                tx.execute(
                    "UPDATE fleet_tenants SET server = $2 WHERE id = $1",
                    &[&id, &server],
                )
                .await?;
                notify(&tx, "tenants").await?;
                tx.commit().await?;
                tenant.server = server;
                Ok(tenant)
            })
        })
    }

    /// Servers, tenants and placements in one read-only REPEATABLE READ transaction.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, FleetError> {
        self.call(|c| {
            Box::pin(async move {
                let tx = c
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let snap = Snapshot {
                    servers: servers(&tx).await?,
                    tenants: tenants(&tx).await?,
                    placements: placements(&tx).await?,
                };
                tx.commit().await?;
                Ok(snap)
            })
        })
    }

    pub(crate) fn placements(&self) -> Result<Vec<Placement>, FleetError> {
        self.call(|c| Box::pin(async move { placements(&*c).await }))
    }

    pub(crate) fn put_placement(&self, p: &Placement) -> Result<(), FleetError> {
        let p = p.clone();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute(
                    "INSERT INTO fleet_placements (tenant, server, spawned, state, error, placed_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant) DO UPDATE SET server = EXCLUDED.server,
                       spawned = EXCLUDED.spawned, state = EXCLUDED.state,
                       error = EXCLUDED.error, placed_ms = EXCLUDED.placed_ms",
                    &[
                        &p.tenant,
                        &p.server,
                        &p.spawned,
                        &p.state.as_str(),
                        &p.error,
                        &p.placed_ms,
                    ],
                )
                .await?;
                notify(&tx, "placements").await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn remove_placement(&self, tenant: &str) -> Result<(), FleetError> {
        let tenant = tenant.to_string();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let n = tx
                    .execute("DELETE FROM fleet_placements WHERE tenant = $1", &[&tenant])
                    .await?;
                if n > 0 {
                    notify(&tx, "placements").await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
    }

    pub(crate) fn claim_outage(&self, id: &str, since: i64, now: i64) -> Result<bool, FleetError> {
        let id = id.to_string();
        self.call(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "INSERT INTO fleet_outages (server, since_ms, notified_ms)
                         SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM fleet_servers WHERE id = $1)
                         ON CONFLICT (server) DO NOTHING",
                        &[&id, &since, &now],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
    }

    pub(crate) fn end_outages(&self, ids: &[String]) -> Result<(), FleetError> {
        let ids = ids.to_vec();
        self.call(move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM fleet_outages WHERE server = ANY($1)", &[&ids])
                    .await?;
                Ok(())
            })
        })
    }

    pub(crate) fn outages(&self) -> Result<Vec<String>, FleetError> {
        self.call(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT server FROM fleet_outages ORDER BY server", &[])
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?)
            })
        })
    }

    /// Replaces everything with `snap` in one transaction (see `FleetStore::copy_from`).
    pub(crate) fn replace_all(
        &self,
        snap: &Snapshot,
        created: &HashMap<String, i64>,
        force: bool,
    ) -> Result<Copied, FleetError> {
        let (snap, created) = (snap.clone(), created.clone());
        let name = self.shared.name.clone();
        self.call_within(COPY_TIMEOUT, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let count = |table: &'static str| {
                    let tx = &tx;
                    async move {
                        let r = tx
                            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                            .await?;
                        r.try_get::<_, i64>(0)
                    }
                };
                let (servers, tenants) = (count("fleet_servers").await?, count("fleet_tenants").await?);
                if servers + tenants > 0 && !force {
                    return Err(FleetError::Conflict(format!(
                        "the fleet store {name} is not empty ({servers} servers, {tenants} \
                         tenants): pass --force to replace its contents"
                    ))
                    .into());
                }
                tx.batch_execute(
                    "DELETE FROM fleet_placements; DELETE FROM fleet_outages;
                     DELETE FROM fleet_tenants; DELETE FROM fleet_servers;",
                )
                .await?;
                // One statement per table (arrays unnested), not one per row.
                let now = crate::now_ms();
                let col = |f: fn(&Server) -> Option<String>| -> Vec<Option<String>> {
                    snap.servers.iter().map(f).collect()
                };
                let at: Vec<i64> = snap
                    .servers
                    .iter()
                    .map(|s| created.get(&s.id).copied().unwrap_or(now))
                    .collect();
                tx.execute(
                    "INSERT INTO fleet_servers (id, url, domain, region, token, created_ms)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                          $5::text[], $6::bigint[])",
                    &[
                        &col(|s| Some(s.id.clone())),
                        &col(|s| Some(s.url.clone())),
                        &col(|s| Some(s.domain.clone())),
                        &col(|s| s.region.clone()),
                        &col(|s| s.token.clone()),
                        &at,
                    ],
                )
                .await?;
                let tcol = |f: fn(&Tenant) -> &String| -> Vec<&String> {
                    snap.tenants.iter().map(f).collect()
                };
                tx.execute(
                    "INSERT INTO fleet_tenants (id, domain, server, process, instance)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                          $5::text[])",
                    &[
                        &tcol(|t| &t.id),
                        &tcol(|t| &t.domain),
                        &tcol(|t| &t.server),
                        &tcol(|t| &t.process),
                        &tcol(|t| &t.instance),
                    ],
                )
                .await?;
                for p in &snap.placements {
                    tx.execute(
                        "INSERT INTO fleet_placements (tenant, server, spawned, state, error, placed_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&p.tenant, &p.server, &p.spawned, &p.state.as_str(), &p.error, &p.placed_ms],
                    )
                    .await?;
                }
                notify(&tx, "all").await?;
                tx.commit().await?;
                Ok(Copied {
                    servers: snap.servers.len(),
                    tenants: snap.tenants.len(),
                    placements: snap.placements.len(),
                })
            })
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL error, naming the store.
fn pg_error(name: &str, e: &tokio_postgres::Error) -> FleetError {
    if e.is_closed() {
        return FleetError::Store(format!(
            "fleet store {name} is unreachable (connection closed); retrying in the background, \
             routing continues on the last table"
        ));
    }
    // A unique or foreign key violation: another router won a race with this write.
    match e.code().map(|c| c.code()) {
        Some("23505") => FleetError::Conflict(format!("already exists (in {name}): {}", why(e))),
        Some("23503") => FleetError::Conflict(format!("still in use (in {name}): {}", why(e))),
        _ => FleetError::Store(format!("fleet store {name}: {}", why(e))),
    }
}

/// A PostgreSQL error with its causes: tokio-postgres shows only its kind ("db error",
/// "error performing TLS handshake"), the reason is in its sources (the server's message, the
/// certificate check). None of them holds the password.
fn why(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn notify(tx: &tokio_postgres::Transaction<'_>, what: &str) -> Result<(), Fail> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &what])
        .await?;
    Ok(())
}

/// Applies the missing migrations in one transaction under the migration lock.
async fn migrate(client: &mut Client, name: &str) -> Result<(), Fail> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            component TEXT PRIMARY KEY,
            version   BIGINT NOT NULL
        )",
    )
    .await?;
    let on_disk: i64 = match tx
        .query_opt(
            "SELECT version FROM schema_version WHERE component = 'fleet'",
            &[],
        )
        .await?
    {
        Some(r) => r.try_get(0)?,
        None => 0,
    };
    if on_disk > known {
        return Err(FleetError::Schema(DbError::TooNew {
            path: name.to_string(),
            component: "fleet",
            on_disk,
            known,
        })
        .into());
    }
    let start = usize::try_from(on_disk).unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(start) {
        tx.batch_execute(sql).await?;
    }
    tx.execute(
        "INSERT INTO schema_version (component, version) VALUES ('fleet', $1)
         ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
        &[&known],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn servers(c: &impl tokio_postgres::GenericClient) -> Result<Vec<Server>, Fail> {
    let rows = c
        .query(
            &format!("SELECT {SERVER_COLS} FROM fleet_servers ORDER BY id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(server_row).collect::<Result<_, _>>()?)
}

async fn tenants(c: &impl tokio_postgres::GenericClient) -> Result<Vec<Tenant>, Fail> {
    let rows = c
        .query(
            &format!("SELECT {TENANT_COLS} FROM fleet_tenants ORDER BY id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(tenant_row).collect::<Result<_, _>>()?)
}

async fn placements(c: &impl tokio_postgres::GenericClient) -> Result<Vec<Placement>, Fail> {
    let rows = c
        .query(
            &format!("SELECT {PLACEMENT_COLS} FROM fleet_placements ORDER BY tenant"),
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Placement {
            tenant: r.try_get(0)?,
            server: r.try_get(1)?,
            spawned: r.try_get(2)?,
            state: PlaceState::parse(r.try_get(3)?),
            error: r.try_get(4)?,
            placed_ms: r.try_get(5)?,
        });
    }
    Ok(out)
}

async fn get_server(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
) -> Result<Option<Server>, Fail> {
    let row = c
        .query_opt(
            &format!("SELECT {SERVER_COLS} FROM fleet_servers WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(server_row).transpose()?)
}

async fn get_tenant(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
) -> Result<Option<Tenant>, Fail> {
    let row = c
        .query_opt(
            &format!("SELECT {TENANT_COLS} FROM fleet_tenants WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(tenant_row).transpose()?)
}

fn server_row(r: &Row) -> Result<Server, tokio_postgres::Error> {
    Ok(Server {
        id: r.try_get(0)?,
        url: r.try_get(1)?,
        domain: r.try_get(2)?,
        region: r.try_get(3)?,
        token: r.try_get(4)?,
    })
}

fn tenant_row(r: &Row) -> Result<Tenant, tokio_postgres::Error> {
    Ok(Tenant {
        id: r.try_get(0)?,
        domain: r.try_get(1)?,
        server: r.try_get(2)?,
        process: r.try_get(3)?,
        instance: r.try_get(4)?,
    })
}

/// The next backoff: doubled, at most [`BACKOFF_MAX`].
fn next(backoff: Duration) -> Duration {
    (backoff * 2).min(BACKOFF_MAX)
}

fn set_down(shared: &Shared, why: String) {
    if let Ok(mut d) = shared.down.lock() {
        *d = why;
    }
}

/// Makes `client` the main session.
async fn install(shared: &Shared, client: Client) {
    if let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]).await {
        if let Ok(pid) = row.try_get::<_, i32>(0) {
            shared.main_pid.store(pid, Ordering::Relaxed);
        }
    }
    *shared.main.lock().await = Some(client);
}

type Driver = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// Keeps the main session up: `first` drives the session `connect` installed.
async fn main_session(shared: Arc<Shared>, mut first: Option<Driver>) {
    let mut backoff = BACKOFF_FIRST;
    let mut was_down = false;
    loop {
        let session = match first.take() {
            Some(driver) => Ok(driver),
            None => match shared.config.connect(shared.tls.clone()).await {
                Ok((client, conn)) => {
                    let driver = tokio::spawn(conn);
                    install(&shared, client).await;
                    Ok(driver)
                }
                Err(e) => Err(e),
            },
        };
        match session {
            Ok(driver) => {
                if was_down {
                    tracing::info!("fleet store {}: connected again", shared.name);
                }
                backoff = BACKOFF_FIRST;
                let why = match driver.await {
                    Ok(Ok(())) => "connection closed".to_string(),
                    Ok(Err(e)) => why(&e),
                    Err(e) => e.to_string(),
                };
                shared.main.lock().await.take();
                tracing::error!("fleet store {}: lost ({why}); reconnecting", shared.name);
                set_down(&shared, why);
                was_down = true;
            }
            Err(e) => {
                set_down(&shared, why(&e));
                was_down = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = next(backoff);
    }
}

/// A session whose notifications are forwarded: its client, and a receiver of the pids that
/// sent them (closed when the session ends).
async fn session_with_notifications(
    shared: &Shared,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<i32>), tokio_postgres::Error> {
    let (client, mut conn) = shared.config.connect(shared.tls.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.process_id()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    Ok((client, rx))
}

/// LISTENs on [`CHANNEL`]: another session's notification, and every (re)connect (something
/// may have been missed), bump `changes`.
async fn listen_session(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        match session_with_notifications(&shared).await {
            Ok((client, mut pids)) => {
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    backoff = BACKOFF_FIRST;
                    shared.changes.send_modify(|n| *n += 1);
                    while let Some(pid) = pids.recv().await {
                        if pid != shared.main_pid.load(Ordering::Relaxed) {
                            shared.changes.send_modify(|n| *n += 1);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("fleet store {}: listen: {}", shared.name, why(&e)),
        }
        tokio::time::sleep(backoff).await;
        backoff = next(backoff);
    }
}

/// Tries the leader lock every `retry`; holds it while the session lives.
async fn leader_session(shared: Arc<Shared>, retry: Duration) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        if let Ok((client, conn)) = shared.config.connect(shared.tls.clone()).await {
            backoff = BACKOFF_FIRST;
            let mut driver = tokio::spawn(conn);
            loop {
                let got = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_KEY])
                    .await
                    .and_then(|r| r.try_get::<_, bool>(0));
                match got {
                    Ok(true) => {
                        shared.leader.send_replace(true);
                        // Held until the session dies; a ping each `retry` notices a dead
                        // socket that was never closed.
                        loop {
                            tokio::select! {
                                _ = &mut driver => break,
                                _ = tokio::time::sleep(retry) => {
                                    let ping = tokio::time::timeout(
                                        OP_TIMEOUT,
                                        client.simple_query("SELECT 1"),
                                    );
                                    if !matches!(ping.await, Ok(Ok(_))) {
                                        break;
                                    }
                                }
                            }
                        }
                        shared.leader.send_replace(false);
                        break;
                    }
                    Ok(false) => {
                        tokio::select! {
                            _ = &mut driver => break,
                            _ = tokio::time::sleep(retry) => {}
                        }
                    }
                    Err(_) => break,
                }
            }
            driver.abort();
        }
        tokio::time::sleep(backoff).await;
        backoff = next(backoff);
    }
}
