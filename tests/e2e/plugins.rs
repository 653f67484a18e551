//! SPEC §8 plugins, end to end through the real proxy.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;

use crate::util::{Builder, Ten, DOMAIN};

fn server(plugins: &str) -> Ten {
    let ten = Builder::new()
        .body(&format!("[process.api]\ncommand = \"@APP@\"\nplugins = [{plugins}]\n[instances]\napi = [\"a\"]\n"))
        .start();
    ten
}

fn host() -> String {
    format!("a.api.{DOMAIN}")
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let ten = server("{ kind = \"rate_limit\", rps = 0.1, burst = 3 }");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(ten.get(&host(), "/").status);
    }
    // The first request may have been the harness's own readiness poll: at most 3 pass in all.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 3,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let r = ten.get(&host(), "/");
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1, "{retry}");
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn ip_filter_denies_with_403() {
    let ten = server("{ kind = \"ip_filter\", deny = [\"127.0.0.0/8\"] }");
    let r = ten.get(&host(), "/");
    assert_eq!(r.status, 403, "{}", r.text());
    let ten = server("{ kind = \"ip_filter\", allow = [\"127.0.0.1/32\", \"::1\"] }");
    assert_eq!(
        ten.wait_status(&host(), "/", 200).text(),
        "hello from api:a\n"
    );
}

#[test]
fn headers_are_set_and_removed_both_ways() {
    let ten = server(
        "{ kind = \"headers\", request_set = { \"x-env\" = \"prod\" }, request_remove = [\"x-secret\"], \
         response_set = { \"x-frame-options\" = \"DENY\" }, response_remove = [\"x-served-by\"] }",
    );
    ten.wait_status(&host(), "/", 200);
    let r = ten.request(&format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Secret: s\r\nConnection: close\r\n\r\n",
        host()
    ));
    let h = r.json();
    assert_eq!(h["x-env"], "prod");
    assert!(h.get("x-secret").is_none(), "{h}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-served-by"), None);
}

#[test]
fn basic_auth_needs_the_right_password() {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(b"s3cret", &salt)
        .expect("hash")
        .to_string();
    let ten = server(&format!(
        "{{ kind = \"basic_auth\", users = {{ alice = \"{hash}\" }} }}"
    ));
    let r = ten.wait_status(&host(), "/", 401);
    assert!(
        r.header("www-authenticate")
            .unwrap_or("")
            .starts_with("Basic"),
        "{:?}",
        r.headers
    );
    let auth = |user_pass: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass);
        ten.request(&format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {b64}\r\nConnection: close\r\n\r\n",
            host()
        ))
    };
    assert_eq!(auth("alice:wrong").status, 401);
    assert_eq!(auth("bob:s3cret").status, 401);
    let r = auth("alice:s3cret");
    assert_eq!(
        (r.status, r.text()),
        (200, "hello from api:a\n".to_string())
    );
    // Cached: the second time is the same answer.
    assert_eq!(auth("alice:s3cret").status, 200);
}

#[test]
fn max_body_plugin_limits_declared_and_chunked_bodies() {
    let ten = server("{ kind = \"max_body\", limit = \"100\" }");
    ten.wait_status(&host(), "/", 200);
    let body = "x".repeat(200);
    let r = ten.request(&format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 200\r\nConnection: close\r\n\r\n{body}",
        host()
    ));
    assert_eq!(r.status, 413, "{}", r.text());
    let r = ten.request(&format!("POST /echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nc8\r\n{body}\r\n0\r\n\r\n", host()));
    assert_eq!(r.status, 413, "{}", r.text());
    let r = ten.request(&format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        host()
    ));
    assert_eq!(r.text(), "hello");
}

#[test]
fn plugins_apply_in_order_and_only_to_their_process() {
    let ten = Builder::new()
        .body(
            "[process.api]\ncommand = \"@APP@\"\nplugins = [ { kind = \"ip_filter\", deny = [\"127.0.0.1/32\"] }, \
             { kind = \"headers\", response_set = { \"x-never\" = \"1\" } } ]\n\
             [process.web]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\nweb = [\"b\"]\n",
        )
        .start();
    assert_eq!(
        ten.wait_status(&format!("b.web.{DOMAIN}"), "/", 200)
            .header("x-never"),
        None
    );
    let r = ten.get(&host(), "/");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-never"),
        None,
        "the request stopped at the first plugin"
    );
}

#[test]
fn a_bad_argon2_hash_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenement.toml");
    std::fs::write(&path, "[process.api]\ncommand = \"x\"\nplugins = [ { kind = \"basic_auth\", users = { alice = \"$argon2id$v=19$m=19456,t=2,p=1$bad$bad\" } } ]\n").expect("write");
    let (status, _, err) = crate::util::ten(
        &["config", "check", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("process.api.plugins[0] basic_auth"), "{err}");
}
