//! SPEC §12 trust: `trusted_proxies` and the client address (X-Forwarded-*), the hardened
//! `admin_loopback_trusted`, API tokens (list, revoke, scopes) and the remote CLI.

use crate::util::{Builder, Resp, Ten, DOMAIN};

fn host() -> String {
    format!("a.api.{DOMAIN}")
}

fn server(settings: &str, plugins: &str) -> Ten {
    let ten = Builder::new()
        .settings(settings)
        .body(&format!(
            "[process.api]\ncommand = \"@APP@\"\nplugins = [{plugins}]\n[instances]\napi = [\"a\"]\n"
        ))
        .start();
    // Each poll as another (trusted-forwarded or not) client, so rate limits do not bite.
    for i in 0..200 {
        let xff = format!("X-Forwarded-For: 198.18.{}.{}\r\n", i / 200, i % 200);
        if get_with(&ten, "/", &xff).status == 200 {
            return ten;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("api:a never answered 200");
}

/// GET `path` on the test app with extra header lines.
fn get_with(ten: &Ten, path: &str, headers: &str) -> Resp {
    ten.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        host()
    ))
}

/// Regression (issue 18): a client's X-Forwarded-Proto/Host passed through on plain HTTP and
/// its X-Forwarded-For was extended, so it could pick the address ip_filter saw upstream.
#[test]
fn spoofed_forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let ten = server("", "{ kind = \"ip_filter\", deny = [\"6.6.6.6\"] }");
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n";
    let r = get_with(&ten, "/headers", spoof);
    assert_eq!(
        r.status,
        200,
        "the spoofed address is not the client: {}",
        r.text()
    );
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], host(), "{h}");
}

#[test]
fn a_trusted_proxy_is_honoured_and_plugins_key_on_the_right_most_untrusted_address() {
    let ten = server(
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "{ kind = \"ip_filter\", deny = [\"192.0.2.66\"] }, \
         { kind = \"rate_limit\", rps = 0.01, burst = 1 }",
    );
    // Its headers are kept, its address appended.
    let r = get_with(
        &ten,
        "/headers",
        "X-Forwarded-For: 1.1.1.1, 10.0.0.5\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer.example\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.5, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "outer.example", "{h}");
    // ip_filter: 10.0.0.5 is trusted, so 192.0.2.66 is the client; the left-most entry is not.
    let xff = |v: &str| format!("X-Forwarded-For: {v}\r\n");
    let r = get_with(&ten, "/", &xff("1.1.1.2, 192.0.2.66, 10.0.0.5"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        get_with(&ten, "/", &xff("192.0.2.66, 198.51.100.1")).status,
        200
    );
    // rate_limit keys on the same address: one client's burst is not another's.
    assert_eq!(get_with(&ten, "/", &xff("203.0.113.1")).status, 200);
    assert_eq!(get_with(&ten, "/", &xff("203.0.113.1")).status, 429);
    assert_eq!(
        get_with(&ten, "/", &xff("203.0.113.2, 10.9.9.9")).status,
        200
    );
}

/// Regression (review M1): on an `admin_loopback_trusted` listener any Host, Origin and
/// Content-Type passed, so a rebound or cross-site page could spawn instances; and on `[::]`
/// the v4-mapped loopback peer `::ffff:127.0.0.1` was not loopback.
#[test]
fn admin_loopback_trust_refuses_rebinding_cross_site_and_non_json_writes() {
    let ten = Builder::new()
        .settings("admin_listen = \"[::]:0\"\nadmin_loopback_trusted = true")
        .body("[process.api]\ncommand = \"@APP@\"\n")
        .start();
    let port = ten.admin.expect("admin listener").port();
    // Over IPv4 to a dual-stack listener: the peer is ::ffff:127.0.0.1.
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let send = |method: &str, host: &str, extra: &str, body: &str| {
        crate::util::request(
            admin,
            format!(
                "{method} /api/instances HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let local = format!("localhost:{port}");
    let spawn = r#"{"process":"api","id":"csrf"}"#;
    assert_eq!(
        send("GET", &local, "", "").status,
        200,
        "v4-mapped loopback is trusted"
    );
    // The review's repro: a rebound page (foreign Host) gets no free pass.
    let r = send(
        "POST",
        "attacker.example",
        "Origin: https://attacker.example\r\nContent-Type: text/plain\r\n",
        spawn,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(
        "POST",
        &local,
        "Origin: https://attacker.example\r\nContent-Type: application/json\r\n",
        spawn,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("cross-origin"), "{}", r.text());
    let r = send(
        "POST",
        &local,
        "Sec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\n",
        spawn,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send("POST", &local, "Content-Type: text/plain\r\n", spawn);
    assert_eq!(r.status, 415, "{}", r.text());
    // Nothing was spawned by the refused requests.
    let list = send("GET", &local, "", "").text();
    assert!(!list.contains("csrf"), "{list}");
    // Same origin, JSON: allowed.
    let same = format!("Origin: http://{local}\r\nContent-Type: application/json\r\n");
    let r = send("POST", &local, &same, spawn);
    assert_eq!(r.status, 201, "{}", r.text());
}
