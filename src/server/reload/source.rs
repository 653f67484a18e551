//! Where the running config comes from: the file `ten serve` was started with and the flags
//! given to it (`--data-dir`, `--port`, `--domain`), which stay in force across reloads.
//! `ten serve` loads its first config through it, and every reload (and a later upgrade) reads
//! the file again the same way.

use std::path::PathBuf;

use tenement_conf::Config;

#[derive(Debug, Clone)]
pub struct Source {
    /// As given (`ten serve` never changes its working directory, so a relative path names
    /// the same file at every reload, and errors name it as `config check` does).
    pub path: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub domain: Option<String>,
}

impl Source {
    /// The file, validated as `ten config check` validates it (its plugins built too), with the
    /// flags applied. Err: every error, one line each, as `config check` prints them.
    pub fn load(&self) -> Result<Config, Vec<String>> {
        let mut config = Config::load(&self.path)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let bad: Vec<String> = config
            .processes
            .iter()
            .filter_map(|p| {
                tenement_proxy::plugins::Chain::build(&p.plugins)
                    .err()
                    .map(|e| format!("{}: process.{}.{e}", self.path.display(), p.name))
            })
            .collect();
        if !bad.is_empty() {
            return Err(bad);
        }
        if let Some(dir) = &self.data_dir {
            config.settings.data_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        }
        config.apply_overrides(self.port, self.domain.as_deref());
        Ok(config)
    }
}
