//! The store's tests. The suite (`SUITE`) runs on both backends: SQLite always, PostgreSQL on
//! a private cluster (`crate::pgtest`, one database per test). Then tests of each backend.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::*;
use crate::pgtest::{PgCluster, PASSWORD};

fn open() -> (tempfile::TempDir, FleetStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(&dir.path().join("data/tenement.db")).unwrap();
    (dir, store)
}

fn sqlite(s: &FleetStore) -> &SqliteStore {
    match s {
        FleetStore::Sqlite(b) => b,
        FleetStore::Postgres(_) => panic!("not SQLite"),
    }
}

type Case = (&'static str, fn(&FleetStore));

/// The tests every backend passes.
const SUITE: &[Case] = &[
    ("servers_add_list_get_remove", servers_add_list_get_remove),
    ("server_input_is_validated", server_input_is_validated),
    (
        "tenants_add_list_get_remove_and_unique_domains",
        tenants_add_list_get_remove_and_unique_domains,
    ),
    ("tenant_input_is_validated", tenant_input_is_validated),
    (
        "a_server_with_tenants_cannot_be_removed",
        a_server_with_tenants_cannot_be_removed,
    ),
    (
        "migrate_switches_the_home_server",
        migrate_switches_the_home_server,
    ),
    (
        "placements_are_data_and_go_with_their_tenant_or_server",
        placements_are_data_and_go_with_their_tenant_or_server,
    ),
    (
        "an_outage_is_claimed_once_until_it_ends",
        an_outage_is_claimed_once_until_it_ends,
    ),
];

#[test]
fn the_suite_on_sqlite() {
    for (name, case) in SUITE {
        let (_dir, s) = open();
        eprintln!("sqlite: {name}");
        case(&s);
    }
}

#[test]
fn the_suite_on_postgres() {
    let pg = PgCluster::start().unwrap();
    for (i, (name, case)) in SUITE.iter().enumerate() {
        let url = pg.create_db(&format!("suite{i}")).unwrap();
        let s = FleetStore::open_conf(
            Some(&url),
            Path::new("/nonexistent"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(matches!(s, FleetStore::Postgres(_)));
        eprintln!("postgres: {name}");
        case(&s);
    }
}

fn server(id: &str, url: &str) -> NewServer {
    NewServer {
        id: id.into(),
        url: url.into(),
        ..NewServer::default()
    }
}

fn tenant(id: &str, domain: &str, server: &str) -> Tenant {
    Tenant {
        id: id.into(),
        domain: domain.into(),
        server: server.into(),
        process: "app".into(),
        instance: id.into(),
    }
}

fn msg<T: std::fmt::Debug>(r: Result<T, FleetError>) -> (String, String) {
    let e = r.unwrap_err();
    let kind = match &e {
        FleetError::Invalid(_) => "invalid",
        FleetError::NotFound(_) => "not found",
        FleetError::Conflict(_) => "conflict",
        FleetError::Db(_) => "db",
        FleetError::Schema(_) => "schema",
        FleetError::Store(_) => "store",
    };
    (kind.to_string(), e.to_string())
}

fn servers_add_list_get_remove(s: &FleetStore) {
    let a = s
        .add_server(&NewServer {
            region: Some("eu".into()),
            token: Some("t0k".into()),
            ..server("eu1", "HTTPS://EU1.Example.com:8443/")
        })
        .unwrap();
    assert_eq!(
        a,
        Server {
            id: "eu1".into(),
            url: "https://eu1.example.com:8443".into(),
            domain: "eu1.example.com".into(),
            region: Some("eu".into()),
            token: Some("t0k".into()),
        }
    );
    let b = s
        .add_server(&NewServer {
            domain: Some("US1.example.com".into()),
            region: Some("  ".into()),
            ..server("us1", "http://10.0.0.7:8080")
        })
        .unwrap();
    assert_eq!(b.domain, "us1.example.com");
    assert_eq!(b.region, None);
    assert_eq!(s.servers().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(s.server("eu1").unwrap(), a);
    assert_eq!(msg(s.server("nope")).0, "not found");

    let (kind, text) = msg(s.add_server(&server("eu1", "http://other")));
    assert_eq!(kind, "conflict");
    assert!(text.contains("server eu1 already exists"), "{text}");

    s.remove_server("eu1").unwrap();
    assert_eq!(s.servers().unwrap(), vec![b]);
    assert_eq!(msg(s.remove_server("eu1")).0, "not found");
}

fn server_input_is_validated(s: &FleetStore) {
    for (id, url) in [
        ("Bad", "http://x.com"),
        ("-x", "http://x.com"),
        ("", "http://x.com"),
        ("ok", "ftp://x.com"),
        ("ok", "x.com"),
        ("ok", "http://x.com/path"),
        ("ok", "http://x.com?q=1"),
        ("ok", "http://user:pw@x.com"),
        ("ok", "http://x.com:0"),
        ("ok", "http://x.com:99999"),
        ("ok", "http://x.com:"),
        ("ok", "http://"),
        ("ok", "http://bad_host.com"),
        ("ok", "http://[::1"),
    ] {
        assert_eq!(
            msg(s.add_server(&server(id, url))).0,
            "invalid",
            "{id} {url}"
        );
    }
    // An IPv6 host is fine, but it is no domain: one must be given.
    let (kind, text) = msg(s.add_server(&server("v6", "http://[::1]:8080")));
    assert_eq!(kind, "invalid");
    assert!(text.contains("pass a domain"), "{text}");
    let v6 = s
        .add_server(&NewServer {
            domain: Some("v6.example.com".into()),
            ..server("v6", "http://[::1]:8080")
        })
        .unwrap();
    assert_eq!(v6.url, "http://[::1]:8080");
    let (_, text) = msg(s.add_server(&NewServer {
        domain: Some("not a domain".into()),
        ..server("x", "http://x.com")
    }));
    assert!(text.starts_with("domain: "), "{text}");
    assert!(s.servers().unwrap().iter().all(|x| x.id == "v6"));
}

fn tenants_add_list_get_remove_and_unique_domains(s: &FleetStore) {
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    let t = s
        .add_tenant(&tenant("acme", "Acme.Example.COM", "s1"))
        .unwrap();
    assert_eq!(t.domain, "acme.example.com");
    let u = s
        .add_tenant(&tenant("beta", "beta.example.com", "s1"))
        .unwrap();
    assert_eq!(s.tenants().unwrap(), vec![t.clone(), u.clone()]);
    assert_eq!(s.tenant("acme").unwrap(), t);

    let (kind, text) = msg(s.add_tenant(&tenant("other", "ACME.example.com", "s1")));
    assert_eq!(kind, "conflict");
    assert_eq!(
        text,
        "domain acme.example.com is already used by tenant acme"
    );
    let (kind, text) = msg(s.add_tenant(&tenant("acme", "new.example.com", "s1")));
    assert_eq!(kind, "conflict");
    assert!(text.contains("tenant acme already exists"), "{text}");

    s.remove_tenant("acme").unwrap();
    assert_eq!(s.tenants().unwrap(), vec![u]);
    assert_eq!(msg(s.remove_tenant("acme")).0, "not found");
    assert_eq!(msg(s.tenant("acme")).0, "not found");
    // Its domain is free again.
    s.add_tenant(&tenant("acme2", "acme.example.com", "s1"))
        .unwrap();
}

fn tenant_input_is_validated(s: &FleetStore) {
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    let bad = [
        tenant("Acme", "a.com", "s1"),
        tenant("acme", "not a domain", "s1"),
        tenant("acme", "*.a.com", "s1"),
        Tenant {
            process: "App".into(),
            ..tenant("acme", "a.com", "s1")
        },
        Tenant {
            instance: "a:b".into(),
            ..tenant("acme", "a.com", "s1")
        },
    ];
    for t in bad {
        assert_eq!(msg(s.add_tenant(&t)).0, "invalid", "{t:?}");
    }
    let (kind, text) = msg(s.add_tenant(&tenant("acme", "a.com", "nope")));
    assert_eq!(kind, "not found");
    assert!(text.contains("unknown server \"nope\""), "{text}");
    assert!(s.tenants().unwrap().is_empty());
}

fn a_server_with_tenants_cannot_be_removed(s: &FleetStore) {
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    s.add_server(&server("s2", "http://s2.example.com"))
        .unwrap();
    s.add_tenant(&tenant("beta", "beta.com", "s1")).unwrap();
    s.add_tenant(&tenant("acme", "acme.com", "s1")).unwrap();
    let (kind, text) = msg(s.remove_server("s1"));
    assert_eq!(kind, "conflict");
    assert_eq!(
        text,
        "server s1 still has tenants: acme, beta — migrate or remove them first"
    );
    s.migrate_tenant("acme", "s2").unwrap();
    s.remove_tenant("beta").unwrap();
    s.remove_server("s1").unwrap();
    assert_eq!(s.tenant("acme").unwrap().server, "s2");
}

fn migrate_switches_the_home_server(s: &FleetStore) {
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    s.add_server(&server("s2", "http://s2.example.com"))
        .unwrap();
    s.add_tenant(&tenant("acme", "acme.com", "s1")).unwrap();
    let t = s.migrate_tenant("acme", "s2").unwrap();
    assert_eq!(t.server, "s2");
    assert_eq!(s.tenant("acme").unwrap(), t);
    let (kind, text) = msg(s.migrate_tenant("acme", "s9"));
    assert_eq!(kind, "not found");
    assert!(text.contains("s9"), "{text}");
    assert_eq!(s.tenant("acme").unwrap().server, "s2", "unchanged");
    assert_eq!(msg(s.migrate_tenant("nope", "s1")).0, "not found");
}

#[test]
fn foreign_keys_are_enforced_by_the_database() {
    let (dir, s) = open();
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    s.add_tenant(&tenant("acme", "acme.com", "s1")).unwrap();
    let conn = sqlite(&s).conn();
    let fk: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Bypassing the checks in Rust: SQLite itself refuses.
    assert!(conn
        .execute("DELETE FROM fleet_servers WHERE id = 's1'", [])
        .is_err());
    assert!(conn
        .execute(
            "INSERT INTO fleet_tenants VALUES ('x', 'x.com', 'ghost', 'app', 'x')",
            []
        )
        .is_err());
    assert!(conn
        .execute("UPDATE fleet_tenants SET server = 'ghost'", [])
        .is_err());
    drop(conn);
    drop(s);
    // Reopening the same file: data kept, tables not recreated.
    let s = FleetStore::open(&dir.path().join("data/tenement.db")).unwrap();
    assert_eq!(s.tenant("acme").unwrap().server, "s1");
}

#[test]
fn a_database_from_before_versions_opens_and_a_newer_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenement.db");
    {
        // What the code before schema versions created (migration 1 is that text).
        let old = Connection::open(&path).unwrap();
        old.execute_batch(super::sqlite::SCHEMA_V1).unwrap();
        old.execute(
            "INSERT INTO fleet_servers VALUES ('s1', 'http://s1.example.com', 's1.example.com', NULL, NULL, 0)",
            [],
        )
        .unwrap();
    }
    let s = FleetStore::open(&path).unwrap();
    assert_eq!(s.server("s1").unwrap().domain, "s1.example.com");
    let version = |c: &Connection| -> i64 {
        c.query_row(
            "SELECT version FROM schema_version WHERE component = 'fleet'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        version(&sqlite(&s).conn()),
        3,
        "migrations 2 (placements) and 3 (outages) applied"
    );
    drop(s);
    let s = FleetStore::open(&path).unwrap();
    assert_eq!(version(&sqlite(&s).conn()), 3, "re-open is a no-op");
    sqlite(&s)
        .conn()
        .execute(
            "UPDATE schema_version SET version = 9 WHERE component = 'fleet'",
            [],
        )
        .unwrap();
    drop(s);
    let e = FleetStore::open(&path).err().unwrap();
    assert!(matches!(e, FleetError::Schema(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("the fleet tables are at schema version 9, newer than this ten knows (3)"),
        "{e}"
    );
}

fn placements_are_data_and_go_with_their_tenant_or_server(s: &FleetStore) {
    s.add_server(&server("a", "http://a.example.com")).unwrap();
    s.add_server(&server("b", "http://b.example.com")).unwrap();
    s.add_tenant(&tenant("acme", "acme.com", "a")).unwrap();
    s.add_tenant(&tenant("globex", "globex.com", "a")).unwrap();
    let p = Placement {
        tenant: "acme".into(),
        server: "b".into(),
        spawned: true,
        state: PlaceState::Placing,
        error: None,
        placed_ms: 7,
    };
    s.put_placement(&p).unwrap();
    assert_eq!(s.placements().unwrap(), std::slice::from_ref(&p));
    let failed = Placement {
        state: PlaceState::Failed,
        error: Some("HTTP 500".into()),
        ..p.clone()
    };
    s.put_placement(&failed).unwrap();
    assert_eq!(s.placements().unwrap(), [failed], "replaced, not added");
    s.put_placement(&Placement {
        tenant: "globex".into(),
        state: PlaceState::Ready,
        ..p.clone()
    })
    .unwrap();
    s.remove_tenant("acme").unwrap();
    let left: Vec<_> = s
        .placements()
        .unwrap()
        .into_iter()
        .map(|p| p.tenant)
        .collect();
    assert_eq!(left, ["globex"], "gone with its tenant");
    s.remove_server("b").unwrap();
    assert!(s.placements().unwrap().is_empty(), "gone with its server");
    s.remove_placement("nobody").unwrap();
}

fn an_outage_is_claimed_once_until_it_ends(s: &FleetStore) {
    s.add_server(&server("a", "http://a.example.com")).unwrap();
    s.add_server(&server("b", "http://b.example.com")).unwrap();
    assert!(s.claim_outage("a", 10).unwrap(), "first claim");
    assert!(
        !s.claim_outage("a", 20).unwrap(),
        "claimed already (another router)"
    );
    assert!(s.claim_outage("b", 10).unwrap());
    assert!(!s.claim_outage("ghost", 10).unwrap(), "no such server");
    assert_eq!(s.outages().unwrap(), ["a", "b"]);
    s.end_outages(&["a".to_string()]).unwrap();
    assert_eq!(s.outages().unwrap(), ["b"]);
    assert!(
        s.claim_outage("a", 30).unwrap(),
        "the next outage is claimed anew"
    );
    s.remove_server("b").unwrap();
    assert_eq!(s.outages().unwrap(), ["a"], "gone with its server");
}

/// Polls `f` every 20 ms for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn connect(url: &str) -> FleetStore {
    FleetStore::open_conf(Some(url), Path::new("/nonexistent"), Duration::from_secs(5)).unwrap()
}

#[test]
fn postgres_migrations_race_safely_and_a_newer_schema_is_refused() {
    let pg = PgCluster::start().unwrap();
    let url = pg.create_db("race").unwrap();
    // Four routers starting at once: each applies or finds the schema, none fails.
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || connect(&url))
        })
        .collect();
    for t in opened {
        t.join().unwrap();
    }
    assert_eq!(
        pg.psql(
            "race",
            "SELECT version FROM schema_version WHERE component = 'fleet'"
        )
        .unwrap(),
        "1"
    );
    pg.psql("race", "UPDATE schema_version SET version = 9")
        .unwrap();
    let e = FleetStore::open_conf(Some(&url), Path::new("/x"), Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(matches!(e, FleetError::Schema(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("the fleet tables are at schema version 9, newer than this ten knows (1)"),
        "{e}"
    );
    assert!(!e.to_string().contains(PASSWORD), "{e}");
}

#[test]
fn postgres_writes_notify_the_other_routers_and_one_leads() {
    let pg = PgCluster::start().unwrap();
    let url = pg.create_db("feeds").unwrap();
    let (a, b) = (connect(&url), connect(&url));
    let retry = Duration::from_millis(100);
    let (fa, mut fb) = (a.feeds(retry).unwrap(), b.feeds(retry).unwrap());
    // The first bump of each: its listen session connected.
    assert!(eventually(Duration::from_secs(10), || *fb.changes.borrow() >= 1));
    let seen = *fb.changes.borrow_and_update();
    // A's write reaches B's feed; B's own reads and writes do not bump it.
    a.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || *fb.changes.borrow() > seen),
        "B heard A's write within 1 s"
    );
    assert_eq!(b.servers().unwrap().len(), 1);
    // Exactly one of them leads.
    assert!(eventually(Duration::from_secs(10), || {
        *fa.leader.borrow() != *fb.leader.borrow()
    }));
    let (leader, follower) = if *fa.leader.borrow() {
        (a, fb)
    } else {
        (b, fa)
    };
    drop(leader);
    assert!(
        eventually(Duration::from_secs(10), || *follower.leader.borrow()),
        "the other router takes the lead once the leader's session is gone"
    );
}

#[test]
fn postgres_down_writes_fail_naming_the_store_then_recover() {
    let mut pg = PgCluster::start().unwrap();
    let url = pg.create_db("down").unwrap();
    let s = connect(&url);
    let name = s.name();
    assert_eq!(
        name,
        format!("postgres://ten@127.0.0.1:{}/down", pg.port()),
        "the URL without its password"
    );
    s.add_server(&server("s1", "http://s1.example.com"))
        .unwrap();
    pg.stop().unwrap();
    let e = s
        .add_server(&server("s2", "http://s2.example.com"))
        .unwrap_err();
    assert!(matches!(e, FleetError::Store(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&name), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(s.snapshot().is_err());
    pg.resume().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || s
            .add_server(&server("s2", "http://s2.example.com"))
            .is_ok()),
        "the store reconnects by itself"
    );
    assert_eq!(s.servers().unwrap().len(), 2);
}

#[test]
fn a_sqlite_fleet_is_copied_into_an_empty_postgres_store_only() {
    let (_dir, from) = open();
    from.add_server(&NewServer {
        token: Some("t0k".into()),
        region: Some("eu".into()),
        ..server("a", "http://a.example.com")
    })
    .unwrap();
    from.add_server(&server("b", "http://b.example.com"))
        .unwrap();
    from.add_tenant(&tenant("acme", "acme.com", "a")).unwrap();
    let p = Placement {
        tenant: "acme".into(),
        server: "b".into(),
        spawned: true,
        state: PlaceState::Ready,
        error: None,
        placed_ms: 7,
    };
    from.put_placement(&p).unwrap();
    let pg = PgCluster::start().unwrap();
    let to = connect(&pg.create_db("copy").unwrap());
    let n = to.copy_from(&from, false).unwrap();
    assert_eq!(
        n,
        Copied {
            servers: 2,
            tenants: 1,
            placements: 1
        }
    );
    assert_eq!(
        to.snapshot().unwrap(),
        from.snapshot().unwrap(),
        "tokens included"
    );
    assert_eq!(to.server("a").unwrap().token.as_deref(), Some("t0k"));
    let (kind, text) = msg(to.copy_from(&from, false));
    assert_eq!(kind, "conflict");
    assert!(
        text.contains("is not empty (2 servers, 1 tenants)"),
        "{text}"
    );
    from.remove_placement("acme").unwrap();
    to.copy_from(&from, true).unwrap();
    assert!(to.placements().unwrap().is_empty(), "--force replaces");
}

/// A CA named `ca_name` and a server certificate it signed for `names`: (CA PEM, certificate
/// PEM, key PEM).
fn tls_files(ca_name: &str, names: &[&str]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn postgres_over_tls_as_sslmode_says() {
    // A TLS-only cluster (pg_hba `hostssl`) whose certificate names `localhost` only.
    let (ca, cert, key) = tls_files("test CA", &["localhost"]);
    let pg = PgCluster::start_tls(&cert, &key, true).unwrap();
    pg.create_db("tls").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (other_ca, _, _) = tls_files("another CA", &["localhost"]);
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other_ca).unwrap();
    let port = pg.port();
    let url =
        |host: &str, query: &str| format!("postgres://ten:{PASSWORD}@{host}:{port}/tls?{query}");
    let ca_q = format!("sslrootcert={}", ca_file.display());
    // The name the certificate holds, reached at 127.0.0.1 (hostaddr: no resolver involved).
    let by_name = |query: &str| url("localhost", &format!("hostaddr=127.0.0.1&{query}"));
    let works = |url: &str, what: &str| {
        let s = FleetStore::open_conf(Some(url), Path::new("/nonexistent"), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        s.add_server(&server(what, "http://a.example.com")).unwrap();
        assert!(s.server(what).is_ok(), "{what}");
    };
    works(
        &by_name(&format!("sslmode=verify-full&{ca_q}")),
        "verify-full",
    );
    works(
        &url("127.0.0.1", &format!("sslmode=verify-ca&{ca_q}")),
        "verify-ca",
    );
    works(&url("127.0.0.1", "sslmode=require"), "require");
    works(&url("127.0.0.1", ""), "prefer-default");
    // prefer (the default) and require with a root file check the chain against it.
    works(&url("127.0.0.1", &ca_q), "prefer-ca");
    works(
        &url("127.0.0.1", &format!("sslmode=require&{ca_q}")),
        "require-ca",
    );
    let fails = |url: &str| -> String {
        let (kind, text) = msg(FleetStore::open_conf(
            Some(url),
            Path::new("/nonexistent"),
            Duration::from_secs(5),
        )
        .map(|s| s.name()));
        assert_eq!(kind, "store", "{text}");
        assert!(!text.contains(PASSWORD), "the password shows: {text}");
        assert!(text.contains("postgres://ten@"), "names the store: {text}");
        text
    };
    // Without the CA (the Mozilla roots), or with another CA: the issuer is unknown.
    let text = fails(&by_name("sslmode=verify-full"));
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    let text = fails(&by_name(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        other_file.display()
    )));
    assert!(text.contains("UnknownIssuer"), "{text}");
    // The right CA, another name: verify-full refuses (verify-ca took it above).
    let text = fails(&url("127.0.0.1", &format!("sslmode=verify-full&{ca_q}")));
    assert!(
        text.contains("not valid for name") && text.contains("127.0.0.1"),
        "{text}"
    );
    // require with a root file checks the chain, as libpq does.
    let text = fails(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other_file.display()),
    ));
    assert!(text.contains("UnknownIssuer"), "{text}");
    let text = fails(&url(
        "127.0.0.1",
        &format!("sslmode=prefer&sslrootcert={}", other_file.display()),
    ));
    assert!(text.contains("UnknownIssuer"), "{text}");
    // The public roots with no name checked would take any publicly issued certificate:
    // verify-ca without a root file, and any mode but verify-full with sslrootcert=system,
    // are configuration errors (as libpq's).
    for (query, mode) in [
        ("sslmode=verify-ca", "verify-ca"),
        ("sslmode=verify-ca&sslrootcert=system", "verify-ca"),
        ("sslmode=require&sslrootcert=system", "require"),
        ("sslrootcert=system", "prefer"),
    ] {
        let (kind, text) = msg(FleetStore::open_conf(
            Some(&url("127.0.0.1", query)),
            Path::new("/nonexistent"),
            Duration::from_secs(5),
        )
        .map(|s| s.name()));
        assert_eq!(kind, "invalid", "{query}: {text}");
        assert!(
            text.contains(&format!("sslmode={mode}")) && text.contains("sslrootcert"),
            "{query}: {text}"
        );
        assert!(!text.contains(PASSWORD), "{text}");
    }
    // A server that takes TLS sessions only refuses a plain one, and says why.
    let text = fails(&url("127.0.0.1", "sslmode=disable"));
    assert!(
        text.contains("no pg_hba.conf entry") && text.contains("no encryption"),
        "{text}"
    );
    // A root file that cannot be read is a configuration error naming it.
    let (kind, text) = msg(FleetStore::open_conf(
        Some(&url(
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )),
        Path::new("/nonexistent"),
        Duration::from_secs(5),
    )
    .map(|s| s.name()));
    assert_eq!(kind, "invalid", "{text}");
    assert!(text.contains("sslrootcert /nonexistent/ca.pem"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
