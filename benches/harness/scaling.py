"""Two cores (issue 23 part 4): ten with 1 and 2 worker threads against nginx with
`worker_processes` 1 and 2, on the same upstream with the same headers added as the `ten` and
`nginx` rows. Unlike every other phase nothing is pinned apart: the proxy, the upstream and the
load generator all share cores 0 and 1, so the figures say how far each proxy gets from one
worker to two on this machine, not what two free cores would give. The runs interleave round
by round (ten-1, nginx-1, ten-2, nginx-2, the starting point rotated each round); the report
gives medians and the per-round scaling ratios req/s(2) / req/s(1)."""

import shlex
import statistics

import measure
import procs
from procs import LOAD_CPU, PROXY_CPU, Target

CPUS = f"{PROXY_CPU},{LOAD_CPU}"  # both cores, for everything in this phase
CONFIGS = (("ten-1", "ten", 1), ("nginx-1", "nginx", 1), ("ten-2", "ten", 2), ("nginx-2", "nginx", 2))
PROXIES = ("ten", "nginx")
# A run in which the rest of the machine took more than this many cores' worth of the two is
# run again (at most twice) and, if still so, left out of medians and ratios.
STARVED = 0.5
RETRIES = 2


def log(msg):
    print(f"bench: scaling: {msg}", flush=True)


def workers_seen(kind, proc):
    """How many workers the proxy started: nginx's worker processes (the master's children);
    ten's proxy workers (threads named `ten-proxy`, one runtime each), or, for a ten built
    before those, its tokio workers (threads named `ten` other than the main thread; tokio's
    blocking threads share the name but none runs right after start)."""
    if kind == "nginx":
        return len(procs.children(proc.pid))
    names = procs.tasks([proc.pid])
    proxy = sum(1 for name in names.values() if name == "ten-proxy")
    return proxy or sum(1 for tid, name in names.items() if name == "ten" and tid != proc.pid)


def scaling_phase(bins, d, up, up_port, args, res):
    """Start the four proxies on both cores, widen the upstream to both cores, run the rounds;
    the upstream goes back to LOAD_CPU afterwards (the pause phase uses it)."""
    conns, threads = args.scaling_connections, args.scaling_threads
    sc = res["scaling"] = {
        "cpus": CPUS, "connections": conns, "threads": threads, "duration": args.duration,
        "workers": {}, "rounds": [], "order": [], "commands": {},
        "wrk": shlex.join(measure.wrk_cmd(bins, "PORT", conns, args.duration, threads=threads,
                                          cpus=CPUS)),
    }
    started = []
    procs.set_affinity(up.pids(), CPUS)
    try:
        for key, kind, n in CONFIGS:
            t = Target(key, f"{kind}, {n} worker(s)", kind, f"127.0.0.1:{up_port}", workers=n)
            t.port = procs.free_port()
            t.proc = procs.start(t, bins, d, f"scale-{key}", t.port, cpu=CPUS)
            started.append(t)
            env = " ".join(f"{k}={v}" for k, v in t.env(d, key).items())
            sc["commands"][key] = (env + " " if env else "") + shlex.join(t.proc.argv)
            procs.wait_ready(t.proc, t.port, measure.check_ok)
            sc["workers"][key] = workers_seen(kind, t.proc)
            if sc["workers"][key] != n:
                log(f"{key}: {sc['workers'][key]} workers seen after start, {n} asked for")
        log(f"wrk -t{threads} -c{conns}; warm-up: 2 s of wrk per configuration")
        for t in started:
            measure.wrk_shared(bins, t.port, conns, threads, 2, CPUS, t.proc.pids(), up.pids())
        for r in range(args.rounds):
            order = started[r % len(started):] + started[:r % len(started)]
            sc["order"].append([t.key for t in order])
            row = {}
            for t in order:
                for attempt in range(RETRIES + 1):
                    if not t.proc.alive():
                        raise RuntimeError(f"{t.key} exited ({t.proc.popen.returncode}) during "
                                           f"the scaling phase:\n{t.proc.stderr_tail(5)}")
                    run = measure.wrk_shared(bins, t.port, conns, threads, args.duration, CPUS,
                                             t.proc.pids(), up.pids())
                    run["retries"] = attempt
                    if run["others_cores"] <= STARVED:
                        break
                    log(f"round {r + 1}: {t.key}: other processes took "
                        f"{run['others_cores']:.2f} cores: again")
                row[t.key] = run
                log(f"round {r + 1}: {t.key}: {run['rps']:.0f} req/s, "
                    f"{run['cpu_us_per_req'] or 0:.1f} us CPU/req, proxy {run['proxy_cores']:.2f} "
                    f"+ upstream {run['upstream_cores']:.2f} + wrk {run['load_cores']:.2f} "
                    f"+ others {run['others_cores']:.2f} cores, "
                    f"{run['wakeups_per_req'] or 0:.3f} wakeups/req")
            sc["rounds"].append(row)
    finally:
        for t in started:
            t.proc.stop()
        procs.set_affinity(up.pids(), LOAD_CPU)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def starved(run):
    return run["others_cores"] > STARVED


def summary(res):
    """Medians and ratios of the phase (None when it did not run): `rps`, `cpu`, `user`, `sys`,
    `proxy_cores` per configuration; per proxy the per-round scaling ratios and their median;
    ten's ratio over nginx's per round and its median. A round counts for a ratio when none of
    the runs it divides was disturbed; `all_disturbed`: no round was clean, so every round was
    used (say so)."""
    sc = res.get("scaling")
    if not sc or not sc.get("rounds"):
        return None
    rounds = sc["rounds"]
    keys = [k for k, _, _ in CONFIGS]
    s = {"per_round": [], "all_disturbed": False}
    for k in keys:
        good = [r[k] for r in rounds if k in r and not starved(r[k])] or [r[k] for r in rounds if k in r]
        s[k] = {f: _med(run.get(f) for run in good)
                for f in ("rps", "cpu_us_per_req", "cpu_user_us_per_req", "cpu_sys_us_per_req",
                          "proxy_cores", "upstream_cores", "load_cores", "others_cores",
                          "wakeups_per_req")}
    complete = [(i + 1, r) for i, r in enumerate(rounds) if all(k in r for k in keys)]
    clean = [(i, r) for i, r in complete if not any(starved(r[k]) for k in keys)]
    if not clean:
        clean, s["all_disturbed"] = complete, True
    used = {i for i, _ in clean}
    for i, r in complete:
        row = {"round": i, "clean": not any(starved(r[k]) for k in keys)}
        for p in PROXIES:
            one = r[f"{p}-1"]["rps"]
            row[p] = r[f"{p}-2"]["rps"] / one if one else None
        row["ten/nginx"] = (row["ten"] / row["nginx"]
                            if row["ten"] is not None and row["nginx"] else None)
        s["per_round"].append(row)
    used = [row for row in s["per_round"] if row["round"] in used]
    for p in PROXIES:
        s[f"{p}_scaling"] = _med(row[p] for row in used)
    s["ratio"] = _med(row["ten/nginx"] for row in used)
    for n in (1, 2):
        s[f"ten_vs_nginx_{n}"] = _med(
            r[f"ten-{n}"]["rps"] / r[f"nginx-{n}"]["rps"] for _, r in clean if r[f"nginx-{n}"]["rps"])
    s["rounds_used"] = len(used)
    return s


def _f(x, fmt="{:,.0f}"):
    return "–" if x is None else fmt.format(x)


def section(res, out, short):
    """BENCHMARKS.md: the two-core table (nothing when the phase did not run)."""
    s = summary(res)
    if s is None:
        return
    sc = res["scaling"]
    rounds = sc["rounds"]
    workers = ", ".join(f"`{k}` {n}" for k, n in sc["workers"].items())
    out += [
        "## Two cores: one worker vs two (issue 23 part 4)\n",
        "How measured: `ten` with 1 and with 2 worker threads (`ten-1`, `ten-2`) and nginx with "
        "`worker_processes 1` and `2` (`nginx-1`, `nginx-2`), configured as the `ten` and `nginx` "
        "rows (the same upstream, the same headers added). `ten serve` runs its proxy on its proxy "
        "workers (one thread with a runtime of its own each), as many as `[settings] threads` or, "
        "unset, `TOKIO_WORKER_THREADS` (set to 1 or 2 here, so that a ten built before `threads` "
        "runs too) or else the affinity mask. **Nothing "
        f"is pinned apart in this phase**: the proxy, the upstream nginx and wrk (`-t{sc['threads']} "
        f"-c{sc['connections']}`, the same load for every run) all run on cores {sc['cpus']} "
        "(`taskset -c`), so the proxy with two workers competes for the same two cores as its "
        "load and its upstream; a ratio of 2.0 is out of reach, and the ratio says how much "
        "more a second worker gets out of this shared machine. Each round runs the four once "
        f"({sc['duration']} s of wrk each), the order rotated from round to round; req/s and CPU "
        "are medians of the rounds, the scaling ratio req/s(2) / req/s(1) is taken per round and "
        "the median shown. CPU µs/request: the proxy's utime + stime over the run / requests. "
        "*cores*: CPU time over wall time of the proxy, the upstream, wrk, and the rest of the "
        "machine (the two cores' busy time from `/proc/stat` minus those three: other "
        "engineers' work, kernel time charged to no process, and so also whatever CPU a "
        "configuration leaves idle that a neighbour then takes). *wakeups/req*: the proxy's "
        "voluntary context switches (a thread going to sleep, later woken) per request. A run "
        "where the rest took more "
        f"than {STARVED} of a core was run again (at most twice) and, if still so, is marked `*` "
        f"and left out. Workers seen after start: {workers}.\n",
        "| proxy | req/s, 1 worker | req/s, 2 workers | scaling (2 / 1) | CPU µs/req, 1 | "
        "CPU µs/req, 2 | user + sys, 2 | proxy cores, 1 | proxy cores, 2 | wakeups/req, 1 | "
        "wakeups/req, 2 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in PROXIES:
        one, two = s[f"{p}-1"], s[f"{p}-2"]
        out.append(
            f"| {p} | {_f(one['rps'])} | {_f(two['rps'])} | {_f(s[f'{p}_scaling'], '{:.2f}x')} | "
            f"{_f(one['cpu_us_per_req'], '{:.1f}')} | {_f(two['cpu_us_per_req'], '{:.1f}')} | "
            f"{_f(two['cpu_user_us_per_req'], '{:.1f}')} + {_f(two['cpu_sys_us_per_req'], '{:.1f}')} | "
            f"{_f(one['proxy_cores'], '{:.2f}')} | {_f(two['proxy_cores'], '{:.2f}')} | "
            f"{_f(one['wakeups_per_req'], '{:.3f}')} | {_f(two['wakeups_per_req'], '{:.3f}')} |"
        )
    ratio = s["ratio"]
    verdict = "–" if ratio is None else ("met" if ratio >= 1.0 else "**missed**")
    out += [
        "",
        f"**ten's scaling / nginx's: {_f(ratio, '{:.2f}x')}** (median of the per-round ratios over "
        f"{s['rounds_used']} round(s); issue 23's target: ≥ 1.00, {verdict}). ten's req/s against "
        f"nginx's: {_f(s['ten_vs_nginx_1'], '{:.2f}x')} with one worker, "
        f"{_f(s['ten_vs_nginx_2'], '{:.2f}x')} with two.\n",
    ]
    if s["all_disturbed"]:
        out.append("⚠ Every round had a disturbed run (the rest of the machine took more than "
                   f"{STARVED} of a core): the ratios use all rounds; read them as noise.\n")
    keys = [k for k, _, _ in CONFIGS]
    out += [
        "Per round (req/s; cores: proxy + upstream + wrk + rest of the machine):\n",
        "| round | " + " | ".join(f"`{k}`" for k in keys)
        + " | ten 2/1 | nginx 2/1 | ten / nginx | " + " | ".join(f"cores `{k}`" for k in keys) + " |",
        "|---|" + "---:|" * (len(keys) + 3) + "---|" * len(keys),
    ]
    by_round = {row["round"]: row for row in s["per_round"]}
    for i, r in enumerate(rounds):
        row = by_round.get(i + 1, {})
        cells = [
            (_f(r[k]["rps"]) + ("*" if starved(r[k]) else "")
             + (f" ({r[k]['retries'] + 1} runs)" if r[k].get("retries") else "")) if k in r else "–"
            for k in keys
        ]
        cores = [
            f"{r[k]['proxy_cores']:.2f} + {r[k]['upstream_cores']:.2f} + {r[k]['load_cores']:.2f} "
            f"+ {r[k]['others_cores']:.2f}" if k in r else "–" for k in keys
        ]
        out.append(
            f"| {i + 1} | " + " | ".join(cells) + " | "
            + " | ".join(_f(row.get(x), "{:.2f}") for x in ("ten", "nginx", "ten/nginx"))
            + " | " + " | ".join(cores) + " |"
        )
    out += ["", "Order of each round: " + "; ".join(
        f"{i + 1}: " + " → ".join(o) for i, o in enumerate(sc["order"])) + "\n"]
    out += ["```sh"] + [f"# {k}\n{short(res, c)}" for k, c in sc["commands"].items()]
    out += [f"# wrk\n{sc['wrk']}", "```\n"]
