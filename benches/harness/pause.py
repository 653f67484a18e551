"""The reload and upgrade pause (issue 20, SPEC §11): under a fixed request rate, latency
(p50, p99, p99.9, max) and errors during a `ten reload` that changes a route and during a
`ten upgrade` to the same binary, against the same window with neither (steady). One `ten serve`
of its own (the `ten` configuration plus a `[routes]` entry the reloads toggle), on the proxy
core; oha on the load core; each window `--pause-window` seconds, the action started 40 % into
it; every kind once per round, the order rotated like the load phase's."""

import json
import os
import re
import signal
import subprocess
import time

import measure
import procs
from procs import HOST, LOAD_CPU, PROXY_CPU, Target

KINDS = ("steady", "reload", "upgrade")


def log(msg):
    print(f"bench: pause: {msg}", flush=True)


def conf_text(d, port, upstream, n):
    """The `ten` configuration with a short drain (the upgraded-from process exits once its
    connections close, at most 2 s after the window) and route `r{n}.bench.test`."""
    text = procs.ten_conf(d, "pause", port, upstream)
    text = text.replace("[settings]\n", '[settings]\ndrain_timeout = "2s"\n', 1)
    return text + f'\n[routes]\n"r{n}.{procs.DOMAIN}" = "up"\n'


def cli(bins, conf, *args):
    r = subprocess.run([str(bins["ten"]), "--config", str(conf), *args],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (the bench's own child, not yet reaped) is gone for this purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid, limit=30.0):
    deadline = time.monotonic() + limit
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def oha_window(bins, port, rate, conns, seconds):
    cmd = [
        "taskset", "-c", LOAD_CPU, str(bins["oha"]), "-q", str(rate), "--latency-correction",
        "-z", f"{seconds}s", "-c", str(conns), "--no-tui", "--output-format", "json",
        "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/",
    ]
    return cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summarize(out):
    data = json.loads(out)
    pct = data.get("latencyPercentiles", {})
    summary = data.get("summary", {})
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    ms = lambda v: v * 1e3 if v is not None else None  # noqa: E731
    errors = {k: v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k}
    return {
        "requests": sum(codes.values()),
        "p50_ms": ms(pct.get("p50")),
        "p99_ms": ms(pct.get("p99")),
        "p999_ms": ms(pct.get("p99.9")),
        "max_ms": ms(summary.get("slowest")),
        "rps": summary.get("requestsPerSec"),
        "non2xx": sum(codes.values()) - ok,
        # Requests cut by the end of the window are not errors.
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


class PauseTen:
    """The `ten serve` of this phase; follows its pid across upgrades."""

    def __init__(self, bins, d, upstream):
        self.bins, self.d = bins, d
        self.port = procs.free_port()
        self.n = 0
        self.conf = d / "pause.toml"
        self.conf.write_text(conf_text(d, self.port, upstream, self.n))
        self.upstream = upstream
        argv = ["taskset", "-c", PROXY_CPU, bins["ten"], "serve", "--config", self.conf]
        self.proc = procs.Proc("pause", argv, d, stop_signal=signal.SIGINT)
        self.pid = self.proc.pid
        self.old = None  # the pid an upgrade replaced (draining)

    def reload(self):
        self.n += 1
        self.conf.write_text(conf_text(self.d, self.port, self.upstream, self.n))
        rc, out = cli(self.bins, self.conf, "reload")
        if rc != 0 or f"route + r{self.n}." not in out:
            raise RuntimeError(f"ten reload failed ({rc}): {out}")
        return out

    def upgrade(self):
        rc, out = cli(self.bins, self.conf, "upgrade")
        m = re.search(r"pid (\d+) -> pid (\d+)", out)
        if rc != 0 or not m:
            raise RuntimeError(f"ten upgrade failed ({rc}): {out}")
        self.old, self.pid = int(m.group(1)), int(m.group(2))
        return out

    def settle(self):
        """Before a window: the process an upgrade replaced has exited."""
        if self.old is not None:
            self.proc.popen.poll()  # reap it when it was the bench's own child
            if not wait_gone(self.old):
                raise RuntimeError(f"the upgraded-from ten (pid {self.old}) still runs after 30 s")
            self.old = None

    def stop(self):
        self.proc.stop()
        if self.pid != self.proc.pid and alive(self.pid):
            os.kill(self.pid, signal.SIGINT)
            if not wait_gone(self.pid, 60):
                os.kill(self.pid, signal.SIGKILL)


def window(ten, kind, bins, rate, conns, seconds):
    ten.settle()
    cmd, oha = oha_window(bins, ten.port, rate, conns, seconds)
    took = None
    try:
        time.sleep(seconds * 0.4)
        t0 = time.monotonic()
        if kind == "reload":
            ten.reload()
        elif kind == "upgrade":
            ten.upgrade()
        took = time.monotonic() - t0 if kind != "steady" else None
        out, err = oha.communicate(timeout=seconds + 60)
    finally:
        if oha.poll() is None:
            oha.kill()
            oha.wait()
    if oha.returncode != 0:
        raise RuntimeError(f"oha failed ({oha.returncode}): {err[-500:]}")
    r = summarize(out)
    r["action_s"] = took
    return cmd, r


def pause_phase(bins, d, up_port, args, res):
    rate = args.pause_rate
    seconds = args.pause_window
    rounds = max(1, args.rounds)
    res["pause"] = {"rate": rate, "window_s": seconds, "conns": args.pause_conns, "rounds": [],
                    "kinds": list(KINDS)}
    ten = PauseTen(bins, d, f"127.0.0.1:{up_port}")
    try:
        procs.wait_ready(ten.proc, ten.port, measure.check_ok)
        res["configs"]["pause"] = ten.conf.read_text()
        for r in range(rounds):
            order = KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]
            row = {}
            for kind in order:
                cmd, row[kind] = window(ten, kind, bins, rate, args.pause_conns, seconds)
                res["commands"].setdefault("oha (pause)", " ".join(map(str, cmd)))
                w = row[kind]
                # No percentiles when every request failed (oha reports none): say "–".
                ms = {k: "–" if w.get(k) is None else f"{w[k]:.2f}" for k in ("p99_ms", "max_ms")}
                log(f"round {r + 1}: {kind}: p99 {ms['p99_ms']} ms, max {ms['max_ms']} ms, "
                    f"{w['errors']} errors, {w['non2xx']} non-2xx of {w['requests']}")
            res["pause"]["rounds"].append(row)
    finally:
        ten.stop()


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def section(res, out):
    """BENCHMARKS.md: the pause table (nothing when the phase did not run)."""
    p = res.get("pause")
    if not p or not p.get("rounds"):
        return
    rounds = p["rounds"]
    out += [
        "## Reload and upgrade pause (issue 20)\n",
        f"`ten serve` (the `ten` configuration plus a `[routes]` entry) under oha at a fixed "
        f"{p['rate']} req/s over {p['conns']} connections, in windows of {p['window_s']} s: "
        "`steady` (nothing happens), `reload` (`ten reload` of a file whose route changed, 40 % "
        "into the window: a table swap) and `upgrade` (`ten upgrade` to the same binary, 40 % "
        f"into the window: the new process takes the sockets, the old one drains). {len(rounds)} "
        "round(s), the kinds interleaved; latencies are the median over the rounds, max the "
        "largest, errors and non-2xx the sums. A shared machine's p99 and max measure scheduling "
        "hiccups too: compare the rows with each other, measured minutes apart in the same run.\n",
        "| window | p50 ms | p99 ms | p99.9 ms | max ms | errors | non-2xx | requests | action s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for kind in p["kinds"]:
        ws = [r[kind] for r in rounds if kind in r]
        maxes = [w["max_ms"] for w in ws if w["max_ms"] is not None]
        out.append(
            f"| {kind} | {f(_median(w['p50_ms'] for w in ws))} | {f(_median(w['p99_ms'] for w in ws))} "
            f"| {f(_median(w['p999_ms'] for w in ws))} | {f(max(maxes) if maxes else None)} "
            f"| {sum(w['errors'] for w in ws)} | {sum(w['non2xx'] for w in ws)} "
            f"| {sum(w['requests'] for w in ws)} | {f(_median(w['action_s'] for w in ws))} |"
        )
    kinds = {k for r in rounds for w in r.values() for k in w["error_kinds"]}
    if kinds:
        out.append("")
        out.append("Errors by kind: " + "; ".join(sorted(kinds)))
    out.append("")
