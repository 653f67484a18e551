//! `ten init [DIR]`: write a commented starter `tenement.toml` (never over an existing file);
//! `ten init --systemd`: print the systemd unit for `ten serve` (SPEC §11). The unit is the
//! Debian package's `packaging/tenement.service`, embedded: one source, this binary's path and
//! the config's path put in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::client::cli::Global;

/// The starter config (`ten config check` passes on it: a unit test and an e2e test say so).
pub const STARTER: &str = include_str!("init/tenement.toml");
/// The packaged unit, with `/usr/bin/ten` and `/etc/tenement/tenement.toml` in it.
pub const UNIT: &str = include_str!("../../../packaging/tenement.service");
const PACKAGED_BIN: &str = "/usr/bin/ten";
const PACKAGED_CONFIG: &str = "/etc/tenement/tenement.toml";

/// Write a starter tenement.toml, or print a systemd unit
#[derive(Debug, Args)]
#[command(
    long_about = "Write a commented starter tenement.toml into DIR (default: the current \
directory); an existing file is never overwritten. It passes `ten config check` as written.\n\n\
With --systemd, print instead a systemd unit for `ten serve` (Type=notify, ExecReload=ten reload) \
using this binary and the config at --config (default: DIR/tenement.toml with DIR, else \
/etc/tenement/tenement.toml).\n\nExamples:\n  ten init\n  ten init /srv/tenement\n  \
ten init --systemd --config /srv/tenement/tenement.toml > /etc/systemd/system/tenement.service"
)]
pub struct Init {
    /// Where to write tenement.toml [default: .]
    pub dir: Option<PathBuf>,
    /// Print a systemd unit instead
    #[arg(long)]
    pub systemd: bool,
}

impl Init {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        if self.systemd {
            let config = match (&global.config, &self.dir) {
                (Some(c), _) => absolute(c),
                (None, Some(d)) => absolute(&d.join("tenement.toml")),
                (None, None) => PathBuf::from(PACKAGED_CONFIG),
            };
            let bin = std::env::current_exe().context("cannot find the path of this ten binary")?;
            print!("{}", unit(&bin, &config));
            return Ok(ExitCode::SUCCESS);
        }
        let dir = self.dir.unwrap_or_else(|| PathBuf::from("."));
        let path = dir.join("tenement.toml");
        if path.exists() {
            bail!(
                "{} already exists: not overwritten (check it with `ten config check {}`)",
                path.display(),
                path.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // create_new: a file that appeared meanwhile is not overwritten either.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let root = nix::unistd::geteuid().is_root();
        std::io::Write::write_all(&mut f, starter(root).as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
        println!(
            "next: ten config check {0} && ten serve --config {0}",
            path.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The line of [`STARTER`] that turns on dynamic users, commented out.
const USER_COMMENTED: &str = "# user = \"dynamic\"                # run each";
const USER_ON: &str = "user = \"dynamic\"                  # run each";

/// The starter config for a `ten init` run by root (SPEC §12: `user = "dynamic"`, every instance
/// its own uid) or by another user, for whom `user` would be a config error: then the line stays
/// commented with its note.
pub fn starter(root: bool) -> String {
    if root {
        STARTER.replacen(USER_COMMENTED, USER_ON, 1)
    } else {
        STARTER.to_string()
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The packaged unit with `bin` and `config` in place of the package's paths.
pub fn unit(bin: &Path, config: &Path) -> String {
    UNIT.replace(PACKAGED_BIN, &bin.display().to_string())
        .replace(PACKAGED_CONFIG, &config.display().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_is_valid_and_mentions_user_dynamic_commented() {
        let c = tenement_conf::Config::parse(STARTER, "tenement.toml", Path::new("/srv")).unwrap();
        assert_eq!(c.processes.len(), 1);
        assert_eq!(c.instances.len(), 1);
        assert!(STARTER.contains("# user = \"dynamic\""));
        assert!(STARTER.contains("needs ten to"));
    }

    #[test]
    fn as_root_the_starter_turns_dynamic_users_on() {
        let on = starter(true);
        assert!(on.contains("\nuser = \"dynamic\""), "{on}");
        assert!(!on.contains("# user = \"dynamic\""));
        assert_eq!(starter(false), STARTER);
        if nix::unistd::geteuid().is_root() {
            let c = tenement_conf::Config::parse(&on, "tenement.toml", Path::new("/srv")).unwrap();
            assert_eq!(c.processes.len(), 1);
        }
    }

    #[test]
    fn the_unit_is_the_packaged_one_with_our_paths() {
        let u = unit(
            Path::new("/opt/ten/bin/ten"),
            Path::new("/srv/t/tenement.toml"),
        );
        let line = |key: &str| {
            u.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in\n{u}"))
                .to_string()
        };
        assert_eq!(line("Type"), "notify");
        assert_eq!(
            line("ExecStart"),
            "/opt/ten/bin/ten serve --config /srv/t/tenement.toml"
        );
        assert_eq!(
            line("ExecReload"),
            "/opt/ten/bin/ten --config /srv/t/tenement.toml reload"
        );
        assert_eq!(line("KillMode"), "mixed");
        assert_eq!(line("LimitNOFILE"), "65536");
        assert_eq!(line("Delegate"), "yes");
        assert!(
            !u.contains(PACKAGED_BIN) && !u.contains(PACKAGED_CONFIG),
            "{u}"
        );
        // Back to the package's paths: the packaged file itself.
        assert_eq!(
            u.replace("/opt/ten/bin/ten", PACKAGED_BIN)
                .replace("/srv/t/tenement.toml", PACKAGED_CONFIG),
            UNIT
        );
    }
}
