//! Shipping `ten` (issue 19): `cargo install --path .` gets `ten` alone, the release profile
//! carries no debug info (benchmarks use `profiling`), the hidden `ten completions` / `ten man`
//! come from the CLI, and the Debian package's config, unit and assets agree with each other.
//! Installing the .deb itself is `make deb-test` (packaging/deb-test.sh), run by CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::ten;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest() -> toml_edit::DocumentMut {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    text.parse().expect("Cargo.toml parses")
}

/// The binary targets of a workspace package, as `cargo install --path` would see them.
fn bins_of(meta: &serde_json::Value, package: &str) -> Vec<String> {
    let pkg = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package} in the workspace"));
    let mut bins: Vec<String> = pkg["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    bins.sort();
    bins
}

#[test]
fn cargo_install_gets_ten_only_and_the_test_binaries_live_in_their_own_package() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    // `cargo install --path .` installs every binary of the root package.
    assert_eq!(bins_of(&meta, "tenement"), ["ten"]);
    assert_eq!(
        bins_of(&meta, "tenement-testbins"),
        ["ten-bench-pingora", "ten-testapp"]
    );
    let testbins = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "tenement-testbins")
        .expect("tenement-testbins");
    assert_eq!(
        testbins["publish"],
        serde_json::json!([]),
        "publish = false"
    );
    // The e2e tests found it next to themselves (util::app_bin), so `make test` built it.
    assert!(Path::new(crate::util::app_bin()).is_file());
}

#[test]
fn release_has_no_debug_info_and_profiling_keeps_it() {
    let m = manifest();
    let release = &m["profile"]["release"];
    let debug = release.get("debug").map(|d| d.to_string());
    assert!(
        matches!(
            debug.as_deref().map(str::trim),
            None | Some("0" | "false" | "\"none\"")
        ),
        "profile.release.debug = {debug:?}: the shipped binary was 116 MB with debug info"
    );
    assert_eq!(
        release["strip"].as_str(),
        Some("debuginfo"),
        "std's debug info too"
    );
    assert_eq!(release["lto"].as_str(), Some("thin"));
    let profiling = &m["profile"]["profiling"];
    assert_eq!(profiling["inherits"].as_str(), Some("release"));
    assert_eq!(profiling["debug"].as_integer(), Some(1));
    assert_eq!(
        profiling["strip"].as_str(),
        Some("none"),
        "callgrind needs names"
    );
    // The benchmarks build and read that profile.
    let make = std::fs::read_to_string(root().join("Makefile")).expect("Makefile");
    assert!(
        make.contains("build --profile profiling --bins"),
        "make bench"
    );
    let harness =
        std::fs::read_to_string(root().join("benches/harness/__main__.py")).expect("harness");
    assert!(harness.contains("\"profiling\""), "benches/harness");
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let dir = Path::new("/");
    // Every visible command appears in each; the generators themselves stay out of --help.
    let (status, help, _) = ten(&["--help"], dir);
    assert!(status.success());
    assert!(
        !help.contains("completions") && !help.contains("\n  man"),
        "{help}"
    );
    for (shell, head) in [
        ("bash", "_ten()"),
        ("zsh", "#compdef ten"),
        ("fish", "complete -c ten"),
    ] {
        let (status, out, err) = ten(&["completions", shell], dir);
        assert!(status.success(), "{shell}: {err}");
        assert!(out.contains(head), "{shell}: {out}");
        for cmd in ["serve", "deploy", "token-gen", "tenant"] {
            assert!(out.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let (status, _, err) = ten(&["completions", "tcsh"], dir);
    assert_eq!(status.code(), Some(2), "{err}");
    let (status, man, err) = ten(&["man"], dir);
    assert!(status.success(), "{err}");
    assert!(man.contains(".TH ten 1"), "{man}");
    for cmd in ["serve", "deploy", "logs"] {
        assert!(man.contains(cmd), "man page lacks {cmd}");
    }
}

fn unit_value(unit: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    unit.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("tenement.service has no {key}="))
        .to_string()
}

#[test]
fn the_packaged_config_checks_and_agrees_with_the_unit_and_the_package() {
    let pkg = root().join("packaging");
    let config = pkg.join("tenement.toml");
    let (status, out, err) = ten(
        &["config", "check", config.to_str().expect("utf8")],
        Path::new("/"),
    );
    assert!(status.success(), "{out}{err}");
    let text = std::fs::read_to_string(&config).expect("tenement.toml");
    assert!(text.contains("data_dir = \"/var/lib/tenement\""), "{text}");

    let unit = std::fs::read_to_string(pkg.join("tenement.service")).expect("unit");
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        "/usr/bin/ten serve --config /etc/tenement/tenement.toml"
    );
    // data_dir is the unit's StateDirectory, owned by the unit's user.
    assert_eq!(unit_value(&unit, "StateDirectory"), "tenement");
    assert_eq!(unit_value(&unit, "User"), "tenement");
    // ten drains and stops its instances itself: SIGTERM to ten alone.
    assert_eq!(unit_value(&unit, "KillMode"), "mixed");
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    assert_eq!(unit_value(&unit, "LimitNOFILE"), "65536");

    // cargo-deb packs these where the unit and the docs say.
    let m = manifest();
    let deb = &m["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("asset");
            let s = |i: usize| a.get(i).and_then(|v| v.as_str()).expect("str").to_string();
            (s(0), s(1))
        })
        .collect();
    let dest = |src: &str| {
        assets
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{src} is not packaged"))
    };
    assert_eq!(dest("target/release/ten"), "usr/bin/");
    assert_eq!(
        dest("packaging/tenement.toml"),
        "etc/tenement/tenement.toml"
    );
    assert_eq!(
        dest("packaging/tenement.service"),
        "usr/lib/systemd/system/tenement.service"
    );
    // The maintainer scripts exist and are executable (dpkg runs them).
    for script in ["postinst", "prerm", "postrm"] {
        let p: PathBuf = pkg.join("debian").join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&p).expect("script").permissions(),
        );
        assert!(mode & 0o111 != 0, "{} not executable", p.display());
    }
}
