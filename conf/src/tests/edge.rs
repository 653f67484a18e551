//! `[settings.tls]` (certs by SNI, http2), `[settings.acme]`, `access_log`, `upstream_http2`.

use std::path::PathBuf;

use super::{errors, ok};
use crate::{AccessLog, AcmeChallenge, LETS_ENCRYPT};

/// A temp dir with `a.pem`/`a.key` (PEM-looking) and `bad.pem` (not PEM); removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(tag: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("tenement-conf-edge-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        std::fs::write(dir.join("a.key"), "-----BEGIN EC PRIVATE KEY-----\nx\n").unwrap();
        std::fs::write(dir.join("bad.pem"), "not a certificate\n").unwrap();
        Files(dir)
    }

    fn text(&self, s: &str) -> String {
        s.replace("@D@", &self.0.to_string_lossy())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn certs_by_sni_and_http2_switch_parse() {
    let f = Files::new("certs");
    let c = ok(&f.text(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"@D@/a.pem\"\nkey = \"@D@/a.key\"\nhttp2 = false\ncerts = [{cert = \"@D@/a.pem\", key = \"@D@/a.key\"}, {cert = \"@D@/a.pem\", key = \"@D@/a.key\"}]\n",
    ));
    let tls = c.settings.tls.unwrap();
    assert!(!tls.http2);
    assert_eq!(tls.certs.len(), 2);
    assert_eq!(tls.certs[1].origin, "settings.tls.certs[1]");
    assert_eq!(tls.certs[1].cert, f.0.join("a.pem"));
    assert_eq!(tls.default.unwrap().origin, "settings.tls");
}

#[test]
fn a_bad_cert_entry_is_an_error_naming_the_entry() {
    let f = Files::new("bad");
    let e = errors(&f.text(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"@D@/a.pem\"\nkey = \"@D@/a.key\"\ncerts = [{cert = \"@D@/a.pem\", key = \"@D@/a.key\"}, {cert = \"@D@/bad.pem\", key = \"@D@/a.key\"}, {cert = \"@D@/a.pem\"}]\n",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("tenement.toml:5: settings.tls.certs[1].cert: expected a PEM certificate"),
        "{e:#?}"
    );
    assert!(
        e[1].contains("settings.tls.certs[2]") && e[1].contains("missing cert or key"),
        "{e:#?}"
    );
}

#[test]
fn acme_parses_with_defaults_and_makes_cert_optional() {
    let f = Files::new("acme");
    let c = ok(&f.text(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\n[settings.acme]\nemail = \"ops@example.com\"\n",
    ));
    let acme = c.settings.acme.unwrap();
    assert_eq!(acme.directory, LETS_ENCRYPT);
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert!(c.settings.tls.unwrap().default.is_none());
    let c = ok(&f.text(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\n[settings.acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nca_cert = \"@D@/a.pem\"\nchallenge = \"http-01\"\n",
    ));
    let acme = c.settings.acme.unwrap();
    assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(acme.ca_cert, Some(f.0.join("a.pem")));
    let c = ok(&f.text(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\n[settings.acme]\nchallenge = \"tls-alpn-01\"\n",
    ));
    assert_eq!(c.settings.acme.unwrap().challenge, AcmeChallenge::TlsAlpn01);
}

#[test]
fn acme_errors() {
    let e = errors("[settings.acme]\nemail = \"a@b.c\"\n");
    assert_eq!(
        e,
        vec!["tenement.toml:1: settings.acme: acme needs [settings.tls] (the listener its certificates are served on)"]
    );
    let e = errors(
        "[settings.tls]\nlisten = \"127.0.0.1:8443\"\n[settings.acme]\nchallenge = \"dns-01\"\n",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("expected \"http-01\" or \"tls-alpn-01\", got \"dns-01\""),
        "{e:#?}"
    );
    // Without ACME, cert and key stay required.
    let e = errors("[settings.tls]\nlisten = \"127.0.0.1:8443\"\n");
    assert_eq!(e.len(), 2, "{e:#?}");
}

#[test]
fn access_log_and_upstream_http2_parse() {
    assert_eq!(ok("").settings.access_log, AccessLog::Off);
    assert_eq!(
        ok("[settings]\naccess_log = \"stdout\"\n")
            .settings
            .access_log,
        AccessLog::Stdout
    );
    assert_eq!(
        ok("[settings]\naccess_log = \"logs/access.log\"\n")
            .settings
            .access_log,
        AccessLog::File(PathBuf::from("/srv/app/logs/access.log"))
    );
    let c = ok(
        "[process.grpc]\ncommand = \"x\"\nupstream_http2 = true\n[process.web]\ncommand = \"y\"\n",
    );
    assert!(c.process("grpc").unwrap().upstream_http2);
    assert!(!c.process("web").unwrap().upstream_http2);
}

#[test]
fn preserve_header_case_is_off_by_default_and_a_bool() {
    assert!(!ok("").settings.preserve_header_case);
    assert!(
        ok("[settings]\npreserve_header_case = true\n")
            .settings
            .preserve_header_case
    );
    assert_eq!(
        super::error("[settings]\npreserve_header_case = \"yes\"\n"),
        "tenement.toml:2: settings.preserve_header_case: expected true or false, got \"yes\""
    );
}
