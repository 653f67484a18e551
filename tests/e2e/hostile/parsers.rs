//! See hostile.rs.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};

use crate::util::{Builder, Ten};

const SITE: &str = "example.test";

/// Review M3: `site` serves `example.test`, `admin` (the same app behind basic_auth) its
/// `/admin`, and `/api` strips its prefix on the way to `site`.
fn admin_behind_basic_auth() -> Ten {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(b"s3cret", &salt)
        .expect("hash")
        .to_string();
    let ten = Builder::new()
        .body(&format!(
            "[process.site]\ncommand = \"@APP@\"\n\
             [process.admin]\ncommand = \"@APP@\"\n\
             plugins = [{{ kind = \"basic_auth\", users = {{ alice = \"{hash}\" }} }}]\n\
             [instances]\nsite = [\"a\"]\nadmin = [\"a\"]\n\
             [routes]\n\"{SITE}\" = \"site\"\n\"{SITE}/admin\" = \"admin\"\n\
             \"{SITE}/api\" = {{ to = \"site\", strip_prefix = true }}\n"
        ))
        .start();
    ten.wait_status(SITE, "/", 200);
    ten.wait_status(SITE, "/admin", 401);
    ten
}

#[test]
fn encoded_and_dotted_spellings_of_a_protected_prefix_need_its_password_review_m3() {
    let ten = admin_behind_basic_auth();
    // Raw requests: an HTTP client would normalise these paths itself.
    for path in [
        "/admin",
        "/%61dmin",
        "/%61%64%6d%69%6e/x",
        "/x/../admin",
        "//admin",
        "/./admin/",
        "/x/%2e%2e/admin?q=1",
    ] {
        let r = ten.get(SITE, path);
        assert_eq!(
            (r.status, r.header("x-served-by")),
            (401, None),
            "{path} reached an instance without the password: {}",
            r.text()
        );
    }
    // What basic_auth does not cover still goes to the site, as it came: the test app does
    // not resolve dot segments, so it does not find `/x/../headers` (it would `/headers`).
    let r = ten.get(SITE, "/x/../headers");
    assert_eq!(
        (r.status, r.header("x-served-by")),
        (404, Some("site:a")),
        "{}",
        r.text()
    );
    assert_eq!(ten.get(SITE, "/headers").json()["_path"], "/headers");
}

#[test]
fn a_stripped_prefix_is_cut_from_the_normalised_path() {
    let ten = admin_behind_basic_auth();
    for (path, sent) in [
        ("/api/headers?x=1", "/headers?x=1"),
        ("/x/../api/headers?x=1", "/headers?x=1"),
        ("/%61pi//headers", "/headers"),
    ] {
        let r = ten.get(SITE, path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["_path"], sent, "{path}");
    }
}

#[test]
fn a_path_above_the_root_is_answered_400() {
    let ten = admin_behind_basic_auth();
    for path in [
        "/../admin",
        "/a/../../admin",
        "/%2e%2e/admin",
        "/..",
        "//../x",
    ] {
        let r = ten.get(SITE, path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("above the root"), "{path}: {}", r.text());
    }
}

/// Run `ten ARGS` against `ten` with its stdout a pipe whose reader has already gone (as in
/// `ten ps --json | head -1` once head has its line): (status, stderr).
fn into_a_closed_pipe(ten: &Ten, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(crate::util::ten_bin())
        .arg("--data-dir")
        .arg(ten.data_dir())
        .args(args)
        .env_remove("TENEMENT_CONFIG")
        .env_remove("TENEMENT_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ten");
    let status = crate::util::wait_bounded(&mut child, std::time::Duration::from_secs(60))
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("ten {args:?} still running");
        });
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status, err)
}

#[test]
fn client_commands_end_quietly_when_their_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{}", crate::util::DOMAIN), "/", 200);
    for args in [
        &["ps", "--json"][..],
        &["ps"],
        &["logs"],
        &["logs", "--json"],
    ] {
        // Each has something to print.
        let (status, out, err) = ten.cli(args);
        assert!(status.success() && !out.is_empty(), "{args:?}: {err}");
        let (status, err) = into_a_closed_pipe(&ten, args);
        assert!(!err.contains("panicked"), "ten {args:?}: {err}");
        assert!(
            status.success() || status.signal() == Some(nix::libc::SIGPIPE),
            "ten {args:?}: {status:?} {err}"
        );
    }
}

#[test]
fn ten_logs_shows_control_characters_escaped_review_l9() {
    // The test app writes its name in every request's log line: ESC and BEL sequences that
    // would set the terminal's title and colour it red.
    let ten = Builder::new()
        .body(
            "[process.esc]\ncommand = \"@APP@ --name 'e\\u001b]0;pwned\\u0007\\u001b[31mred'\"\n\
             [instances]\nesc = [\"a\"]\n",
        )
        .start();
    // (ten answers 502: the name in the app's X-Served-By header is not a valid value.)
    let host = format!("a.esc.{}", crate::util::DOMAIN);
    let mut out = String::new();
    for _ in 0..100 {
        ten.get(&host, "/");
        let (status, o, err) = ten.cli(&["logs", "esc"]);
        assert!(status.success(), "{err}");
        out = o;
        if out.contains("GET / 200") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        out.contains("e\\x1b]0;pwned\\x07\\x1b[31mred GET / 200"),
        "{out:?}"
    );
    assert!(!out.contains(['\x1b', '\x07']), "{out:?}");
    // JSON stays JSON: escaped by the encoder, the raw text inside.
    let (status, json, err) = ten.cli(&["logs", "esc", "--json"]);
    assert!(status.success(), "{err}");
    assert!(!json.contains(['\x1b', '\x07']), "{json:?}");
    let line = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["message"].as_str().unwrap_or("").contains("GET / 200"))
        .expect("the request's line");
    assert!(line["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("e\x1b]0;pwned\x07\x1b[31mred"));
}
