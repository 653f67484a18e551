//! Who an instance runs as and what it is isolated from (SPEC §12): `user` (per process, or
//! `[settings] user` as the default), `env_inherit` and `isolation`. A named user is looked up
//! in the system's user database when the config is loaded, and `user` or
//! `isolation = "namespace"` without root is an error there: both need `ten serve` to run as
//! root.

use nix::unistd::{Uid, User};

use crate::error::Cx;
use crate::tree::Field;
use crate::{Isolation, RunAs};

/// The uids (and gids) `user = "dynamic"` hands out, like systemd's DynamicUser.
pub const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// `user = "NAME"` or `"dynamic"`: the name looked up now (an unknown one is an error).
pub(crate) fn parse_user(cx: &mut Cx, f: &Field<'_, '_>) -> Option<RunAs> {
    let name = cx.str(f)?.trim();
    if name == "dynamic" {
        return need_root(cx, f, "user").then_some(RunAs::Dynamic);
    }
    if name.is_empty() {
        cx.err(
            f.line(),
            &f.path,
            "expected a user name or \"dynamic\", got \"\"",
        );
        return None;
    }
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => {
            let message = format!("no such user {name:?} on this system (or use \"dynamic\")");
            cx.err(f.line(), &f.path, message);
            return None;
        }
        Err(e) => {
            let message = format!("cannot look up user {name:?}: {e}");
            cx.err(f.line(), &f.path, message);
            return None;
        }
    };
    need_root(cx, f, "user").then(|| RunAs::User {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// `isolation = "process" | "namespace"`; any other value is not supported.
pub(crate) fn parse_isolation(cx: &mut Cx, f: &Field<'_, '_>) -> Option<Isolation> {
    match cx.str(f)? {
        "process" => Some(Isolation::Process),
        "namespace" => need_root(cx, f, "isolation").then_some(Isolation::Namespace),
        other => {
            let message =
                format!("isolation {other:?} is not supported (only \"process\" or \"namespace\")");
            cx.err(f.line(), &f.path, message);
            None
        }
    }
}

/// `env_inherit = ["NAME", ...]`: names of ten's own environment passed to the app.
pub(crate) fn parse_env_inherit(cx: &mut Cx, f: &Field<'_, '_>) -> Vec<String> {
    let mut out = Vec::new();
    for (item, name) in cx.strings(f).unwrap_or_default() {
        if is_env_name(name) {
            out.push(name.to_string());
        } else {
            let message = format!(
                "invalid environment variable name {name:?} (letters, digits and '_', not starting with a digit)"
            );
            cx.err(item.line(), &item.path, message);
        }
    }
    out
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// When ten runs as root: one warning per spawned process without `user` (its apps run as
/// root), naming the setting.
pub fn root_warnings(config: &crate::Config) -> Vec<String> {
    if !Uid::effective().is_root() {
        return Vec::new();
    }
    config
        .processes
        .iter()
        .filter(|p| !p.is_external() && p.user.is_none())
        .map(|p| {
            format!(
                "process.{}: its instances run as root (ten runs as root and no user is set): set user = \"dynamic\" (or a user name) in [settings] or [process.{}]",
                p.name, p.name
            )
        })
        .collect()
}

/// `setting` needs root: an error naming it when ten does not run as root.
fn need_root(cx: &mut Cx, f: &Field<'_, '_>, setting: &str) -> bool {
    if Uid::effective().is_root() {
        return true;
    }
    let message = format!(
        "{setting} needs ten to run as root (running as uid {}): remove {setting}, or run ten serve as root",
        Uid::effective()
    );
    cx.err(f.line(), &f.path, message);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["PATH", "_X", "a1", "LC_ALL"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }
}
