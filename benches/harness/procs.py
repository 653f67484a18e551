"""The processes of a bench run: the upstream, the proxies under test, and their configs.

Every process is started here and stopped here, by its own pid (and those of its children,
nginx's workers): nothing else on the machine is touched.
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PROXY_CPU = "0"  # the proxy under test, alone
LOAD_CPU = "1"  # the load generator and the upstream
DOMAIN = "bench.test"
HOST = f"up.{DOMAIN}"  # what every client sends; ten routes it to [process.up]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    """Pids whose parent is `pid` (nginx's workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry))
    return kids


class Proc:
    """A process started by the bench, its output in `workdir/NAME.out|.err`."""

    def __init__(self, name, argv, workdir, stop_signal=signal.SIGINT, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        self.stop_signal = stop_signal
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=env,
            )

    @property
    def pid(self):
        return self.popen.pid

    def pids(self):
        return [self.pid] + children(self.pid)

    def alive(self):
        return self.popen.poll() is None

    def stderr_tail(self, n=20):
        try:
            lines = self.err.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout=60):
        """Stop politely (`stop_signal`), then for sure; the children too."""
        kids = children(self.pid) if self.alive() else []
        if self.alive():
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.popen.returncode


def nginx_common(d, name):
    root = "user root;\n" if os.geteuid() == 0 else ""
    tmp = d / "tmp" / name
    tmp.mkdir(parents=True, exist_ok=True)
    return f"""{root}worker_rlimit_nofile 65536;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log warn;
events {{ worker_connections 20000; }}
"""


def nginx_http_common(d, name):
    tmp = d / "tmp" / name
    return f"""    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
"""


def upstream_conf(d, name, port, sock, single=False):
    """The upstream: nginx answering `200 ok` on TCP and on a unix socket."""
    mode = "master_process off;\n" if single else "master_process on;\n"
    return f"""daemon off;
{mode}worker_processes 1;
{nginx_common(d, name)}
http {{
{nginx_http_common(d, name)}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen unix:{sock} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def tls_cert(d):
    """A self-signed ECDSA P-256 certificate for HOST in the work dir, made once per run and
    served by every TLS row (ten and nginx alike): (cert path, key path)."""
    cert, key = d / "tls.pem", d / "tls.key"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"],
            check=True, capture_output=True,
        )
    return cert, key


def nginx_proxy_conf(d, name, port, upstream, single=False, tls=False, workers=1):
    """nginx as a reverse proxy doing ten's work: route by Host, X-Forwarded-*, X-Request-Id
    both ways, upstream keepalive done right; `tls`: terminating TLS 1.3 with the run's
    certificate; `workers`: its `worker_processes` (the scaling phase's 2)."""
    mode = "master_process off;\n" if single else "master_process on;\n"
    ssl, tls_conf = "", ""
    if tls:
        cert, key = tls_cert(d)
        ssl = " ssl"
        tls_conf = (f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
                    "    ssl_protocols TLSv1.3;\n")
    return f"""daemon off;
{mode}worker_processes {workers};
{nginx_common(d, name)}
http {{
{nginx_http_common(d, name)}{tls_conf}
    upstream up {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} default_server backlog=4096;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        server_name {HOST};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}
"""


def haproxy_conf(d, name, port, upstream):
    """HAProxy configured like the nginx row: one thread (`nbthread 1`; the process is pinned like
    nginx's worker), route by Host (anything else answers 404), `X-Forwarded-For/Proto/Host` and
    `X-Request-Id` (a random UUID, also on the response), keep-alive to the upstream (idle server
    connections reused by any request: `http-reuse always`, as nginx's `keepalive 64`), no log."""
    server = upstream[len("unix:"):] if upstream.startswith("unix:") else upstream
    return f"""global
    nbthread 1
    # 8000 connections: HAProxy reserves 2 descriptors each, within the bench's 20000 limit.
    maxconn 8000
    pidfile {d}/{name}.pid

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{port} backlog 4096
    unique-id-format %[uuid()]
    http-request return status 404 unless {{ hdr(host) -i {HOST} }}
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Id %[unique-id]
    http-response set-header X-Request-Id %[unique-id]
    default_backend up

backend up
    server up {server}
"""


def caddy_conf(d, name, port, upstream):
    """Caddy (a Caddyfile) configured like the nginx row: one core (GOMAXPROCS=1 and the same
    pinning), route by Host (anything else answers 404), `X-Forwarded-For/Proto/Host` (Caddy's
    `reverse_proxy` adds them itself) and `X-Request-Id` (`{http.request.uuid}`, also on the
    response), keep-alive to the upstream with 64 idle connections kept (nginx's `keepalive
    64`), no admin endpoint, no access log (Caddy's default), no automatic HTTPS."""
    dial = f"unix/{upstream[len('unix:'):]}" if upstream.startswith("unix:") else upstream
    return f"""{{
	admin off
	auto_https off
}}

http://{HOST}:{port} {{
	bind 127.0.0.1
	reverse_proxy {dial} {{
		header_up X-Request-Id {{http.request.uuid}}
		header_down X-Request-Id {{http.request.uuid}}
		transport http {{
			keepalive 300s
			keepalive_idle_conns_per_host 64
		}}
	}}
}}

http://:{port} {{
	bind 127.0.0.1
	respond 404
}}
"""


def pingap_conf(d, name, port, upstream):
    """pingap (`make bench PEERS=all`) configured like the nginx row from its documented keys
    (its conf/*.toml): one worker thread, route by Host (a request no location matches gets 404),
    `X-Forwarded-*` (`enable_reverse_proxy_headers`, which adds `X-Real-IP` and
    `X-Forwarded-Port` too), `X-Request-Id` (its `request_id` plugin, UUID v4), its default
    upstream keep-alive pool."""
    return f"""[basic]
threads = 1
log_level = "WARN"

[upstreams.up]
addrs = ["{upstream}"]

[plugins.requestId]
category = "request_id"
algorithm = "uuid"

[locations.up]
upstream = "up"
host = "{HOST}"
enable_reverse_proxy_headers = true
plugins = ["requestId"]

[servers.bench]
addr = "127.0.0.1:{port}"
locations = ["up"]
threads = 1
"""


PLUGINS = """plugins = [
  { kind = "headers", response_set = { X-Bench-Plugin = "on" }, request_remove = ["X-Bench-Nothing"] },
  { kind = "ip_filter", allow = ["127.0.0.1/32"] },
  { kind = "rate_limit", rps = 1000000000, burst = 1000000000 },
]
"""


def ten_conf(d, name, port, upstream, metrics=True, plugins=False, tls=False, access_log=False):
    """`tls`: the measured `port` is the TLS listener (the run's certificate as the default;
    plain HTTP on another port, unused); `access_log`: one JSON line per request into a file
    in the work dir."""
    ups = ", ".join(f'"{u}"' for u in (upstream if isinstance(upstream, list) else [upstream]))
    listen, tls_conf = port, ""
    if tls:
        cert, key = tls_cert(d)
        listen = free_port()
        tls_conf = f"""
[settings.tls]
listen = "127.0.0.1:{port}"
cert = "{cert}"
key = "{key}"
"""
    log = f'access_log = "{d}/{name}-access.log"\n' if access_log else ""
    return f"""[settings]
domain = "{DOMAIN}"
listen = "127.0.0.1:{listen}"
data_dir = "{d}/{name}-data"
metrics = {"true" if metrics else "false"}
{log}{tls_conf}
[process.up]
upstreams = [{ups}]
{PLUGINS if plugins else ""}"""


@dataclass
class Target:
    """One configuration under load: how to start its proxy (None: direct to the upstream)."""

    key: str
    label: str
    kind: str  # direct | nginx | haproxy | caddy | pingap | floor | ten
    upstream: object = ""  # 127.0.0.1:PORT or unix:/PATH (a list for ten: several)
    metrics: bool = True
    plugins: bool = False
    tls: bool = False  # clients speak TLS 1.3 to the proxy (the run's self-signed certificate)
    access_log: bool = False  # ten only: `access_log = PATH` in the work dir
    # Runs on the process of another target (`shares`), changing weights during its runs.
    shares: str = ""
    churn: bool = False
    callgrind: bool = True
    extra: list = field(default_factory=list)  # more proxy arguments (the floor's)
    bin: str = "ten"  # which ten binary (`ten-base`: $TEN_BENCH_BASE, a build to compare with)
    # nginx: `worker_processes`; ten: its runtime's worker threads (`TOKIO_WORKER_THREADS`, see
    # env()). 0: the default (nginx 1; ten sized from its affinity mask, one core here).
    workers: int = 0
    port: int = 0
    proc: Proc = None
    control: Path = None
    notes: list = field(default_factory=list)

    def control_socket(self, d, name):
        return d / f"{name}-data" / "ten.sock"

    def argv(self, bins, d, name, port, single=False):
        """The command line (and config file written) for a proxy of this target."""
        if self.kind == "nginx":
            conf = d / f"{name}.conf"
            conf.write_text(nginx_proxy_conf(d, name, port, self.upstream, single, self.tls,
                                             self.workers or 1))
            return [bins["nginx"], "-e", d / f"{name}.error.log", "-p", d, "-c", conf]
        if self.kind == "haproxy":
            conf = d / f"{name}.conf"
            conf.write_text(haproxy_conf(d, name, port, self.upstream))
            # -db: foreground, no daemon; one process (no master-worker).
            return [bins["haproxy"], "-db", "-f", conf]
        if self.kind == "caddy":
            conf = d / f"{name}.Caddyfile"
            conf.write_text(caddy_conf(d, name, port, self.upstream))
            return [bins["caddy"], "run", "--config", conf, "--adapter", "caddyfile"]
        if self.kind == "pingap":
            conf = d / f"{name}.toml"
            conf.write_text(pingap_conf(d, name, port, self.upstream))
            return [bins["pingap"], "-c", conf]
        if self.kind == "floor":
            return [bins["floor"], "--listen", f"127.0.0.1:{port}", "--upstream", self.upstream,
                    *self.extra]
        if self.kind == "ten":
            conf = d / f"{name}.toml"
            conf.write_text(ten_conf(d, name, port, self.upstream, self.metrics, self.plugins,
                                     self.tls, self.access_log))
            return [bins[self.bin], "serve", "--config", conf]
        if self.kind == "direct":
            conf = d / f"{name}.conf"
            conf.write_text(upstream_conf(d, name, port, d / f"{name}.sock", single))
            return [bins["nginx"], "-e", d / f"{name}.error.log", "-p", d, "-c", conf]
        raise ValueError(self.kind)

    def config_file(self, name):
        """The config file this target's proxy reads (in the work dir), if any."""
        return {"nginx": f"{name}.conf", "haproxy": f"{name}.conf", "pingap": f"{name}.toml",
                "caddy": f"{name}.Caddyfile", "ten": f"{name}.toml"}.get(self.kind)

    def env(self, d, name):
        """Environment variables the proxy runs with, on top of the driver's."""
        if self.kind == "caddy":
            # One core, as nginx's one worker (Go would size GOMAXPROCS from the affinity mask
            # anyway); Caddy's data and config dirs inside the work dir.
            return {"GOMAXPROCS": "1", "XDG_DATA_HOME": str(d / f"{name}-data"),
                    "XDG_CONFIG_HOME": str(d / f"{name}-config")}
        if self.kind == "ten" and self.workers:
            # `ten serve`'s proxy workers (and main runtime): `[settings] threads`, else (as here,
            # so that a ten built before that setting runs too) TOKIO_WORKER_THREADS, else the
            # affinity.
            return {"TOKIO_WORKER_THREADS": str(self.workers)}
        return {}

    def stop_signal(self):
        # nginx: SIGTERM is its fast shutdown (a single-process nginx leaves SIGINT at its default
        # action, which would kill valgrind before it writes the profile); Pingora: SIGINT is
        # (SIGTERM waits for a grace period); ten serve drains on either; HAProxy: SIGTERM is
        # its hard stop (SIGUSR1 would wait for every connection); Caddy stops on SIGINT.
        return (signal.SIGTERM if self.kind in ("nginx", "direct", "haproxy")
                else signal.SIGINT)


def start(target, bins, d, name, port, cpu=PROXY_CPU, wrap=(), env=None):
    argv = ["taskset", "-c", cpu, *wrap, *target.argv(bins, d, name, port, single=bool(wrap))]
    extra = target.env(d, name)
    if extra:
        env = {**(env or os.environ), **extra}
    return Proc(name, argv, d, stop_signal=target.stop_signal(), env=env)


def task_files(pids, name):
    """(tid, text of /proc/PID/task/TID/NAME) of every thread of the processes (threads that
    exit meanwhile are skipped)."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                yield int(tid), Path(f"/proc/{pid}/task/{tid}/{name}").read_text()
            except OSError:
                pass


def tasks(pids):
    """{tid: thread name} of every thread of the processes."""
    return {tid: text.strip() for tid, text in task_files(pids, "comm")}


def set_affinity(pids, cpus):
    """Move every thread of the processes to the cores `cpus` ("0,1")."""
    mask = {int(c) for c in cpus.split(",")}
    for tid in tasks(pids):
        try:
            os.sched_setaffinity(tid, mask)
        except OSError:
            pass  # a thread that exited meanwhile


def wait_ready(proc, port, check, timeout=60.0):
    """Poll until `check(port)` passes (it raises until then); raise with the stderr tail."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; stderr:\n{proc.stderr_tail()}"
            )
        try:
            return check(port)
        except (OSError, ValueError) as e:
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s ({last}); stderr:\n{proc.stderr_tail()}")
