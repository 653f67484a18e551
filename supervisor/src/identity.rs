//! Who an instance runs as and what it inherits (SPEC §12): its clean environment (an
//! allow-list of ten's own, `env_inherit`, the §2 variables, its process's `env`), its user
//! (`user = "NAME"` or a dynamic uid), the ownership of its DATA_DIR and socket directory,
//! the check that its command is runnable by that uid, and the privilege drop between fork
//! and exec.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// ten's own variables every app gets (when ten has them); `LC_*` too.
const ALLOWED: &[&str] = &["PATH", "HOME", "LANG", "TZ", "USER"];

/// PATH when ten has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uid/gid an instance runs as, with what it needs between fork and exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database; none for a dynamic uid).
    pub groups: Vec<u32>,
    /// HOME and USER for its environment.
    pub home: PathBuf,
    pub user: String,
}

impl Identity {
    /// A user of the system (its primary group, its supplementary groups).
    pub fn named(name: &str, uid: u32, gid: u32) -> Identity {
        let groups = std::ffi::CString::new(name)
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![gid]);
        let home = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| PathBuf::from("/"), |u| u.dir);
        Identity {
            uid,
            gid,
            groups,
            home,
            user: name.to_string(),
        }
    }

    /// A dynamic uid (gid = uid, no supplementary group); its home is its DATA_DIR.
    pub fn dynamic(uid: u32, data_dir: &Path) -> Identity {
        Identity {
            uid,
            gid: uid,
            groups: Vec::new(),
            home: data_dir.to_path_buf(),
            user: format!("ten-{uid}"),
        }
    }

    /// Between fork and exec: drop to this uid/gid (async-signal-safe: three syscalls on
    /// memory allocated before the fork).
    pub fn drop_privileges(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls on a slice that lives as long as `self`.
        unsafe {
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The environment an instance starts with: the allow-list from `ten_env` (HOME and USER the
/// target user's when it has one), the names of `inherit`, then `extra` (its process's `env`
/// and the §2 variables, which win). Nothing else of ten's environment.
pub fn environment(
    ten_env: impl IntoIterator<Item = (OsString, OsString)>,
    inherit: &[String],
    identity: Option<&Identity>,
    extra: BTreeMap<String, String>,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = ten_env
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            ALLOWED.contains(&k.as_ref()) || k.starts_with("LC_") || inherit.iter().any(|i| *i == k)
        })
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(id) = identity {
        env.insert("HOME".into(), id.home.clone().into_os_string());
        env.insert("USER".into(), id.user.clone().into());
        env.insert("LOGNAME".into(), id.user.clone().into());
    }
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    env
}

/// Create `dir` (and its parents, which the uid may pass through: 0711) and make it the
/// instance's: owned by `id`, mode 0700. `data_dir`'s own mode is left alone.
pub fn own_dir(dir: &Path, data_dir: &Path, id: &Identity) -> Result<(), String> {
    let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    // Parents between data_dir and dir were made under umask 077: let the uid through.
    let mut p = dir.parent();
    while let Some(parent) = p {
        if parent == data_dir || !parent.starts_with(data_dir) {
            break;
        }
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| fail("chmod 0711", parent, e))?;
        p = parent.parent();
    }
    std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid))
        .map_err(|e| fail(&format!("chown to uid {}", id.uid), dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("chmod 0700", dir, e))
}

/// Can `id` execute `program` (searched in `path` when it has no '/'; relative to `cwd`
/// otherwise)? Every directory on the way must be searchable by the uid, the file executable.
/// `Err` says which path and why.
pub fn runnable(
    program: &str,
    path: Option<&OsString>,
    cwd: &Path,
    id: &Identity,
) -> Result<(), String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else {
        let path = path.cloned().unwrap_or_else(|| DEFAULT_PATH.into());
        std::env::split_paths(&path)
            .map(|d| cwd.join(d).join(program))
            .collect()
    };
    let mut first_error = None;
    for c in &candidates {
        // A PATH entry without the program is no error: the next one is tried.
        if !program.contains('/') && std::fs::metadata(c).is_err() {
            continue;
        }
        match check_path(c, id) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        let path = path.map(|p| p.clone().into_vec()).unwrap_or_default();
        format!(
            "{program}: not found in PATH {:?}",
            String::from_utf8_lossy(&path)
        )
    }))
}

/// Whether `id` may search every directory above `file` and execute it.
fn check_path(file: &Path, id: &Identity) -> Result<(), String> {
    reachable(file, id)?;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.is_dir() || !allowed(&meta, id, 0o1) {
        return Err(format!(
            "{}: mode {:04o} owned by uid {} is not executable",
            file.display(),
            meta.mode() & 0o7777,
            meta.uid()
        ));
    }
    Ok(())
}

/// Whether `id` may search every directory above `path` (so it can reach `path` itself).
pub fn reachable(path: &Path, id: &Identity) -> Result<(), String> {
    let mut dir = PathBuf::new();
    let parent = path.parent().unwrap_or(Path::new("/"));
    for part in parent.components() {
        dir.push(part);
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !allowed(&meta, id, 0o1) {
            return Err(format!(
                "{}: directory mode {:04o} owned by uid {} is not searchable",
                dir.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

/// The classic permission check for `bit` (1 = x, 2 = w, 4 = r); root may search any
/// directory and run any file with one x bit.
fn allowed(meta: &std::fs::Metadata, id: &Identity, bit: u32) -> bool {
    let mode = meta.mode();
    if id.uid == 0 {
        return meta.is_dir() || mode & 0o111 != 0;
    }
    let shift = if meta.uid() == id.uid {
        6
    } else if meta.gid() == id.gid || id.groups.contains(&meta.gid()) {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_environment_is_the_allow_list_inherit_and_extra_only() {
        let ten = os(&[
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "C"),
            ("TZ", "UTC"),
            ("USER", "root"),
            ("SECRET", "hunter2"),
            ("AWS_REGION", "eu"),
        ]);
        let extra = BTreeMap::from([("PORT".to_string(), "1".to_string())]);
        let env = environment(ten.clone(), &[], None, extra.clone());
        let keys: Vec<_> = env
            .keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            keys,
            ["HOME", "LANG", "LC_TIME", "PATH", "PORT", "TZ", "USER"]
        );
        let env = environment(ten.clone(), &["AWS_REGION".into()], None, extra);
        assert_eq!(env.get(&OsString::from("AWS_REGION")).unwrap(), "eu");
        assert!(!env.contains_key(&OsString::from("SECRET")));
        let id = Identity::dynamic(61184, Path::new("/d/a/1"));
        let env = environment(ten, &[], Some(&id), BTreeMap::new());
        assert_eq!(env.get(&OsString::from("HOME")).unwrap(), "/d/a/1");
        assert_eq!(env.get(&OsString::from("USER")).unwrap(), "ten-61184");
        // No PATH in ten's environment: a default one.
        let env = environment(Vec::new(), &[], None, BTreeMap::new());
        assert_eq!(env.get(&OsString::from("PATH")).unwrap(), DEFAULT_PATH);
    }

    #[test]
    fn runnable_names_the_path_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let app = home.join("app");
        std::fs::write(&app, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = Identity::dynamic(61999, Path::new("/"));
        let owner = Identity::dynamic(nix::unistd::getuid().as_raw(), Path::new("/"));
        let cwd = Path::new("/");
        let e = runnable(app.to_str().unwrap(), None, cwd, &other).unwrap_err();
        assert!(
            e.contains(&format!("{}: directory mode 0700", home.display())),
            "{e}"
        );
        assert!(runnable(app.to_str().unwrap(), None, cwd, &owner).is_ok());
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = runnable(app.to_str().unwrap(), None, cwd, &other).unwrap_err();
        assert!(
            e.contains("mode 0644") && e.contains("not executable"),
            "{e}"
        );
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(runnable(app.to_str().unwrap(), None, cwd, &other).is_ok());
        // Searched in PATH.
        let path = OsString::from(format!("/nonexistent:{}", home.display()));
        assert!(runnable("app", Some(&path), cwd, &other).is_ok());
        let e = runnable("nope-xyz", Some(&path), cwd, &other).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
    }
}
