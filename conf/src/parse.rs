//! Entry points: find, read and parse a config file; command-line overrides.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use toml_edit::ImDocument;

use crate::error::{ConfigError, ConfigErrors, Cx};
use crate::tree::{self, Lines, Tbl};
use crate::{process, routes, settings, Config};

const TOP_KEYS: &[&str] = &[
    "settings",
    "process",
    "service",
    "routes",
    "instances",
    "fleet",
];

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "TENEMENT_CONFIG";

/// The config file to use: `explicit` (`--config PATH`), else `$TENEMENT_CONFIG` (when set and
/// not empty), else `tenement.toml` in the current folder.
pub fn find_config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("tenement.toml"),
    }
}

impl Config {
    /// Read and parse the file at `path`. Relative paths inside it are resolved against its
    /// folder; `source` is set to the file's absolute path. An unreadable file is one error.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (file, text, base_dir) = read(path)?;
        let mut config = Config::parse(&text, &file, base_dir)?;
        config.source = Some(absolute(path));
        Ok(config)
    }

    /// Only `[settings] data_dir` of the file at `path`, resolved as [`Config::load`] resolves
    /// it (against the file's folder; default `tenement-data` beside it). Nothing else in the
    /// file is validated: a client of a running `ten serve` needs only its control socket,
    /// and must find it while the file on disk has errors. Unreadable or unparsable TOML, or a
    /// bad `data_dir`, are errors.
    pub fn load_data_dir(path: &Path) -> Result<PathBuf, ConfigErrors> {
        let (file, text, base_dir) = read(path)?;
        let lines = Lines::new(&text);
        let doc = parse_toml(&text, &file, &lines)?;
        let entries = tree::table_entries(doc.as_table(), &lines);
        let top = Tbl {
            path: String::new(),
            line: Some(1),
            entries: &entries,
        };
        let mut cx = Cx::new(&file, absolute(base_dir));
        let dir = settings::parse_data_dir(&mut cx, top.get("settings"));
        cx.finish(dir)
    }

    /// Parse and validate `text`. `file_name` is used in messages only; relative paths
    /// (`data_dir`, TLS files, `directory`) are resolved against `base_dir` (made absolute
    /// against the current folder when relative). Every error in the file is reported at once,
    /// sorted by line.
    pub fn parse(text: &str, file_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let lines = Lines::new(text);
        let doc = parse_toml(text, file_name, &lines)?;
        let entries = tree::table_entries(doc.as_table(), &lines);
        let top = Tbl {
            path: String::new(),
            line: Some(1),
            entries: &entries,
        };
        let mut cx = Cx::new(file_name, absolute(base_dir));
        top.check_keys(&mut cx, TOP_KEYS);
        let settings = settings::parse_settings(&mut cx, top.get("settings"));
        let processes = process::parse_processes(&mut cx, &top, &settings);
        let routes = routes::parse_routes(&mut cx, top.get("routes"), &processes, &settings.domain);
        let instances = routes::parse_instances(&mut cx, top.get("instances"), &processes);
        let fleet = top.get("fleet").map(|f| settings::parse_fleet(&mut cx, &f));
        cx.finish(Config {
            source: None,
            settings,
            processes,
            routes: routes.into(),
            instances,
            fleet,
        })
    }

    /// Apply `ten serve --port N --domain D`.
    ///
    /// `port` replaces the port of the *first* `settings.listen` entry only (other listeners,
    /// `admin_listen` and TLS keep theirs); with no listener at all it sets `0.0.0.0:N`.
    /// `domain` replaces `settings.domain`, trimmed and lower-cased.
    pub fn apply_overrides(&mut self, port: Option<u16>, domain: Option<&str>) {
        if let Some(port) = port {
            match self.settings.listen.first_mut() {
                Some(first) => *first = with_port(first, port),
                None => self.settings.listen.push(format!("0.0.0.0:{port}")),
            }
        }
        if let Some(domain) = domain {
            self.settings.domain = domain.trim().to_ascii_lowercase();
        }
    }
}

/// The file's name (for messages), its text and its folder. An unreadable file is one error.
fn read(path: &Path) -> Result<(String, String, &Path), ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: None,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((file, text, base_dir))
}

/// The TOML document, or one error with the line of the syntax error.
fn parse_toml<'t>(
    text: &'t str,
    file_name: &str,
    lines: &Lines,
) -> Result<ImDocument<&'t str>, ConfigErrors> {
    ImDocument::parse(text).map_err(|e| {
        let line = e.span().map(|s| lines.line(s.start));
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigErrors(vec![ConfigError {
            file: file_name.to_string(),
            line,
            path: String::new(),
            message: format!("invalid TOML: {message}"),
        }])
    })
}

/// `addr` with its port replaced (`[::1]:8080` -> `[::1]:9000`).
fn with_port(addr: &str, port: u16) -> String {
    if let Ok(mut parsed) = addr.parse::<SocketAddr>() {
        parsed.set_port(port);
        return parsed.to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{addr}:{port}"),
    }
}

/// `path` made absolute against the current folder, then lexically normalised.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return normalize(path);
    }
    match std::env::current_dir() {
        Ok(cwd) => normalize(&cwd.join(path)),
        Err(_) => normalize(path),
    }
}

/// `raw` resolved against `base` (kept when already absolute), lexically normalised: no
/// filesystem access, so the path need not exist.
pub(crate) fn resolve_path(base: &Path, raw: &str) -> PathBuf {
    normalize(&base.join(raw))
}

/// Drop `.` components and fold `..` into its parent, without touching the filesystem.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let at_root = matches!(
                    out.components().next_back(),
                    Some(Component::RootDir | Component::Prefix(_))
                );
                let can_pop = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if can_pop {
                    out.pop();
                } else if !at_root {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        let n = |p: &str| normalize(Path::new(p));
        assert_eq!(n("/srv/app/./data"), PathBuf::from("/srv/app/data"));
        assert_eq!(n("/srv/app/../data/"), PathBuf::from("/srv/data"));
        assert_eq!(n("/../x"), PathBuf::from("/x"));
        assert_eq!(n("a/../../b"), PathBuf::from("../b"));
        assert_eq!(n("./"), PathBuf::from("."));
        assert_eq!(
            resolve_path(Path::new("/srv/app"), "/var/lib/ten"),
            PathBuf::from("/var/lib/ten")
        );
        assert_eq!(
            resolve_path(Path::new("/srv/app"), "./tenement-data"),
            PathBuf::from("/srv/app/tenement-data")
        );
    }

    #[test]
    fn replaces_the_port() {
        assert_eq!(with_port("0.0.0.0:8080", 9000), "0.0.0.0:9000");
        assert_eq!(with_port("[::1]:8080", 0), "[::1]:0");
    }

    /// The only test that touches `$TENEMENT_CONFIG`.
    #[test]
    fn config_path_order() {
        std::env::set_var(CONFIG_ENV, "/etc/ten/env.toml");
        assert_eq!(
            find_config_path(Some(Path::new("/etc/ten/x.toml"))),
            PathBuf::from("/etc/ten/x.toml")
        );
        assert_eq!(find_config_path(None), PathBuf::from("/etc/ten/env.toml"));
        std::env::set_var(CONFIG_ENV, "");
        assert_eq!(find_config_path(None), PathBuf::from("tenement.toml"));
        std::env::remove_var(CONFIG_ENV);
        assert_eq!(find_config_path(None), PathBuf::from("tenement.toml"));
    }
}
