//! `ten config check|show`, the example configs, and flags overriding [settings].

use std::path::{Path, PathBuf};

use crate::util::{ten, Builder, DOMAIN};

fn examples() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("examples dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_example_config_checks() {
    let found = examples();
    assert!(found.len() >= 2, "examples: {found:?}");
    for p in found {
        let (status, out, err) = ten(
            &["config", "check", p.to_str().expect("utf8")],
            Path::new("/"),
        );
        assert!(status.success(), "{}: {out}{err}", p.display());
        assert!(out.contains(": ok:"), "{out}");
    }
}

#[test]
fn check_reports_every_error_with_line_and_path_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenement.toml");
    std::fs::write(
        &path,
        "[settings]\nhelth_check = \"1s\"\n\n[process.api]\ncommand = \"x\"\nhealth = \"health\"\nrestart = \"sometimes\"\n",
    )
    .expect("write");
    let (status, out, err) = ten(
        &["config", "check", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("tenement.toml:2: settings.helth_check: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("tenement.toml:6: process.api.health: expected a path starting with '/'"),
        "{err}"
    );
    assert!(
        err.contains("tenement.toml:7: process.api.restart"),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
    // A missing file is an error too, naming it.
    let (status, _, err) = ten(
        &["config", "check", "/nonexistent/tenement.toml"],
        dir.path(),
    );
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("/nonexistent/tenement.toml"), "{err}");
}

#[test]
fn config_is_found_by_flag_env_or_cwd() {
    let b = Builder::new().body("[process.api]\ncommand = \"@APP@\"\n");
    let text = b.config_text();
    let dir = b.dir().to_path_buf();
    std::fs::write(dir.join("tenement.toml"), &text).expect("write");
    // ./tenement.toml
    let (status, out, err) = ten(&["config", "show"], &dir);
    assert!(status.success(), "{err}");
    assert!(out.contains("[process.api]"), "{out}");
    assert!(
        out.contains("startup_timeout = \"10s\""),
        "defaults are shown: {out}"
    );
    // $TENEMENT_CONFIG
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(crate::util::ten_bin())
        .args(["config", "check"])
        .current_dir(other.path())
        .env("TENEMENT_CONFIG", dir.join("tenement.toml"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let (status, _, err) = ten(&["serve", "--port", "notaport"], Path::new("/"));
    assert_eq!(status.code(), Some(2), "{err}");
    let (status, _, _) = ten(&["frobnicate"], Path::new("/"));
    assert_eq!(status.code(), Some(2));
}

#[test]
fn serve_flags_override_settings() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start_with_args(&["--domain", "Other.Test"]);
    let r = ten.wait_status("a.api.other.test", "/", 200);
    assert_eq!(r.text(), "hello from api:a\n");
    assert_eq!(ten.get(&format!("a.api.{DOMAIN}"), "/").status, 404);
}

#[test]
fn serve_refuses_a_bad_config_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenement.toml");
    std::fs::write(
        &path,
        "[settings]\nlisten = \"nonsense\"\ndata_dir = \"d\"\n",
    )
    .expect("write");
    let (status, _, err) = ten(
        &["serve", "--config", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("settings.listen"), "{err}");
    assert!(
        !dir.path().join("d").exists(),
        "no data_dir created for a refused config"
    );
}
