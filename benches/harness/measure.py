"""Measurements: wrk at saturation, oha at a fixed rate, CPU and RSS from /proc, a tiny
keep-alive HTTP client (readiness, idle connections, callgrind traffic), callgrind totals and
per-function costs."""

import json
import os
import re
import resource
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from procs import HOST, LOAD_CPU, PROXY_CPU, task_files

REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: ten-bench\r\n\r\n".encode()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tls_context():
    """A TLS 1.3 client context trusting anything (the run's self-signed certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Conn:
    """One keep-alive HTTP/1.1 connection (over TLS 1.3 with `tls`); responses must carry
    Content-Length."""

    def __init__(self, port, timeout=30.0, sock=None, tls=False):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = tls_context().wrap_socket(self.sock, server_hostname=HOST)
        self.buf = b""

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def get(self, request=REQUEST):
        """(status, headers, body) of one request (GET / by default)."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" not in headers:
            raise ValueError(f"response without Content-Length: {lines[0]}")
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self._recv()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def close(self):
        self.sock.close()


class Churn:
    """While running: set `up:0`'s weight to 30, 70, 30, ... every `interval` over ten's control
    socket (`PUT /api/instances/up:0/weight`), each change one table swap (issue 5's load)."""

    def __init__(self, control_socket, interval=0.1):
        self.path = str(control_socket)
        self.interval = interval
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        conn = Conn(0, sock=s)
        i = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                body = json.dumps({"weight": 30 if i % 2 == 0 else 70}).encode()
                req = (
                    b"PUT /api/instances/up:0/weight HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                status, _, _ = conn.get(req)
                if status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                i += 1
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            conn.close()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def check_ok(port, tls=False):
    """Raise unless GET / answers 200 "ok"; the response headers when it does."""
    c = Conn(port, timeout=5.0, tls=tls)
    try:
        status, headers, body = c.get()
    finally:
        c.close()
    if status != 200 or body != b"ok":
        raise ValueError(f"GET / answered {status} {body[:80]!r}")
    return headers


def requests(port, n, tls=False):
    """Send `n` requests one after another on one keep-alive connection."""
    c = Conn(port, tls=tls)
    try:
        for _ in range(n):
            status, _, _ = c.get()
            if status != 200:
                raise RuntimeError(f"status {status} during the callgrind run")
    finally:
        c.close()


def open_idle(port, n, tls=False):
    """`n` keep-alive connections, each after one request/response, left open."""
    conns = []
    for _ in range(n):
        c = Conn(port, tls=tls)
        status, _, _ = c.get()
        if status != 200:
            raise RuntimeError(f"status {status} while opening idle connections")
        conns.append(c)
    return conns


def cpu_split(pids):
    """(utime, stime) of the processes (all their threads), in clock ticks."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        user += int(fields[11])  # field 14 of stat(5)
        system += int(fields[12])  # field 15
    return user, system


def cpu_ticks(pids):
    """utime + stime of the processes (all their threads), in clock ticks."""
    return sum(cpu_split(pids))


def voluntary_switches(pids):
    """Voluntary context switches of every thread of the processes: each is the thread going
    to sleep (epoll_wait, a futex) and so, later, one wakeup."""
    total = 0
    for _, text in task_files(pids, "status"):
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def memory(pids):
    """{rss, anon, file, threads} summed over the processes, rss in kB."""
    out = {"rss": 0, "anon": 0, "file": 0, "threads": 0}
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "Threads": "threads"}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k in keys:
                out[keys[k]] += int(v.split()[0])
    return out


def wrk_cmd(bins, port, conns, duration, tls=False, threads=1, cpus=LOAD_CPU):
    return [
        "taskset", "-c", cpus, str(bins["wrk"]), f"-t{threads}", f"-c{conns}", f"-d{duration}s",
        "--latency", "-H", f"Host: {HOST}", f"{'https' if tls else 'http'}://127.0.0.1:{port}/",
    ]


def _num(pattern, text, cast=float, default=None):
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else default


def core_busy_ticks(cpu):
    """Busy clock ticks of one core since boot (/proc/stat: all but idle and iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)
    return 0


def wrk(bins, port, conns, duration, pids, tls=False):
    """Saturation run: req/s, requests, errors, the CPU the `pids` spent meanwhile, and the
    share of the proxy core that other processes of the machine took."""
    cmd = wrk_cmd(bins, port, conns, duration, tls)
    before = cpu_split(pids)
    core_before = core_busy_ticks(PROXY_CPU)
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    after = cpu_split(pids)
    user, system = after[0] - before[0], after[1] - before[1]
    core = core_busy_ticks(PROXY_CPU) - core_before
    run = wrk_figures(out, user, system, wall)
    # Meaningful for a proxy pinned on PROXY_CPU (for `direct`, everything there is other).
    run["others_on_core"] = max(0.0, (core - user - system) / CLK_TCK / wall)
    return run


def wrk_figures(out, user, system, wall):
    """What a wrk run printed (`out`), with the proxy's CPU over it (clock ticks) per request."""
    ticks = user + system
    reqs = _num(r"(\d+) requests in", out, int, 0)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": _num(r"Requests/sec:\s+([\d.]+)", out, float, 0.0),
        "requests": reqs,
        "non2xx": _num(r"Non-2xx or 3xx responses: (\d+)", out, int, 0),
        "socket_errors": sum(int(x) for x in errs.groups()) if errs else 0,
        "cpu_us_per_req": ticks * 1e6 / CLK_TCK / reqs if reqs else None,
        "cpu_user_us_per_req": user * 1e6 / CLK_TCK / reqs if reqs else None,
        "cpu_sys_us_per_req": system * 1e6 / CLK_TCK / reqs if reqs else None,
        "cpu_busy": ticks / CLK_TCK / wall,
    }


def wrk_shared(bins, port, conns, threads, duration, cpus, pids, upstream_pids):
    """Saturation run with the proxy, the upstream and wrk all on the cores `cpus` (the scaling
    phase): `wrk_figures`, plus the cores each of them kept busy on average (`proxy_cores`,
    `upstream_cores`, `load_cores`: wrk's own CPU, from this process's reaped children) and
    what the rest of the machine took from those cores (`others_cores`); the proxy's voluntary
    context switches per request (`wakeups_per_req`, as in `syscalls`, no idle window
    subtracted)."""
    cmd = wrk_cmd(bins, port, conns, duration, threads=threads, cpus=cpus)
    cores = cpus.split(",")
    before, up_before = cpu_split(pids), cpu_ticks(upstream_pids)
    sw_before = voluntary_switches(pids)
    busy_before = sum(core_busy_ticks(c) for c in cores)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, up_after = cpu_split(pids), cpu_ticks(upstream_pids)
    sw = voluntary_switches(pids) - sw_before
    busy = (sum(core_busy_ticks(c) for c in cores) - busy_before) / CLK_TCK
    run = wrk_figures(out, after[0] - before[0], after[1] - before[1], wall)
    load = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    proxy = run["cpu_busy"] * wall
    upstream = (up_after - up_before) / CLK_TCK
    run.update({
        "wall": wall,
        "proxy_cores": proxy / wall,
        "upstream_cores": upstream / wall,
        "load_cores": load / wall,
        "others_cores": max(0.0, (busy - proxy - upstream - load) / wall),
        # The proxy's threads going to sleep (and so later woken), per request.
        "wakeups_per_req": sw / run["requests"] if run["requests"] else None,
    })
    return run


def oha_cmd(bins, port, rate, conns, duration, tls=False):
    return [
        "taskset", "-c", LOAD_CPU, str(bins["oha"]), "-q", str(rate), "--latency-correction",
        "-z", f"{duration}s", "-c", str(conns), "--no-tui", "--output-format", "json",
        *(["--insecure"] if tls else []),
        "-H", f"Host: {HOST}", f"{'https' if tls else 'http'}://127.0.0.1:{port}/",
    ]


def oha(bins, port, rate, conns, duration, tls=False):
    """Fixed-rate run: latency percentiles in ms, and the achieved rate."""
    cmd = oha_cmd(bins, port, rate, conns, duration, tls)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    pct = data.get("latencyPercentiles", {})
    summary = data.get("summary", {})
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    return {
        "p50_ms": pct["p50"] * 1e3 if pct.get("p50") is not None else None,
        "p99_ms": pct["p99"] * 1e3 if pct.get("p99") is not None else None,
        "rps": summary.get("requestsPerSec"),
        "non2xx": sum(codes.values()) - ok,
        # Requests cut by the end of the run are not errors.
        "error_kinds": data.get("errorDistribution", {}),
        "errors": sum(v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k),
    }


def callgrind_total(path):
    """Instructions of a callgrind profile (its `totals:` or `summary:` line)."""
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


_HASH = re.compile(r"::h[0-9a-f]{16}")
_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def callgrind_functions(bins, path):
    """{function: self instructions} of a profile, via callgrind_annotate."""
    out = subprocess.run(
        [bins["callgrind_annotate"], "--inclusive=no", "--threshold=100", "--auto=no", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = {}
    # Only the section after the "Ir  file:function" header.
    section = out.split("file:function", 1)[-1]
    for line in section.splitlines():
        m = _LINE.match(line)
        if not m or "PROGRAM TOTALS" in line or ":" not in m.group(2):
            continue
        # "file:function [object]" (the file has no ':'); one function may appear under several
        # files (inlined code): add them up.
        fn = m.group(2).split(":", 1)[1]
        fn = _HASH.sub("", re.sub(r"\s*\[[^\]]*\]$", "", fn))
        costs[fn] = costs.get(fn, 0) + int(m.group(1).replace(",", ""))
    return costs


class SyscallCounter:
    """Counts the system calls of running processes (every thread) between start() and stop():
    perf's `raw_syscalls:sys_enter` tracepoint (`perf stat -p`, counting only, no sampling),
    else `strace -c -f` (which slows every call down: only its count is used)."""

    def __init__(self, bins, pids, workdir, name):
        self.pids = [str(p) for p in pids]
        self.out = Path(workdir) / f"{name}.syscalls"
        if bins.get("perf"):
            self.method = "perf"
            self.argv = [bins["perf"], "stat", "-x", ",", "-e", "raw_syscalls:sys_enter",
                         "-o", str(self.out), "-p", ",".join(self.pids)]
        else:
            self.method = "strace"
            self.argv = [bins["strace"], "-c", "-f", "-q", "-o", str(self.out),
                         *[a for p in self.pids for a in ("-p", p)]]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # What is counted: from here to the signal in stop() (`counted`, seconds).
        self.t0 = time.monotonic()
        self.counted = 0.0
        # Both attach asynchronously: give them time to reach every thread.
        time.sleep(0.5)

    def stop(self):
        """The number of system calls counted."""
        self.counted = time.monotonic() - self.t0
        self.proc.send_signal(2)  # SIGINT: both print their counts and exit
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        text = self.out.read_text(errors="replace") if self.out.exists() else ""
        if self.method == "perf":
            for line in text.splitlines():
                cells = line.split(",")
                if len(cells) > 2 and "raw_syscalls:sys_enter" in line:
                    # "<not counted>": no thread ran while counting (an idle nginx).
                    return int(cells[0]) if cells[0].isdigit() else 0
        else:
            # The last line of `strace -c`: "% time, seconds, usecs/call, calls, errors, total".
            m = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total\s*$", text, re.M)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"{self.method} counted nothing ({self.argv[0]}): {text[-300:]!r}")


def syscalls(bins, port, conns, duration, pids, workdir, name, idle_seconds=2.0, tls=False):
    """System calls and wakeups per request: a wrk run with the counter attached, minus an idle
    window of the same process (timers, housekeeping threads) scaled to the run's length.
    Wakeups: voluntary context switches of all the process's threads."""
    idle = SyscallCounter(bins, pids, workdir, f"{name}-idle")
    idle.start()
    sw0 = voluntary_switches(pids)
    t0 = time.monotonic()
    time.sleep(idle_seconds)
    idle_wall = time.monotonic() - t0
    idle_sw = voluntary_switches(pids) - sw0
    idle_calls = idle.stop()
    busy = SyscallCounter(bins, pids, workdir, f"{name}-busy")
    busy.start()
    sw0 = voluntary_switches(pids)
    c0 = cpu_split(pids)
    t0 = time.monotonic()
    out = subprocess.run(wrk_cmd(bins, port, conns, duration, tls), capture_output=True,
                         text=True, check=True).stdout
    wall = time.monotonic() - t0
    c1 = cpu_split(pids)
    sw = voluntary_switches(pids) - sw0
    calls = busy.stop()
    reqs = _num(r"(\d+) requests in", out, int, 0)
    if not reqs:
        return None
    # Wakeups were read over `wall` and `idle_wall`; the counters ran a little longer each
    # (attaching, stopping): scale the idle count by the windows they actually counted.
    scale = wall / idle_wall
    calls_scale = busy.counted / idle.counted if idle.counted else scale
    return {
        "method": busy.method,
        "requests": reqs,
        "syscalls": calls,
        "idle_syscalls": idle_calls,
        "idle_seconds": idle_wall,
        "wall": wall,
        "syscalls_per_req": max(0.0, calls - idle_calls * calls_scale) / reqs,
        "wakeups_per_req": max(0.0, sw - idle_sw * scale) / reqs,
        "cpu_user_us_per_req": (c1[0] - c0[0]) * 1e6 / CLK_TCK / reqs,
        "cpu_sys_us_per_req": (c1[1] - c0[1]) * 1e6 / CLK_TCK / reqs,
    }
