//! `Config::load_data_dir`: only `[settings] data_dir`, resolved like `Config::load` does, while
//! the rest of the file may be invalid.

use std::path::{Path, PathBuf};

use crate::Config;

/// A config file with `text` in a fresh folder under the system temp dir; its path.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tenement-conf-data-dir-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tenement.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn folder(path: &Path) -> PathBuf {
    path.parent().unwrap().to_path_buf()
}

#[test]
fn data_dir_is_read_while_the_rest_is_invalid() {
    let path = file(
        "invalid",
        "[settings]\ndata_dir = \"./data/../state\"\nbogus = 1\n[process.api]\nhealth = 3\n",
    );
    assert!(Config::load(&path).is_err());
    assert_eq!(
        Config::load_data_dir(&path).unwrap(),
        folder(&path).join("state")
    );
}

#[test]
fn data_dir_resolves_like_load() {
    for (name, text) in [
        ("default", "[process.api]\ncommand = \"x\"\n"),
        ("relative", "[settings]\ndata_dir = \"d\"\n"),
        ("absolute", "[settings]\ndata_dir = \"/var/lib/ten\"\n"),
    ] {
        let path = file(name, text);
        assert_eq!(
            Config::load_data_dir(&path).unwrap(),
            Config::load(&path).unwrap().settings.data_dir,
            "{name}"
        );
    }
    let path = file("default2", "");
    assert_eq!(
        Config::load_data_dir(&path).unwrap(),
        folder(&path).join("tenement-data")
    );
}

#[test]
fn a_bad_data_dir_or_bad_toml_is_an_error() {
    let bad = Config::load_data_dir(&file("bad", "[settings]\ndata_dir = 3\n")).unwrap_err();
    assert!(bad.to_string().contains("settings.data_dir"), "{bad}");
    let toml = Config::load_data_dir(&file("toml", "[settings\n")).unwrap_err();
    assert!(toml.to_string().contains("invalid TOML"), "{toml}");
    let missing = Config::load_data_dir(Path::new("/nonexistent/tenement.toml")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}
