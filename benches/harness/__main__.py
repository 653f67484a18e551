"""`make bench`: ten vs nginx vs a vanilla Pingora proxy vs direct, in ONE run, configurations
interleaved round by round; writes BENCHMARKS.md. Started by benches/run.sh (see
docs/benchmarks.md); `--help` lists the knobs."""

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import pause  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import scaling  # noqa: E402
from procs import LOAD_CPU, PROXY_CPU, Target  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def parse_args():
    p = argparse.ArgumentParser(prog="benches/run.sh", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for the report)")
    p.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rate", type=int, default=0, help="fixed rate for oha (0: auto)")
    p.add_argument("--latency-duration", type=int, default=10, help="seconds per oha run")
    p.add_argument("--idle-conns", type=int, default=1000)
    p.add_argument("--cg-base", type=int, default=500, help="requests of the short callgrind run")
    p.add_argument("--cg-requests", type=int, default=2000, help="extra requests of the long one")
    p.add_argument("--cg-runs", type=int, default=1,
                   help="measure each proxy N times under callgrind and keep the median (A/B gates: 5)")
    p.add_argument("--only", default="", help="comma-separated configuration keys")
    p.add_argument("--peers", default="", choices=["", "all"],
                   help="all: also pingap and tenement 0.2.1 (built by `make bench PEERS=all` "
                   "into $TEN_BENCH_PEERS, default ~/.cache/tenement-bench/peers)")
    p.add_argument("--no-syscalls", action="store_true",
                   help="skip the syscalls/wakeups per request phase")
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--no-pause", action="store_true", help="skip the reload/upgrade pause phase")
    p.add_argument("--pause-window", type=int, default=3, help="seconds per pause window")
    p.add_argument("--pause-rate", type=int, default=1000, help="req/s of the pause windows")
    p.add_argument("--pause-conns", type=int, default=10, help="connections of the pause windows")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the two-core phase (1 vs 2 workers, ten and nginx)")
    p.add_argument("--scaling-threads", type=int, default=2, help="wrk threads of the two-core phase")
    p.add_argument("--scaling-connections", type=int, default=100,
                   help="wrk connections of the two-core phase")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    return p.parse_args()


def tool(name, *candidates):
    for c in (name, *candidates):
        path = shutil.which(c) or (c if Path(c).is_file() else None)
        if path:
            return path
    sys.exit(f"bench: {name} not found: `make bench` installs it")


def find_tools(args):
    # `make bench` builds with the `profiling` profile (release + debug info, so callgrind names
    # functions); $CARGO_TARGET_DIR is honoured as cargo does.
    rel = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "profiling"
    bins = {
        "wrk": tool("wrk"),
        "oha": tool("oha", str(Path.home() / ".cargo/bin/oha")),
        "nginx": tool("nginx", "/usr/sbin/nginx"),
        "valgrind": tool("valgrind"),
        "callgrind_annotate": tool("callgrind_annotate"),
        "ten": rel / "ten",
        "floor": rel / "ten-bench-pingora",
    }
    # The peers `make bench` installs from Debian (a run whose --only leaves them out does not
    # need them); perf for the syscall counts, else strace.
    for name, path in (("haproxy", "/usr/sbin/haproxy"), ("caddy", "/usr/bin/caddy"),
                       ("perf", "/usr/bin/perf"), ("strace", "/usr/bin/strace")):
        found = shutil.which(name) or (path if Path(path).is_file() else None)
        if found:
            bins[name] = found
    if "perf" in bins and subprocess.run(
        [bins["perf"], "stat", "-e", "raw_syscalls:sys_enter", "true"], capture_output=True
    ).returncode != 0:
        del bins["perf"]  # no tracepoints here (a kernel or container without them)
    # `--peers all`: the peers benches/peers.sh built (each skipped, with its reason, if not).
    bins["peers_skipped"] = []
    if args.peers == "all":
        cache = Path(os.environ.get("TEN_BENCH_PEERS") or Path.home() / ".cache/tenement-bench/peers")
        for key, crate, version, exe in (("pingap", "pingap", "0.16.1", "pingap"),):
            path = cache / f"{crate}-{version}" / "bin" / exe
            if path.is_file():
                bins[key] = path
                continue
            logf = cache / f"{crate}-{version}" / "build.log"
            why = "not built (run `make bench PEERS=all`)"
            if logf.is_file():
                lines = logf.read_text(errors="replace").splitlines()
                errs = [x for x in lines if x.startswith("error")]
                why = f"its build failed: {(errs or lines or ['?'])[0].strip()}"
            bins["peers_skipped"].append(f"{crate} {version} skipped: {why}")
        # tenement 0.2.1 (`tenement-cli`, also a `ten`) proxies only to the processes it spawns
        # itself; it has no row yet.
        bins["peers_skipped"].append(
            "tenement 0.2.1 skipped: not wired yet (it proxies only to instances it spawns, so "
            "the shared upstream needs a spawned shim)")
    # A ten built from another commit, measured beside this one in the same run (`ten-base`).
    if os.environ.get("TEN_BENCH_BASE"):
        bins["ten-base"] = Path(os.environ["TEN_BENCH_BASE"])
    for k in ("ten", "floor", "ten-base"):
        if k in bins and not bins[k].is_file():
            sys.exit(f"bench: {bins[k]} missing: run `cargo build --profile profiling --bins` first")
    return bins


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def machine(bins):
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()
    pingora = "unknown"
    lock = (ROOT / "Cargo.lock").read_text().split("[[package]]")
    for pkg in lock:
        if 'name = "pingora-proxy"' in pkg:
            pingora = pkg.split('version = "', 1)[1].split('"', 1)[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": os.uname().release,
        "ten": f"{version([bins['ten'], '--version'])} (git {git or '?'}{', with local changes' if dirty else ''})",
        "pingora": pingora,
        "nginx": version([bins["nginx"], "-v"]),
        "haproxy": version([bins["haproxy"], "-v"]) if "haproxy" in bins else "not installed",
        "caddy": f"Caddy {version([bins['caddy'], 'version'])}" if "caddy" in bins else "not installed",
        "syscalls": ("perf (raw_syscalls:sys_enter tracepoint)" if "perf" in bins
                     else "strace -c -f" if "strace" in bins else "not measured"),
        "wrk": version([bins["wrk"], "-v"]),
        "oha": version([bins["oha"], "--version"]),
        "rustc": version(["rustc", "--version"]),
        "valgrind": version([bins["valgrind"], "--version"]),
    }


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def all_targets(up_port, sock, with_pingap=False):
    tcp, unix = f"127.0.0.1:{up_port}", f"unix:{sock}"
    return [
        Target("direct", "direct to the upstream (no proxy)", "direct"),
        Target("nginx", "nginx reverse proxy, TCP upstream", "nginx", tcp),
        Target("nginx-unix", "nginx reverse proxy, unix-socket upstream", "nginx", unix),
        Target("haproxy", "HAProxy reverse proxy (one thread), TCP upstream", "haproxy", tcp),
        Target("haproxy-unix", "HAProxy reverse proxy (one thread), unix-socket upstream",
               "haproxy", unix),
        Target("caddy", "Caddy reverse proxy (GOMAXPROCS=1), TCP upstream", "caddy", tcp),
        Target("caddy-unix", "Caddy reverse proxy (GOMAXPROCS=1), unix-socket upstream", "caddy",
               unix),
        *([Target("pingap", "pingap 0.16.1 (Pingora-based; `make bench PEERS=all`), one thread, "
                  "TCP upstream", "pingap", tcp)] if with_pingap else []),
        Target("floor", "vanilla Pingora floor, TCP upstream", "floor", tcp),
        Target("floor-unix", "vanilla Pingora floor, unix-socket upstream", "floor", unix),
        Target("floor-buf0", "vanilla Pingora floor, TCP upstream, no L4 read buffer per "
               "connection (ten's listener setting) instead of the default 64 KiB", "floor", tcp,
               extra=["--l4-read-buffer", "0"]),
        Target("ten", "ten serve, TCP upstream (metrics on)", "ten", tcp),
        *([Target("ten-base", "the same as `ten`, with the ten binary at $TEN_BENCH_BASE (a build "
                  "of another commit, to compare)", "ten", tcp, bin="ten-base")]
          if os.environ.get("TEN_BENCH_BASE") else []),
        Target("ten-unix", "ten serve, unix-socket upstream (metrics on)", "ten", unix),
        Target("ten-nometrics", "ten serve, TCP upstream, metrics = false", "ten", tcp, metrics=False),
        Target("ten-plugins", "ten serve, TCP upstream, metrics on + 3 plugins", "ten", tcp, plugins=True),
        Target("ten-accesslog", "ten serve, TCP upstream (metrics on), access_log = a file in the "
               "work dir: one JSON line per request", "ten", tcp, access_log=True),
        Target("nginx-tls", "nginx terminating TLS 1.3 (the run's self-signed ECDSA P-256 "
               "certificate), TCP upstream", "nginx", tcp, tls=True),
        Target("ten-tls", "ten serve terminating TLS 1.3 on `[settings.tls]` (the same "
               "certificate), TCP upstream (metrics on)", "ten", tcp, tls=True),
        Target("ten-2up", "ten serve, two upstreams (TCP + unix socket, weights 100/100), weights unchanged",
               "ten", [tcp, unix], callgrind=False),
        Target("ten-2up-churn", "the same process while `up:0`'s weight changes 10 times per second",
               "ten", [tcp, unix], shares="ten-2up", churn=True, callgrind=False),
    ]


def log(msg):
    print(f"bench: {msg}", flush=True)


def start_proxies(targets, bins, d, res):
    """Start every proxy on the proxy core; measure its RSS idle and with idle connections."""
    running = []
    by_key = {}
    for t in targets:
        if t.kind == "direct":
            running.append(t)
            continue
        if t.shares:
            base = by_key.get(t.shares)
            if base is not None:
                t.port, t.proc = base.port, base.proc
                t.control = base.control
                running.append(t)
            continue
        t.port = procs.free_port()
        t.proc = procs.start(t, bins, d, t.key, t.port)
        t.control = t.control_socket(d, t.key)
        res["commands"][t.key] = shlex.join(t.proc.argv)
        try:
            headers = procs.wait_ready(t.proc, t.port, ready(t))
        except RuntimeError as e:
            if not t.plugins:
                raise
            t.proc.stop()
            res["plugins"] = f"not wired yet: ten did not serve the plugins config ({e})"
            log(res["plugins"])
            continue
        if t.plugins:
            if headers.get("x-bench-plugin") != "on":
                t.proc.stop()
                res["plugins"] = (
                    "not wired yet: the `headers` plugin's response header was missing, "
                    "so ten accepted `plugins` without applying them"
                )
                log(res["plugins"])
                continue
            res["plugins"] = "wired"
        running.append(t)
        by_key[t.key] = t
    return running


def ready(t):
    """The readiness check of a target (over TLS for the TLS rows)."""
    return lambda port: measure.check_ok(port, t.tls)


def syscall_phase(targets, bins, d, args, res):
    """System calls and wakeups per request of every proxy at saturation (one wrk run each,
    with an idle window subtracted)."""
    if "perf" not in bins and "strace" not in bins:
        log("syscalls per request: neither perf nor strace found: not measured")
        return
    for t in targets:
        if t.kind == "direct" or t.shares:
            continue
        r = measure.syscalls(bins, t.port, args.connections, args.duration, t.proc.pids(), d,
                             f"sys-{t.key}", tls=t.tls)
        if r is None:
            continue
        res["syscalls"][t.key] = r
        log(f"{t.key}: {r['syscalls_per_req']:.2f} syscalls/request, "
            f"{r['wakeups_per_req']:.2f} wakeups/request ({r['method']})")


def rss_phase(targets, res, n_conns):
    for t in targets:
        if t.shares:
            continue
        pids = t.proc.pids()
        time.sleep(1.0)
        idle = measure.memory(pids)
        conns = measure.open_idle(t.port, n_conns, t.tls)
        time.sleep(0.5)
        busy = measure.memory(t.proc.pids())
        for c in conns:
            c.close()
        res["rss"][t.key] = {"idle": idle, "conns": busy, "n": n_conns}
        log(f"{t.key}: RSS idle {idle['rss'] / 1024:.1f} MB, {n_conns} conns {busy['rss'] / 1024:.1f} MB")


@contextlib.contextmanager
def churning(t, res):
    """Weight changes during the run of a churn target; None for the others."""
    if not t.churn:
        yield None
        return
    with measure.Churn(t.control) as churn:
        yield churn
    res.setdefault("churn", {"ok": 0, "failed": 0})
    res["churn"]["ok"] += churn.ok
    res["churn"]["failed"] += churn.failed


STARVED = 0.5
STARVED_RETRIES = 2


# ten's allocator (mimalloc) commits its first arena eagerly; this measures ten's RSS without it.
RSS_VARIANTS = {"ten": {"MIMALLOC_ARENA_EAGER_COMMIT": "0"}}


def rss_variants(targets, bins, d, res, n_conns):
    """RSS of a proxy started with extra environment variables (no load runs)."""
    for t in targets:
        extra = RSS_VARIANTS.get(t.key)
        if not extra or t.shares:
            continue
        name = f"{t.key}-rssenv"
        port = procs.free_port()
        proc = procs.start(t, bins, d, name, port, env={**os.environ, **extra})
        try:
            procs.wait_ready(proc, port, ready(t))
            time.sleep(1.0)
            idle = measure.memory(proc.pids())
            conns = measure.open_idle(port, n_conns, t.tls)
            time.sleep(0.5)
            busy = measure.memory(proc.pids())
            for c in conns:
                c.close()
        finally:
            proc.stop()
        label = " ".join(f"{k}={v}" for k, v in extra.items())
        res["rss_variants"][t.key] = {"env": label, "idle": idle, "conns": busy, "n": n_conns}
        log(f"{t.key} with {label}: RSS idle {idle['rss'] / 1024:.1f} MB, "
            f"{n_conns} conns {busy['rss'] / 1024:.1f} MB")


def load_phase(targets, bins, args, res):
    log("warm-up: 2 s of wrk per configuration")
    for t in targets:
        measure.wrk(bins, t.port, args.connections, 2, t.proc.pids(), t.tls)
    for r in range(args.rounds):
        # Rotate the order each round so no configuration always runs first or last.
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        res["order"].append([t.key for t in order])
        row = {}
        for t in order:
            # Other engineers' builds share the machine: a run in which they took more than
            # half of the proxy's core says little about the proxy; run it again (at most
            # STARVED_RETRIES times), and keep the count.
            for attempt in range(STARVED_RETRIES + 1):
                if not t.proc.alive():
                    raise RuntimeError(
                        f"{t.key} exited ({t.proc.popen.returncode}) during the run; its "
                        f"stderr ends with:\n{t.proc.stderr_tail(5)}"
                    )
                with churning(t, res) as churn:
                    run = measure.wrk(bins, t.port, args.connections, args.duration, t.proc.pids(),
                                      t.tls)
                if churn:
                    run["weight_changes"] = churn.ok
                run["retries"] = attempt
                if t.kind == "direct" or run["others_on_core"] <= STARVED:
                    break
                log(f"round {r + 1}: {t.key}: other processes took "
                    f"{run['others_on_core'] * 100:.0f} % of core {PROXY_CPU}: again")
            row[t.key] = run
            log(f"round {r + 1}: {t.key}: {row[t.key]['rps']:.0f} req/s, "
                f"{row[t.key]['cpu_us_per_req'] or 0:.1f} us CPU/req")
        res["rounds"].append(row)


def latency_phase(targets, bins, args, res):
    rate = args.rate
    if not rate:
        # Well below saturation for every proxy of this run: half the slowest median, at most
        # 5,000 req/s, rounded down to 500.
        medians = [
            statistics.median(r[t.key]["rps"] for r in res["rounds"])
            for t in targets if t.kind != "direct"
        ]
        rate = max(500, min(5000, int(min(medians) / 2) // 500 * 500))
    res["rate"] = rate
    for t in targets:
        with churning(t, res):
            res["latency"][t.key] = measure.oha(
                bins, t.port, rate, args.connections, args.latency_duration, t.tls
            )
        lat = res["latency"][t.key]
        log(f"{t.key}: at {rate} req/s p50 {lat['p50_ms']:.3f} ms p99 {lat['p99_ms']:.3f} ms")


def callgrind_phase(targets, bins, d, args, res):
    """Instructions per request: (I(base + n) - I(base)) / n, startup and shutdown cancelling.
    With `--cg-runs N` every target is measured N times (the targets interleaved) and the run
    with the median figure is kept: one run varies by about ±0.5 % (hash seeds, allocation
    addresses, background threads' timing), a same-run A/B of two builds wants the median."""
    runs = {}
    for r in range(max(1, args.cg_runs)):
        for t in targets:
            if not t.callgrind or t.key in res["callgrind_failed"]:
                continue
            try:
                runs.setdefault(t.key, []).append(callgrind_once(t, bins, d, args, res, r))
            except (RuntimeError, ValueError, OSError, subprocess.CalledProcessError) as e:
                # Valgrind 3.19 asserts on the Go runtime's signals (Caddy): one row's failure
                # leaves its figure out, not the run.
                lines = [x.strip() for x in str(e).splitlines() if x.strip()]
                why = next((x for x in lines if "Assertion" in x or "exited with" in x),
                           lines[-1] if lines else "failed")
                res["callgrind_failed"][t.key] = why
                runs.pop(t.key, None)
                log(f"{t.key}: callgrind failed, left out: {why}")
    for key, measured in runs.items():
        ordered = sorted(measured, key=lambda m: m["per_req"])
        median = ordered[(len(ordered) - 1) // 2]
        median["runs"] = [m["per_req"] for m in measured]
        res["callgrind"][key] = median
        spread = (f" (median of {len(measured)}: "
                  + ", ".join(f"{m['per_req']:,.0f}" for m in measured) + ")") if len(measured) > 1 else ""
        log(f"{key}: {median['per_req']:,.0f} instructions/request{spread}")


def callgrind_once(t, bins, d, args, res, run):
    """One measurement of target `t`: two callgrind runs (N1 and N2 requests)."""
    counts = (args.cg_base, args.cg_base + args.cg_requests)
    totals, funcs, threads = [], [], []
    for n in counts:
        name = f"cg-{t.key}-{n}-{run}"
        out = d / f"{name}.callgrind"
        # One profile per thread (`{out}-01`, ...), added up below; per thread in the JSON.
        wrap = [bins["valgrind"], "--tool=callgrind", "--separate-threads=yes",
                f"--callgrind-out-file={out}"]
        port = procs.free_port()
        proc = procs.start(t, bins, d, name, port, cpu=PROXY_CPU, wrap=wrap)
        res["commands"].setdefault(f"callgrind ({t.key})", shlex.join(proc.argv))
        try:
            procs.wait_ready(proc, port, ready(t), timeout=300)
            # The readiness check was the first request (and, over TLS, handshake: the
            # handshakes cancel out like startup, the requests are on one connection).
            measure.requests(port, n - 1, t.tls)
        finally:
            proc.stop(timeout=300)
        files = sorted(d.glob(f"{name}.callgrind-*")) or [out]
        threads.append({f.name.rsplit("-", 1)[-1]: measure.callgrind_total(f) for f in files})
        totals.append(sum(threads[-1].values()))
        merged = {}
        for f in files:
            for fn, v in measure.callgrind_functions(bins, f).items():
                merged[fn] = merged.get(fn, 0) + v
        funcs.append(merged)
    per_req = (totals[1] - totals[0]) / args.cg_requests
    names = set(funcs[0]) | set(funcs[1])
    per_fn = {
        f: (funcs[1].get(f, 0) - funcs[0].get(f, 0)) / args.cg_requests for f in names
    }
    return {
        "per_req": per_req,
        "totals": totals,
        "threads": threads,
        "counts": counts,
        "funcs": {f: v for f, v in per_fn.items() if abs(v) >= 1.0},
    }


def micro_phase(res):
    log("micro-benchmarks: cargo bench -p tenement-proxy --bench routing")
    # The load phases are over: the readers and the writer get both cores.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    r = subprocess.run(
        ["cargo", "bench", "-q", "--profile", "profiling", "-p", "tenement-proxy", "--bench", "routing"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if r.returncode != 0:
        res["micro"] = f"(cargo bench failed with status {r.returncode})\n\n```\n{r.stderr[-3000:]}\n```\n"
    else:
        res["micro"] = r.stdout


def main():
    args = parse_args()
    # SIGTERM (a stopped `make`) unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    bins = find_tools(args)
    t0 = time.monotonic()
    res = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(bins),
        "load_start": loadavg(),
        "args": vars(args),
        "commands": {},
        "rss": {},
        "rss_variants": {},
        "rounds": [],
        "order": [],
        "latency": {},
        "callgrind": {},
        "syscalls": {},
        "callgrind_failed": {},
        "plugins": "not run",
        "micro": "",
    }
    d = Path(tempfile.mkdtemp(prefix="ten-bench-"))
    log(f"work dir {d}")
    res["workdir"] = str(d)
    res["root"] = str(ROOT)
    up_port = procs.free_port()
    upstream = Target("direct", "upstream", "direct")
    targets = all_targets(up_port, d / "upstream.sock", with_pingap="pingap" in bins)
    res["peers_skipped"] = bins.pop("peers_skipped")
    for line in res["peers_skipped"]:
        log(line)
    # `pause` in --only selects the reload/upgrade pause phase (it runs its own ten), `scaling`
    # the two-core phase (its own ten and nginx, 1 and 2 workers each).
    phases = ("pause", "scaling")
    run_pause = not args.no_pause and (not args.only or "pause" in args.only.split(","))
    run_scaling = not args.no_scaling and (not args.only or "scaling" in args.only.split(","))
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {t.key for t in targets} - set(phases)
        if unknown:
            sys.exit(f"bench: --only: unknown configuration(s) {', '.join(sorted(unknown))}; "
                     f"known: {', '.join([t.key for t in targets] + list(phases))}")
        targets = [t for t in targets if t.key in keep]
    for t in targets:
        if t.kind in ("haproxy", "caddy") and t.kind not in bins:
            sys.exit(f"bench: {t.kind} not found: `make bench` installs it (or leave `{t.key}` "
                     "out with --only)")
    # Started once the arguments are known good: an early exit above leaves nothing running.
    up = procs.start(upstream, bins, d, "upstream", up_port, cpu=LOAD_CPU)
    res["commands"]["upstream"] = shlex.join(up.argv)
    for t in targets:
        if t.kind == "direct":
            t.port, t.proc = up_port, up
    running = []
    try:
        procs.wait_ready(up, up_port, measure.check_ok)
        running = start_proxies(targets, bins, d, res)
        res["targets"] = [t.key for t in running]
        res["labels"] = {t.key: t.label for t in running}
        res["kinds"] = {t.key: t.kind for t in running}
        res["configs"] = {
            t.key: (d / t.config_file(t.key)).read_text()
            for t in running if t.config_file(t.key) and not t.shares
        }
        res["configs"]["upstream"] = (d / "upstream.conf").read_text()
        res["commands"]["wrk"] = shlex.join(measure.wrk_cmd(bins, "PORT", args.connections, args.duration))
        if running:  # (none with `--only pause` or `--only scaling`)
            rss_phase(running, res, args.idle_conns)
            rss_variants(running, bins, d, res, args.idle_conns)
            load_phase(running, bins, args, res)
            latency_phase(running, bins, args, res)
            if not args.no_syscalls:
                syscall_phase(running, bins, d, args, res)
            res["commands"]["oha"] = shlex.join(
                measure.oha_cmd(bins, "PORT", res["rate"], args.connections, args.latency_duration)
            )
            for t in running:
                if t.kind != "direct" and not t.shares:
                    t.proc.stop()
        if run_scaling:
            scaling.scaling_phase(bins, d, up, up_port, args, res)
        if running and not args.no_callgrind:
            callgrind_phase(running, bins, d, args, res)
        if run_pause:
            pause.pause_phase(bins, d, up_port, args, res)
    finally:
        for t in running:
            if t.proc is not None and t.kind != "direct":
                t.proc.stop()
        up.stop()
    if not args.no_micro:
        micro_phase(res)
    res["load_end"] = loadavg()
    res["minutes"] = (time.monotonic() - t0) / 60
    # The raw results sit beside the report: a partial run (`--out /tmp/b.md`) never
    # replaces those of the last full one.
    out = Path(args.out)
    dump = (ROOT / "target" / "bench" / "results.json" if out.resolve() == (ROOT / "BENCHMARKS.md").resolve()
            else out.with_suffix(".json"))
    dump.parent.mkdir(parents=True, exist_ok=True)
    dump.write_text(json.dumps(res, indent=1, default=str))
    Path(args.out).write_text(report.render(res))
    log(f"wrote {args.out} (raw results: {dump}) in {res['minutes']:.1f} min")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    else:
        log(f"kept {d}")


if __name__ == "__main__":
    main()
