"""BENCHMARKS.md from the results of one run. Every number printed here comes from `res`."""

import re
import statistics

import pause
import scaling

ALLOC = re.compile(
    r"^(_int_(malloc|free|realloc|memalign)|malloc|free|realloc|calloc|cfree|malloc_consolidate"
    r"|unlink_chunk.*|tcache_.*|__libc_(malloc|free|realloc|calloc)|__GI___libc_(malloc|free)"
    r"|(__rustc::)?__rust_(alloc|dealloc|realloc|alloc_zeroed)|(__rustc::)?__rdl_\w+"
    r"|_?mi_\w+|_?rjem_\w+|je_\w+|.*GlobalAlloc>::(alloc|dealloc|realloc|alloc_zeroed))$"
)
MIMALLOC = re.compile(r"^_?mi_\w+$")
JEMALLOC = re.compile(r"^(_?rjem_|je_)\w+$")
MEMCPY = re.compile(r"mem(cpy|move)")
# A run in which other processes took more than this share of the proxy's core is shown but
# left out of medians and ratios (the driver already ran it again, up to twice).
STARVED = 0.5

# What a function name in ten's extra cost (over the floor) points at in ten's code. A hint is
# printed only when its pattern is among the largest additions of this run.
HINTS = [
    (r"prometheus|histogram|InstanceMetrics|metrics::",
     "Prometheus on the hot path (`proxy/src/metrics.rs`: a histogram observe and counters per "
     "request, the in-flight gauge inc/dec): see the metrics on/off rows for its measured cost."),
    (r"insert_header|append_header_value|HeaderName::from|HeaderValue|header::map|try_insert|"
     r"IntoCaseHeaderName|CaseMap|try_grow",
     "Header work, the largest share: SPEC §3 requires `X-Forwarded-For/Proto/Host` and "
     "`X-Request-Id` on the upstream request and `X-Request-Id` on the response. Each goes "
     "through Pingora's `insert_header`, which parses and allocates the name and inserts it into "
     "two maps (the values and the case-preserving names), growing both when full: a request "
     "that carries only `Host`, as here, starts them at capacity 1. `pingora-http` keeps the "
     "maps private, so ten cannot reserve room ahead; the values themselves are built without "
     "formatting (`service.rs`: request id from a stack buffer, one `HeaderValue` shared by the "
     "upstream request and the response; the client IP written by hand; `http`/`https` static) "
     "and the `X-Forwarded-*`/hop-by-hop checks are one scan of the names, not hashed lookups."),
    (r"pingora_timeout|register_timer|TimerManager",
     "`request_timeout` (SPEC: upstream response timeout → 504) is Pingora's peer "
     "`read_timeout`/`write_timeout`: Pingora arms a timer when an upstream read or write does "
     "not complete at once (the response read, once per request); the floor sets none."),
    (r"Instant::now|clock_gettime|__vdso|Timespec",
     "Clock reads: one `Instant::now` per request (`Ctx::start`, also the instance's "
     "last-request stamp), `elapsed()` in `logging` for the latency histogram; Pingora's timers "
     "read the clock too."),
    (r"tracing|callsite|Dispatch|dispatcher",
     "`tracing` callsite checks on the hot path."),
    (r"arc_swap|ArcSwap|HybridStrategy|debt",
     "The table `load()` (arc-swap's debt slots): lock-free, a few dozen instructions."),
    (r"drop_in_place<tenement_proxy|Ctx|InFlight|TrafficGuard|GaugeGuard",
     "Per-request context: `Ctx` carries Arcs (traffic guard, target, backend, in-flight) whose "
     "clones and drops are atomic operations."),
]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


def f1(x):
    return "–" if x is None else f"{x:,.1f}"


def f3(x):
    return "–" if x is None else f"{x:.3f}"


def rx(x):
    return "–" if x is None else f"{x:.2f}x"


def pct(x):
    return "–" if x is None else f"{x * 100:+.1f} %"


def mb(kb):
    return "–" if kb is None else f"{kb / 1024:.1f}"


def code(name, width=120):
    name = name if len(name) <= width else name[: width - 1] + "…"
    return "`" + name.replace("|", "\\|").replace("`", "'") + "`"


class View:
    """Derived figures over the raw results."""

    def __init__(self, res):
        self.res = res
        self.keys = res.get("targets", [])
        self.rounds = res.get("rounds", [])
        self.cg = res.get("callgrind", {})

    def has(self, k):
        return k in self.keys and all(k in r for r in self.rounds)

    def starved(self, r, k):
        """Other processes took more than half of the proxy's core during this run."""
        return self.res["kinds"].get(k) != "direct" and r[k].get("others_on_core", 0) > STARVED

    def good(self, k):
        """The rounds whose run of `k` counts."""
        return [r for r in self.rounds if k in r and not self.starved(r, k)] if self.has(k) else []

    def rps(self, k):
        return med(r[k]["rps"] for r in self.good(k))

    def others(self, k):
        return med(r[k].get("others_on_core") for r in self.rounds) if self.has(k) else None

    def ref(self, k, base):
        """The same-transport reference: nginx-unix for a unix-socket row, nginx-tls for a TLS
        row, else nginx."""
        for suffix in ("-unix", "-tls"):
            if k.endswith(suffix) and self.has(f"{base}{suffix}"):
                return f"{base}{suffix}"
        return base if self.has(base) else None

    def ratios(self, k, ref):
        if not ref or not self.has(k) or not self.has(ref):
            return []
        return [
            r[k]["rps"] / r[ref]["rps"] for r in self.rounds
            if r[ref]["rps"] and not self.starved(r, k) and not self.starved(r, ref)
        ]

    def ratio(self, k, ref):
        return med(self.ratios(k, ref))

    def cpu(self, k):
        return med(r[k]["cpu_us_per_req"] for r in self.good(k))

    def cpu_split(self, k):
        """(user, system) CPU µs/request, medians of the rounds (None in results of a driver
        that did not split them)."""
        return (med(r[k].get("cpu_user_us_per_req") for r in self.good(k)),
                med(r[k].get("cpu_sys_us_per_req") for r in self.good(k)))

    def sys(self, k):
        return self.res.get("syscalls", {}).get(k)

    def busy(self, k):
        return med(r[k]["cpu_busy"] for r in self.good(k))

    def instr(self, k):
        return self.cg.get(k, {}).get("per_req")

    def lat(self, k, p):
        return self.res.get("latency", {}).get(k, {}).get(p)

    def rss(self, k, which):
        return self.res.get("rss", {}).get(k, {}).get(which, {}).get("rss")

    def errors(self, k):
        n = sum(r[k]["non2xx"] + r[k]["socket_errors"] for r in self.rounds if k in r)
        lat = self.res.get("latency", {}).get(k, {})
        return n + (lat.get("non2xx") or 0) + (lat.get("errors") or 0)

    def share(self, k, pattern):
        fns = self.cg.get(k, {}).get("funcs", {})
        total = self.instr(k)
        if not fns or not total:
            return None
        return sum(v for f, v in fns.items() if pattern.search(f)) / total

    def delta(self, k, base, n):
        a = self.cg.get(k, {}).get("funcs", {})
        b = self.cg.get(base, {}).get("funcs", {})
        rows = [(f, a.get(f, 0.0), b.get(f, 0.0)) for f in set(a) | set(b)]
        rows = [(f, x, y, x - y) for f, x, y in rows]
        rows.sort(key=lambda r: (-r[3], r[0]))  # ties by name: the same report every render
        return rows[:n]


def section_machine(res, out):
    m = res["machine"]
    a = res["args"]
    out += [
        "## Machine and versions\n",
        f"- CPU: {m['nproc']} x {m['cpu']}; kernel {m['kernel']}",
        f"- load average (1/5/15 min) at start {' / '.join(res['load_start'])}, at end "
        f"{' / '.join(res.get('load_end', ['?'] * 3))}: the machine is shared with other "
        "engineers' builds and tests, so absolute req/s are noisy; compare the per-round ratios.",
        f"- ten: {m['ten']}; Pingora {m['pingora']} (floor and ten alike); {m['rustc']}",
        f"- {m['nginx']}; {m.get('haproxy', 'HAProxy: not recorded')}; "
        f"{m.get('caddy', 'Caddy: not recorded')}",
        f"- {m['wrk']}; {m['oha']}; {m['valgrind']}; system calls counted with "
        f"{m.get('syscalls', 'not measured')}",
        f"- run: {res['started']}, {res['minutes']:.1f} min; {a['rounds']} rounds x {a['duration']} s "
        f"per configuration, {a['connections']} connections\n",
    ]


def short(res, text):
    """Paths of this run made readable: the work dir as $WORK, the repository as `.`."""
    if res.get("workdir"):
        text = text.replace(res["workdir"], "$WORK")
    if res.get("root"):
        text = text.replace(res["root"] + "/", "./")
    return text


def section_setup(res, v, out):
    a = res["args"]
    out += [
        "## Setup\n",
        "All on 127.0.0.1. The proxy under test runs alone on core 0 (`taskset -c 0`; one worker "
        "thread: nginx `worker_processes 1`, Pingora `threads: 1`, ten sizes its runtime from the "
        "affinity mask); the load generator and the upstream share core 1. The upstream, the same "
        "for every row, is nginx answering `return 200 \"ok\"` on TCP and on a unix socket. Every "
        "client sends `Host: up.bench.test`. All configurations run in the same session; each "
        f"round runs every configuration once ({a['duration']} s of wrk each), the order rotated "
        "from round to round.\n",
        "| configuration | what |",
        "|---|---|",
    ]
    for k in v.keys:
        out.append(f"| `{k}` | {res['labels'][k]} |")
    out.append("")
    out += [
        "nginx is configured to do ten's work: route by Host (a `default_server` answers 404), "
        "add `X-Forwarded-For/Proto/Host` and `X-Request-Id` (also on the response), upstream "
        "keepalive done right. HAProxy and Caddy are configured the same way (one thread / "
        "`GOMAXPROCS=1` on the same pinned core, the same headers added, 64 idle upstream "
        "connections kept; their configs are below). The floor adds nothing: Pingora's defaults, "
        "one fixed upstream.\n",
        "Commands (ports are picked at run time; `$WORK` is the run's temporary directory):\n",
        "```sh",
    ]
    cmds = res["commands"]
    for k in ("upstream", "nginx", "haproxy", "caddy", "pingap", "tenement-0.2.1", "floor",
              "floor-buf0", "ten", "nginx-tls", "ten-tls", "wrk",
              "oha", "callgrind (nginx)", "callgrind (floor)", "callgrind (ten)"):
        if k in cmds:
            out.append(f"# {k}\n{short(res, cmds[k])}")
    out += ["```\n"]
    confs = res.get("configs", {})
    for k, lang in (("upstream", "nginx"), ("nginx", "nginx"), ("haproxy", "haproxy"),
                    ("caddy", "caddyfile"), ("pingap", "toml"), ("tenement-0.2.1", "toml"),
                    ("ten", "toml"),
                    ("ten-plugins", "toml"), ("ten-2up", "toml"), ("ten-accesslog", "toml"),
                    ("nginx-tls", "nginx"), ("ten-tls", "toml")):
        if k in confs:
            out += [f"<details><summary>{k} config</summary>\n", f"```{lang}",
                    short(res, confs[k]).rstrip(), "```", "</details>\n"]


def section_results(res, v, out):
    rate = res.get("rate")
    n = res["args"]["idle_conns"]
    out += [
        "## Results\n",
        f"req/s: wrk at saturation, median of the rounds. Ratios: median of the per-round ratios "
        f"(unix-socket rows against the unix-socket reference). Latency: oha at a fixed "
        f"{f0(rate)} req/s with `--latency-correction`. CPU: the proxy's utime+stime over the wrk "
        f"runs / requests. RSS: VmRSS after start, and with {n} idle keep-alive connections open. "
        "Instructions: callgrind, per request, startup cancelled. *others*: the share of "
        "the proxy's core that other processes of the machine took during its wrk runs "
        f"(median); a run where they took more than {STARVED * 100:.0f} % was run again (at "
        "most twice) and, if still so, is marked `*` below and left out of medians and ratios.\n",
        f"| configuration | req/s | vs nginx | vs floor | p50 ms | p99 ms | CPU µs/req | "
        f"user + sys | core busy | others | RSS idle MB | RSS {n} conns MB | instructions/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for k in v.keys:
        name = f"`{k}`"
        if v.errors(k):
            name += " ⚠"
            notes.append(f"- ⚠ `{k}`: {v.errors(k)} non-2xx responses or socket errors in its runs.")
        busy = v.busy(k)
        out.append(
            f"| {name} | {f0(v.rps(k))} | {rx(v.ratio(k, v.ref(k, 'nginx')))} | "
            f"{rx(v.ratio(k, v.ref(k, 'floor')))} | {f3(v.lat(k, 'p50_ms'))} | {f3(v.lat(k, 'p99_ms'))} | "
            f"{f1(v.cpu(k))} | {f1(v.cpu_split(k)[0])} + {f1(v.cpu_split(k)[1])} | "
            f"{'–' if busy is None else f'{busy * 100:.0f} %'} | "
            f"{'–' if v.others(k) is None or k == 'direct' else f'{v.others(k) * 100:.0f} %'} | "
            f"{mb(v.rss(k, 'idle'))} | {mb(v.rss(k, 'conns'))} | {f0(v.instr(k))} |"
        )
    out.append("")
    if "direct" in v.keys:
        out.append(
            "`direct` has no proxy: its CPU, RSS and instructions are the upstream nginx's own "
            "(core 1, shared with wrk, which is then the bottleneck).\n"
        )
    out += notes + ([""] if notes else [])

    section_peers(res, v, out)
    section_syscalls(res, v, out)

    out += ["### Per round\n", "req/s, and the ratios of each round:\n"]
    rounds = len(v.rounds)
    head = " | ".join(f"round {i + 1}" for i in range(rounds))
    out += [f"| configuration | {head} | vs nginx, per round | vs floor, per round |",
            "|---|" + "---:|" * rounds + "---|---|"]
    for k in v.keys:
        cells = " | ".join(
            f0(r[k]["rps"]) + ("*" if v.starved(r, k) else "")
            + (f" ({r[k]['retries'] + 1} runs)" if r[k].get("retries") else "")
            for r in v.rounds
        )
        vn = ", ".join(f"{x:.2f}" for x in v.ratios(k, v.ref(k, "nginx"))) or "–"
        vf = ", ".join(f"{x:.2f}" for x in v.ratios(k, v.ref(k, "floor"))) or "–"
        out.append(f"| `{k}` | {cells} | {vn} | {vf} |")
    out.append("")
    out.append("Order of each round: " + "; ".join(
        f"{i + 1}: " + " → ".join(o) for i, o in enumerate(res.get("order", []))
    ) + "\n")


PEERS = ("nginx", "haproxy", "caddy", "pingap", "tenement-0.2.1", "floor", "floor-buf0", "ten")


def section_peers(res, v, out):
    """The proxies side by side (TCP upstream): what issue 23's table compares."""
    keys = [k for k in PEERS if k in v.keys]
    if len(keys) < 2:
        return
    n = res["args"]["idle_conns"]

    def per_conn(k):
        r = res.get("rss", {}).get(k, {})
        if r.get("conns") and r.get("idle"):
            return (r["conns"]["rss"] - r["idle"]["rss"]) / n
        return None

    out += [
        "### The proxies side by side (TCP upstream)\n",
        "Each on one pinned core, the same upstream, the same headers added (the floor adds "
        "none). CPU: user + system µs/request over the wrk runs (medians of the rounds); "
        "syscalls and wakeups: the table below.\n",
        f"| proxy | req/s vs nginx | CPU µs/req user + sys | instructions/req | syscalls/req "
        f"| wakeups/req | RSS {n} idle conns MB | per idle conn kB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in keys:
        u, sy = v.cpu_split(k)
        sc = v.sys(k) or {}
        pc = per_conn(k)
        out.append(
            f"| `{k}` | {rx(v.ratio(k, 'nginx'))} | {f1(u)} + {f1(sy)} | {f0(v.instr(k))} | "
            f"{f3(sc.get('syscalls_per_req'))} | {f3(sc.get('wakeups_per_req'))} | "
            f"{mb(v.rss(k, 'conns'))} | {'–' if pc is None else f'{pc:.1f}'} |"
        )
    skipped = list(res.get("peers_skipped") or [])
    skipped += [f"`{k}`: no instructions/request: callgrind failed ({why})"
                for k, why in (res.get("callgrind_failed") or {}).items()]
    out += [""] + [f"- {line}" for line in skipped] + ([""] if skipped else [])


def section_syscalls(res, v, out):
    sc = res.get("syscalls") or {}
    if not sc:
        return
    method = next(iter(sc.values()))["method"]
    how = ("perf's `raw_syscalls:sys_enter` tracepoint (`perf stat -p`, counting, every "
           "thread)" if method == "perf" else
           "`strace -c -f` attached to every thread (its count only: strace slows each call)")
    out += [
        "### System calls and wakeups per request\n",
        f"One more wrk run per proxy ({res['args']['duration']} s, {res['args']['connections']} "
        f"connections, at saturation) with {how}, minus the same count over an idle window of "
        "the same process scaled to the run's length (timers, housekeeping threads). Wakeups: "
        "voluntary context switches of all the proxy's threads (each is a sleep in "
        "`epoll_wait` or a futex, ended by a wakeup). CPU here is that run's alone.\n",
        "| configuration | syscalls/req | wakeups/req | CPU µs/req user | CPU µs/req sys | "
        "requests | idle syscalls/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in v.keys:
        r = sc.get(k)
        if not r:
            continue
        out.append(
            f"| `{k}` | {f3(r['syscalls_per_req'])} | {f3(r['wakeups_per_req'])} | "
            f"{f1(r['cpu_user_us_per_req'])} | {f1(r['cpu_sys_us_per_req'])} | "
            f"{f0(r['requests'])} | {f1(r['idle_syscalls'] / r['idle_seconds'])} |"
        )
    out.append("")


def cost_line(v, k, base, what):
    if not (v.has(k) and v.has(base)):
        return None
    rs = v.ratios(k, base)
    thr = med(rs)
    ia, ib = v.instr(k), v.instr(base)
    ca, cb = v.cpu(k), v.cpu(base)
    return (
        f"- **{what}**: throughput {pct(None if thr is None else thr - 1)} (per round: "
        f"{', '.join(f'{x:.3f}' for x in rs)}); instructions/request "
        f"{f0(ia)} vs {f0(ib)} ({pct(None if not (ia and ib) else ia / ib - 1)}); CPU µs/request "
        f"{f1(ca)} vs {f1(cb)} ({pct(None if not (ca and cb) else ca / cb - 1)})."
    )


def section_costs(res, v, out):
    out += ["## ten's own costs, same run\n"]
    line = cost_line(v, "ten", "ten-nometrics", "metrics on vs off (`[settings] metrics`)")
    out.append(line or "- metrics on vs off: not measured in this run.")
    if v.has("ten-plugins"):
        out.append(cost_line(v, "ten-plugins", "ten",
                             "3 plugins (headers, ip_filter, rate_limit) vs none"))
    else:
        out.append(f"- 3 plugins (headers, ip_filter, rate_limit): {res.get('plugins', 'not run')}.")
    line = cost_line(v, "ten-2up-churn", "ten-2up",
                     "weights changing 10 times per second vs unchanged (issue 5)")
    if line:
        ch = res.get("churn", {})
        out.append(
            f"{line[:-1]}; p99 at the fixed rate {f3(v.lat('ten-2up-churn', 'p99_ms'))} vs "
            f"{f3(v.lat('ten-2up', 'p99_ms'))} ms, p50 {f3(v.lat('ten-2up-churn', 'p50_ms'))} vs "
            f"{f3(v.lat('ten-2up', 'p50_ms'))} ms; {f0(ch.get('ok'))} weight changes applied over "
            f"the control socket, {f0(ch.get('failed'))} refused."
        )
    line = cost_line(v, "ten-unix", "ten", "unix-socket upstream vs TCP upstream")
    if line:
        out.append(line)
    line = cost_line(v, "ten-accesslog", "ten",
                     "access log on vs off (`access_log = PATH`; issue 21's target: < 3 % "
                     "instructions/request)")
    if line:
        out.append(line)
    if "ten" in v.cg:
        # Off: the access log's code must not run at all.
        off = sum(c for f, c in v.cg["ten"]["funcs"].items() if "access::" in f)
        out.append(f"- **access log off** (`ten`): {f0(off)} instructions/request in "
                   "`tenement_proxy::access` functions (issue 21's target: 0).")
    for k, base, what in (("ten-tls", "ten", "TLS 1.3 termination vs plain HTTP (ten)"),
                          ("nginx-tls", "nginx", "TLS 1.3 termination vs plain HTTP (nginx)"),
                          ("ten-tls", "nginx-tls", "ten vs nginx, both terminating TLS 1.3")):
        line = cost_line(v, k, base, what)
        if line:
            out.append(line)
    out.append("")


def section_profile(v, out):
    if not v.cg:
        out += ["## Where the instructions go\n", "callgrind was not run.\n"]
        return
    any_k = next(iter(v.cg.values()))
    out += [
        "## Where the instructions go (callgrind)\n",
        f"Each proxy ran twice under `valgrind --tool=callgrind`, serving {any_k['counts'][0]} and "
        f"{any_k['counts'][1]} requests one after another on one keep-alive connection; "
        "instructions/request = (I2 − I1) / (N2 − N1), so startup and shutdown cancel. The same "
        "difference per function gives the breakdowns below (self cost, per request).\n",
        "| configuration | instructions/req | allocator (malloc/free) | memcpy/memmove |",
        "|---|---:|---:|---:|",
    ]
    for k in v.keys:
        if k in v.cg:
            a, m = v.share(k, ALLOC), v.share(k, MEMCPY)
            out.append(
                f"| `{k}` | {f0(v.instr(k))} | {'–' if a is None else f'{a * 100:.1f} %'} | "
                f"{'–' if m is None else f'{m * 100:.1f} %'} |"
            )
    out.append("")
    if "ten" in v.cg and "floor" in v.cg:
        out += [
            "### What ten adds over the floor\n",
            "Functions by instructions/request in `ten` minus the same in `floor` (largest first):\n",
            "| function | ten | floor | added |",
            "|---|---:|---:|---:|",
        ]
        for f, a, b, d in v.delta("ten", "floor", 20):
            out.append(f"| {code(f)} | {f0(a)} | {f0(b)} | {f0(d)} |")
        out.append("")
    for k, base, title in (("ten", "ten-nometrics", "What metrics cost"),
                           ("ten-plugins", "ten", "What 3 plugins cost"),
                           ("ten-accesslog", "ten", "What the access log costs"),
                           ("ten-tls", "ten", "What TLS 1.3 costs ten")):
        if k in v.cg and base in v.cg:
            out += [f"### {title}\n", f"| function | `{k}` | `{base}` | added |", "|---|---:|---:|---:|"]
            for f, a, b, d in v.delta(k, base, 10):
                out.append(f"| {code(f)} | {f0(a)} | {f0(b)} | {f0(d)} |")
            out.append("")
    if "ten" in v.cg:
        fns = sorted(v.cg["ten"]["funcs"].items(), key=lambda kv: -kv[1])[:15]
        out += ["### ten's top functions\n", "| function | instructions/req |", "|---|---:|"]
        out += [f"| {code(f)} | {f0(c)} |" for f, c in fns]
        out.append("")


def lookup_ratios(micro):
    m = re.search(r"Router, 1 reader: lookup at (\d+) hosts vs (\d+): uniform ([\d.]+)x, hot set ([\d.]+)x", micro or "")
    return (int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))) if m else None


def lookup_rows(micro):
    """{(hosts, access): (router ns, rwlock ns, arcswap contended ns, rwlock contended ns)}."""
    rows = {}
    for m in re.finditer(
        r"^\| (\d+) \| (uniform|hot) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
        micro or "", re.M,
    ):
        rows[(int(m.group(1)), m.group(2))] = tuple(float(m.group(i)) for i in range(3, 7))
    return rows


def verdict(ok):
    return "–" if ok is None else ("met" if ok else "**missed**")


def section_targets(res, v, out):
    t_f = None if not (v.instr("ten") and v.instr("floor")) else v.instr("ten") / v.instr("floor")
    thr_f = v.ratio("ten", "floor")
    thr_n = v.ratio("ten", "nginx")
    p50_t, p50_n = v.lat("ten", "p50_ms"), v.lat("nginx", "p50_ms")
    rss_i, rss_c = v.rss("ten", "idle"), v.rss("ten", "conns")
    n = res["args"]["idle_conns"]
    lk = lookup_ratios(res.get("micro"))
    met_cost = v.ratio("ten", "ten-nometrics")
    mi, mo = v.instr("ten"), v.instr("ten-nometrics")
    met_instr = None if not (mi and mo) else mi / mo
    churn = v.ratio("ten-2up-churn", "ten-2up")
    p99_c, p99_s = v.lat("ten-2up-churn", "p99_ms"), v.lat("ten-2up", "p99_ms")
    rows = [
        ("ten instructions/request within +10 % of the floor", rx(t_f), None if t_f is None else t_f <= 1.10),
        ("ten beats the floor: req/s (median per-round ratio)", rx(thr_f), None if thr_f is None else thr_f >= 1.0),
        ("ten beats the floor: instructions/request", rx(t_f), None if t_f is None else t_f < 1.0),
        ("stretch: ten req/s >= nginx's", rx(thr_n), None if thr_n is None else thr_n >= 1.0),
        ("stretch: ten p50 at a fixed rate <= nginx's",
         f"{f3(p50_t)} vs {f3(p50_n)} ms", None if None in (p50_t, p50_n) else p50_t <= p50_n),
        ("ten RSS idle <= 20 MB", f"{mb(rss_i)} MB", None if rss_i is None else rss_i <= 20 * 1024),
        (f"ten RSS with {n} connections <= 40 MB", f"{mb(rss_c)} MB", None if rss_c is None else rss_c <= 40 * 1024),
        (f"issue 23: ten RSS with {n} idle connections <= 30 MB", f"{mb(rss_c)} MB",
         None if rss_c is None else rss_c <= 30 * 1024),
        (f"issue 23: {n} idle connections cost <= 10 MB over idle (scaled to 1000)",
         "–" if None in (rss_c, rss_i) else f"{(rss_c - rss_i) / 1024 * 1000 / n:.1f} MB",
         None if None in (rss_c, rss_i) else (rss_c - rss_i) * 1000 / n <= 10 * 1024),
        ("route lookup at 100k hosts <= 1.5x at 10 (uniform access)",
         "–" if not lk else f"{lk[2]:.2f}x", None if not lk else lk[2] <= 1.5),
        ("route lookup at 100k hosts <= 1.5x at 10 (hot set)",
         "–" if not lk else f"{lk[3]:.2f}x", None if not lk else lk[3] <= 1.5),
        ("issue 7: metrics cost < 3 %: instructions/request (repeatable)",
         pct(None if met_instr is None else met_instr - 1), None if met_instr is None else met_instr <= 1.03),
        ("issue 7: metrics cost < 3 %: throughput (median per-round ratio, noisy)",
         pct(None if met_cost is None else met_cost - 1), None if met_cost is None else met_cost >= 0.97),
        ("issue 5: no throughput drop while weights change 10 times/s (within 3 %)",
         pct(None if churn is None else churn - 1), None if churn is None else churn >= 0.97),
        ("issue 5: p99 at a fixed rate while weights change 10 times/s <= 1.5x steady",
         "–" if None in (p99_c, p99_s) else f"{f3(p99_c)} vs {f3(p99_s)} ms",
         None if None in (p99_c, p99_s) else p99_c <= 1.5 * p99_s),
    ]
    sc = scaling.summary(res)
    if sc is not None:
        ratio = sc["ratio"]
        rows.append(("issue 23: ten scales from 1 to 2 workers at least as well as nginx "
                     "(ten's req/s(2)/req/s(1) over nginx's, two shared cores, noisy)",
                     rx(ratio), None if ratio is None else ratio >= 1.0))
    out += ["## Targets (issue 9, and issue 7's metrics budget)\n", "| target | this run | verdict |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {verdict(c)} |" for a, b, c in rows]
    out.append("")
    return rows


def section_remains(res, v, rows, out):
    out += ["## What remains and why\n"]
    missed = [r for r in rows if r[2] is False]
    if not missed:
        out.append("Every target was met in this run.\n")
    t, f, ng = v.instr("ten"), v.instr("floor"), v.instr("nginx")
    # Allocator shares of ten and the floor, and which allocator ten's profile shows.
    ta, fa = v.share("ten", ALLOC), v.share("floor", ALLOC)
    fns = v.cg.get("ten", {}).get("funcs", {})
    which = ("mimalloc" if any(MIMALLOC.match(x) for x in fns)
             else "jemalloc" if any(JEMALLOC.match(x) for x in fns) else "glibc malloc")
    if t and f:
        # The allocators differ (mimalloc vs glibc): compare them as totals, not per function.
        adds = [r for r in v.delta("ten", "floor", 60) if r[3] > 0 and not ALLOC.search(r[0])]
        listed = ", ".join(f"{code(fn, 70)} (+{d:,.0f})" for fn, _, _, d in adds[:6])
        alloc = ""
        if ta is not None and fa is not None:
            alloc = (
                f" The allocator: {ta * t:,.0f} instructions/request in ten ({which}), "
                f"{fa * f:,.0f} in the floor (glibc)."
            )
        out.append(
            f"- **ten over the floor**: {t:,.0f} vs {f:,.0f} instructions/request "
            f"({pct(t / f - 1)}).{alloc} Largest other additions per request: {listed}."
        )
        names = " ".join(fn for fn, *_ in adds)
        for pattern, hint in HINTS:
            if re.search(pattern, names):
                out.append(f"  - {hint}")
    if f and ng:
        m = v.share("floor", MEMCPY)
        out.append(
            f"- **Pingora's floor vs nginx**: {f:,.0f} vs {ng:,.0f} instructions/request "
            f"({f / ng:.1f}x); the allocator takes {'–' if fa is None else f'{fa * 100:.0f} %'} and "
            f"memcpy/memmove {'–' if m is None else f'{m * 100:.0f} %'} of the floor's. That is "
            "the framework's per-request work (a `RequestHeader`/`ResponseHeader` with a "
            "case-preserving header map per message, buffers copied between the downstream and "
            "upstream sessions, a boxed `HttpPeer` per request), the same for every Pingora "
            "proxy: ten can cut its own share, not remove Pingora's. The floor is built against "
            "the same patched Pingora crates as ten (vendor/README.md): the request future "
            "built in its `Box` instead of copied there (over 13 KB per request, which valgrind "
            "counted once per byte of `rep movsb`) and the upstream keep-alive pool without a "
            "task per idle connection; the memcpy left is header and session moves."
        )
        if ta is not None and which != "glibc malloc":
            out.append(
                f"  - ten runs {which} as its global allocator: the allocator takes "
                f"{ta * 100:.0f} % of ten's instructions, {'–' if fa is None else f'{fa * 100:.0f} %'} "
                "of the floor's (glibc malloc)."
            )
        elif ta is not None:
            out.append(
                f"  - The allocator (glibc malloc) takes {ta * 100:.0f} % of ten's instructions: a "
                "faster global allocator (mimalloc or jemalloc) in ten's binary would cut that."
            )
    thr_f = v.ratio("ten", "floor")
    if thr_f is not None and thr_f < 1.0:
        rs = v.ratios("ten", "floor")
        line = (
            f"- **ten vs the floor in req/s**: {rx(thr_f)} (per round "
            f"{', '.join(f'{x:.2f}' for x in rs)}), CPU µs/request {f1(v.cpu('ten'))} vs "
            f"{f1(v.cpu('floor'))}: the per-request work above, on the CPU."
        )
        b0 = v.instr("floor-buf0")
        tb0 = v.ratio("floor-buf0", "floor")
        if b0 and f and t and tb0 is not None:
            line += (
                f" The floor with ten's listener setting (`floor-buf0`, no read buffer) executes "
                f"{b0:,.0f} instructions/request against the default floor's {f:,.0f} (reads go "
                f"straight into Pingora's header buffer), and ran at {rx(tb0)} its req/s "
                "in this run; callgrind counts user space only, so a real difference there would "
                f"be kernel time. Against that floor, ten executes {pct(t / b0 - 1)} more "
                "instructions per request."
            )
        out.append(line)
    rss_i = v.rss("ten", "idle")
    if rss_i is not None and rss_i > 20 * 1024:
        mem = res["rss"]["ten"]["idle"]
        fl = res["rss"].get("floor", {}).get("idle", {})
        line = (
            f"- **RSS idle**: ten {mb(mem['rss'])} MB ({mb(mem['anon'])} MB anonymous, "
            f"{mb(mem['file'])} MB file-backed: the binary's pages), {mem['threads']} threads; the "
            f"floor {mb(fl.get('rss'))} MB ({mb(fl.get('anon'))} MB anonymous)."
        )
        var = res.get("rss_variants", {}).get("ten")
        fns = v.cg.get("ten", {}).get("funcs", {})
        if var and any(MIMALLOC.match(x) for x in fns):
            line += (
                f" Started with `{var['env']}`, ten idles at {mb(var['idle']['rss'])} MB "
                f"({mb(var['idle']['anon'])} MB anonymous) and holds {mb(var['conns']['rss'])} MB "
                f"with {var['n']} connections (ten already sets that option itself, from an ELF "
                "constructor in `src/main.rs`, before the first allocation)."
            )
        line += (
            " The rest of ten's anonymous memory over the floor's is its own state: the SQLite "
            "connections (desired state, log store, audit, tokens) and their page caches, the "
            "Prometheus registry, the log writer thread, tokio's blocking pool."
        )
        out.append(line)
    rss_c = v.rss("ten", "conns")
    if rss_c is not None and rss_i is not None and (
            rss_c > 40 * 1024 or (rss_c - rss_i) * 1000 / res["args"]["idle_conns"] > 10 * 1024):
        n = res["args"]["idle_conns"]

        def per_conn(k):
            r = res["rss"].get(k, {})
            if r.get("conns") and r.get("idle"):
                return (r["conns"]["rss"] - r["idle"]["rss"]) / n
            return None

        per, flper, smper = per_conn("ten"), per_conn("floor"), per_conn("floor-buf0")
        line = (
            f"- **RSS with {n} connections**: {per:.1f} kB per idle keep-alive connection for "
            f"ten, {'–' if flper is None else f'{flper:.1f}'} kB for the floor with Pingora's "
            "default listener read buffer (64 KiB per connection, `DEFAULT_L4_READ_BUFFER_SIZE`)"
        )
        if smper is not None:
            line += (
                f", {smper:.1f} kB for the floor without one (`floor-buf0`, ten's setting, at "
                f"{rx(v.ratio('floor-buf0', 'floor'))} the default floor's req/s)"
            )
        line += (
            ". ten holds no read buffer per connection (its listener setting), and between "
            "requests neither Pingora's request future (`process_new_http`, ~14 KB) nor its "
            "4 KiB head buffer: `Edge` waits for the client's first bytes itself "
            "(`proxy/src/edge.rs`). What an idle connection still costs is mostly Pingora's "
            "connection task: `run_endpoint` spawns `timeout(handshake())` inline, so every "
            "task, plain TCP included, is sized for the TLS handshake's future for as long as "
            "the connection lives; then `Edge`'s boxed `process_new` future and the boxed "
            "stream (heap profile and method: docs/benchmarks.md)."
        )
        out.append(line)
    lk = lookup_ratios(res.get("micro"))
    rows = lookup_rows(res.get("micro"))
    if lk and lk[2] > 1.5:
        line = (
            f"- **Route lookup at {lk[0]:,} hosts**: {lk[2]:.2f}x the cost at {lk[1]} with "
            f"uniform access over all hosts, {lk[3]:.2f}x for a hot set. The uniform case is "
            "memory latency, not the algorithm (one hash probe either way): a 100k-host table "
            "does not fit in the caches. The table already keeps short host names inline in "
            "their slot beside the entry, folds a `/` route into the entry, and hashes with "
            "foldhash (`proxy/src/table.rs`)."
        )
        line += (
            " What is left is the two cache lines a probe touches (the control bytes and the "
            "64-byte slot holding the inline key and the entry) once the table outgrows the "
            "caches."
        )
        out.append(line)
    for k, base, what in (("ten", "ten-nometrics", "Metrics"),
                          ("ten-2up-churn", "ten-2up", "Weight changes")):
        thr = v.ratio(k, base)
        if thr is None or thr >= 0.97:
            continue
        rs = v.ratios(k, base)
        line = (
            f"- **{what}**: {pct(thr - 1)} throughput (median of the per-round ratios "
            f"{', '.join(f'{x:.2f}' for x in rs)}; target: within 3 %)."
        )
        if k == "ten-2up-churn":
            line += (
                f" p99 at the fixed rate: {f3(v.lat(k, 'p99_ms'))} ms with the changes, "
                f"{f3(v.lat(base, 'p99_ms'))} ms without. The table swap is lock-free (see the "
                "micro-benchmarks) and the SQLite writes of a change (the weight, the audit row) "
                "hand their tokio worker over while they wait (`tenement_supervisor::blocking`); "
                "what remains is CPU: the control request, a table rebuild, and the churn "
                "client itself, which shares core 1 with the load generator."
            )
        ia, ib = v.instr(k), v.instr(base)
        if ia and ib:
            line += (
                f" The repeatable figure, instructions/request, differs by {pct(ia / ib - 1)}: "
                f"{'the throughput gap is within this run' + chr(39) + 's noise (see the spread of the rounds)' if ia / ib <= 1.03 else 'see the function breakdown above'}."
            )
        out.append(line)
    out.append("")


def render(res):
    v = View(res)
    out = [
        "# Benchmarks\n",
        f"Generated by `make bench` on {res['started']}: every number below comes from that one "
        "run; do not edit by hand. How to run it and how to read it: "
        "[docs/benchmarks.md](docs/benchmarks.md).\n",
    ]
    section_machine(res, out)
    section_setup(res, v, out)
    section_results(res, v, out)
    section_costs(res, v, out)
    section_profile(v, out)
    pause.section(res, out)
    scaling.section(res, out, short)
    out += ["## Micro-benchmarks (`cargo bench -p tenement-proxy --bench routing`)\n",
            res.get("micro") or "Not run.\n"]
    rows = section_targets(res, v, out)
    section_remains(res, v, rows, out)
    return "\n".join(out) + "\n"
