use super::*;

fn open() -> (tempfile::TempDir, FleetStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(&dir.path().join("data/tenement.db")).unwrap();
    (dir, store)
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
    };
    (kind.to_string(), e.to_string())
}

#[test]
fn servers_add_list_get_remove() {
    let (_dir, s) = open();
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

#[test]
fn server_input_is_validated() {
    let (_dir, s) = open();
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

#[test]
fn tenants_add_list_get_remove_and_unique_domains() {
    let (_dir, s) = open();
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

#[test]
fn tenant_input_is_validated() {
    let (_dir, s) = open();
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

#[test]
fn a_server_with_tenants_cannot_be_removed() {
    let (_dir, s) = open();
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

#[test]
fn migrate_switches_the_home_server() {
    let (_dir, s) = open();
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
    let conn = s.conn();
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
        old.execute_batch(super::SCHEMA_V1).unwrap();
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
    assert_eq!(version(&s.conn()), 2, "migration 2 (placements) applied");
    drop(s);
    let s = FleetStore::open(&path).unwrap();
    assert_eq!(version(&s.conn()), 2, "re-open is a no-op");
    s.conn()
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
            .contains("the fleet tables are at schema version 9, newer than this ten knows (2)"),
        "{e}"
    );
}

#[test]
fn placements_are_data_and_go_with_their_tenant_or_server() {
    let (_dir, s) = open();
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
