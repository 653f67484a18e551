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
