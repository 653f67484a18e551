#!/usr/bin/env bash
# `make deb-test` (CI, as root): install the .deb that `make deb` built, check what it installed
# (binary, config, unit, user, data dir, completions, man page), run `ten serve` from it as the
# tenement user for a moment, then remove and purge it and check that nothing of it is left.
# The tenement system user stays after a purge, as Debian packages leave system users.
set -euo pipefail
deb=${1:?usage: packaging/deb-test.sh PACKAGE.deb}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }
step() { echo "deb-test: $*"; }

if dpkg -s tenement >/dev/null 2>&1; then
    fail "the tenement package is already installed here; this test purges it (and /var/lib/tenement): remove it first (dpkg -P tenement)"
fi

step "dpkg -i $deb"
$SUDO dpkg -i "$deb"
dpkg-query -W -f '${Status}\n' tenement | grep -qx 'install ok installed' || fail "not installed"

step "ten --version"
/usr/bin/ten --version | grep -Eq '^ten [0-9]+\.[0-9]+' || fail "ten --version"

step "ten config check /etc/tenement/tenement.toml"
/usr/bin/ten config check /etc/tenement/tenement.toml
dpkg-query -W -f '${Conffiles}\n' tenement | grep -q ' /etc/tenement/tenement.toml ' \
    || fail "/etc/tenement/tenement.toml is not a conffile"

step "the tenement user and /var/lib/tenement"
getent passwd tenement >/dev/null || fail "no tenement user"
[ "$(stat -c '%U:%G %a' /var/lib/tenement)" = "tenement:tenement 750" ] \
    || fail "/var/lib/tenement is $(stat -c '%U:%G %a' /var/lib/tenement)"

step "tenement.service"
unit=/usr/lib/systemd/system/tenement.service
grep -qx 'ExecStart=/usr/bin/ten serve --config /etc/tenement/tenement.toml' "$unit" || fail "$unit: ExecStart"
if command -v systemd-analyze >/dev/null; then
    SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
else
    step "(no systemd-analyze here: unit not verified)"
fi

step "completions and man page"
bash -c 'source /usr/share/bash-completion/completions/ten && complete -p ten' >/dev/null \
    || fail "bash completion does not register"
grep -q '^#compdef ten' /usr/share/zsh/vendor-completions/_ten || fail "zsh completion"
grep -q '^complete -c ten' /usr/share/fish/vendor_completions.d/ten.fish || fail "fish completion"
zcat /usr/share/man/man1/ten.1.gz | grep -q '^\.TH ten 1' || fail "man page"

step "ten serve as the tenement user (port 0), then ten ps through its control socket"
log=$(mktemp)
$SUDO setpriv --reuid=tenement --regid=tenement --init-groups \
    /usr/bin/ten serve --config /etc/tenement/tenement.toml --port 0 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    grep -q '^ten: domain' "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
grep -q '^ten: domain' "$log" || { cat "$log" >&2; kill "$pid" 2>/dev/null; fail "ten serve did not start"; }
$SUDO /usr/bin/ten --config /etc/tenement/tenement.toml ps || { kill "$pid"; fail "ten ps"; }
kill -TERM "$pid"
wait "$pid" || { cat "$log" >&2; fail "ten serve did not exit 0 on SIGTERM"; }
rm -f "$log"

step "dpkg -r tenement"
$SUDO dpkg -r tenement
[ ! -e /usr/bin/ten ] || fail "/usr/bin/ten left after dpkg -r"
[ ! -e "$unit" ] || fail "$unit left after dpkg -r"
[ -f /etc/tenement/tenement.toml ] || fail "dpkg -r removed the conffile (it keeps it until purge)"

step "dpkg -P tenement"
$SUDO dpkg -P tenement
! dpkg -s tenement >/dev/null 2>&1 || fail "still known to dpkg after dpkg -P"
for p in /etc/tenement /var/lib/tenement /usr/share/man/man1/ten.1.gz \
    /usr/share/bash-completion/completions/ten /usr/share/doc/tenement; do
    [ ! -e "$p" ] || fail "$p left after dpkg -P"
done
step "ok"
