//! `user`, `env_inherit` and `isolation` (SPEC §12). The suite runs as root in CI; the
//! not-root errors are covered end to end (tests/e2e/isolation.rs runs `ten config check` as
//! another uid).

use super::{error, errors, ok};
use crate::{Isolation, RunAs};

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests need root (CI runs as root)"
    );
}

#[test]
fn user_named_dynamic_and_the_settings_default() {
    assert_root();
    let c = ok("[settings]\nuser = \"dynamic\"\n[process.a]\ncommand = \"./a\"\n[process.b]\ncommand = \"./b\"\nuser = \"root\"\n");
    assert_eq!(c.settings.user, Some(RunAs::Dynamic));
    assert_eq!(c.processes[0].user, Some(RunAs::Dynamic));
    assert_eq!(
        c.processes[1].user,
        Some(RunAs::User {
            name: "root".into(),
            uid: 0,
            gid: 0
        })
    );
    let c = ok("[process.a]\ncommand = \"./a\"\n");
    assert_eq!(c.processes[0].user, None);
    assert_eq!(c.processes[0].isolation, Isolation::Process);
}

#[test]
fn an_unknown_user_is_an_error_at_its_line() {
    assert_root();
    assert_eq!(
        error("[process.a]\ncommand = \"./a\"\nuser = \"no-such-user-xyz\"\n"),
        "tenement.toml:3: process.a.user: no such user \"no-such-user-xyz\" on this system (or use \"dynamic\")"
    );
    assert_eq!(
        error("[settings]\nuser = \"\"\n"),
        "tenement.toml:2: settings.user: expected a user name or \"dynamic\", got \"\""
    );
}

#[test]
fn env_inherit_names_are_checked() {
    let c = ok("[process.a]\ncommand = \"./a\"\nenv_inherit = [\"AWS_REGION\", \"_X1\"]\n");
    assert_eq!(c.processes[0].env_inherit, vec!["AWS_REGION", "_X1"]);
    let e = errors("[process.a]\ncommand = \"./a\"\nenv_inherit = [\"OK\", \"A=B\", \"1X\"]\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(
            "tenement.toml:3: process.a.env_inherit[1]: invalid environment variable name \"A=B\""
        ),
        "{e:#?}"
    );
    assert_eq!(
        error("[process.a]\ncommand = \"./a\"\nenv_inherit = \"HOME\"\n"),
        "tenement.toml:3: process.a.env_inherit: expected an array, got \"HOME\""
    );
}

#[test]
fn isolation_namespace_is_accepted_as_root() {
    assert_root();
    let c = ok("[service.a]\ncommand = \"./a\"\nisolation = \"namespace\"\n");
    assert_eq!(c.processes[0].isolation, Isolation::Namespace);
}

#[test]
fn an_isolated_process_gets_a_socket_directory_of_its_own() {
    assert_root();
    let c = ok("[settings]\nuser = \"dynamic\"\n[process.a]\ncommand = \"./a\"\nlisten = \"socket\"\n[process.b]\ncommand = \"./b\"\nlisten = \"socket\"\nuser = \"root\"\nsocket = \"/run/b/{id}/b.sock\"\n");
    assert_eq!(c.processes[0].socket, crate::ISOLATED_SOCKET);
    assert_eq!(c.processes[1].socket, "/run/b/{id}/b.sock");
    let c = ok("[process.a]\ncommand = \"./a\"\nlisten = \"socket\"\n");
    assert_eq!(c.processes[0].socket, crate::DEFAULT_SOCKET);
    assert_eq!(
        error("[process.a]\ncommand = \"./a\"\nisolation = \"namespace\"\nsocket = \"{data_dir}/a-{id}.sock\"\n"),
        "tenement.toml:4: process.a.socket: with user or isolation = \"namespace\", the socket needs a directory of its own, not data_dir itself (e.g. \"{data_dir}/run/{process}/{id}/app.sock\"), got \"{data_dir}/a-{id}.sock\""
    );
}
