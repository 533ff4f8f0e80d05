#!/usr/bin/env python3
"""
Write RESULTS.md and results.png from a results.json of bench/bench.py.

bench.py calls write_all() at the end of a run; run this file by hand to
rewrite the page from an existing results.json:

    python3 bench/report.py bench/results.json [OUT_DIR]

Every number on the page comes from results.json. The chart is drawn by
gnuplot (pngcairo terminal).
"""

import json
import subprocess
import sys
from pathlib import Path

SERVER_LABELS = {
    "nginx-static": "nginx, static body (ceiling)",
    "nginx-proxy-cache": "nginx proxy_cache, hit (baseline)",
    "jobgate-hit": "jobgate, hit",
    "jobgate-miss": "jobgate, miss (one job, in_progress)",
    "jobgate-miss-distinct": "jobgate, miss (distinct jobs)",
    "jobgate-1k": "jobgate, hits over the small cache",
    "jobgate-1m": "jobgate, hits over the large cache",
    "jobgate-hit-workers-1": "jobgate, hit, 1 worker",
    "jobgate-hit-workers-2": "jobgate, hit, 2 workers",
}

CHART_LABELS = {
    "nginx-static": "nginx static",
    "nginx-proxy-cache": "nginx proxy\\_cache hit",
    "jobgate-hit": "jobgate hit",
    "jobgate-miss": "jobgate miss, one job",
    "jobgate-miss-distinct": "jobgate miss, distinct jobs",
    "jobgate-hit-workers-1": "jobgate hit, workers=1",
    "jobgate-hit-workers-2": "jobgate hit, workers=2",
}


def fmt_int(value):
    return "-" if value is None else f"{value:,.0f}".replace(",", " ")


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ratio(row, key):
    ratio = row.get("ratio", {}).get(key)
    return "-" if ratio is None else f"{ratio:.2f}x"


def fmt_mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def runs_text(count):
    return "1 wrk run" if count == 1 else f"{count} wrk runs"


def met_text(met):
    return {True: "yes", False: "**no**", None: "not measured"}[met]


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


# ---- sections -------------------------------------------------------------


def section_targets(results):
    targets = results.get("targets", [])
    met = sum(1 for t in targets if t["met"] is True)
    measured = sum(1 for t in targets if t["met"] is not None)
    out = ["## Targets", "",
           f"{met} of {measured} measured targets are met in this run. The "
           "targets are the project's; a ratio is jobgate's figure divided "
           "by the reference's, both medians of the runs below.", ""]
    out.append(table(["Target", "Measured", "Met"],
                     [[t["target"], t["measured"], met_text(t["met"])]
                      for t in targets]))
    out += rss_explanation(results)
    return out


def rss_explanation(results):
    """Split jobgate's resident memory after the 1000-connection hit run by
    mapping, so that the page explains a missed memory target."""
    rows = results.get("summary", {}).get("matrix") or []
    row = next((r for r in rows if r["server"] == "jobgate-hit"
                and r["connections"] == 1000), None)
    split = row.get("rss_by_mapping") if row else None
    if not split:
        return []
    files = ", ".join(f"{name} {kib / 1024:.1f} MiB"
                      for name, kib in split["files"])
    file_total = (sum(kib for _, kib in split["files"]) +
                  split["other_files_kib"])
    return ["", f"Where jobgate's {row['rss_kib'] / 1024:.1f} MiB of VmRSS "
            "after the 1000-connection hit run go, from /proc/PID/smaps: "
            f"{split['anon_kib'] / 1024:.1f} MiB in memory not backed by a "
            "file (heap, stacks, connection buffers), and "
            f"{file_total / 1024:.1f} MiB in pages of mapped files, most of "
            f"them shared libraries: {files}, "
            f"{split['other_files_kib'] / 1024:.1f} MiB in the rest. The "
            "libraries' pages are shared with every other process that maps "
            "them, but VmRSS counts them in full. libcurl from Debian links "
            "GnuTLS, nettle and p11-kit for its LDAP and RTMP support, and "
            "they are loaded and initialised at start even though jobgate "
            "uses neither."]


def section_matrix(results):
    rows = results.get("summary", {}).get("matrix")
    if not rows:
        return []
    s = results["settings"]
    out = ["## Throughput, latency, CPU and memory", "",
           f"Each figure is the median of {runs_text(s['repeats'])} of "
           f"{s['duration_s']} s with keep-alive connections, one wrk thread "
           f"on CPU {s['client_cpu']} and the server on CPU "
           f"{s['server_cpu']}; the servers take turns, and each repetition "
           "starts with another server. Every request carries a "
           f"`{s['credential_header']}` header. The x columns divide by "
           "nginx proxy_cache at the same connection count (for latency, "
           "CPU and memory, lower is better). CPU is the server process's "
           "user and system time over the run divided by the requests "
           "answered; RSS is VmRSS after the last run at that connection "
           "count (for nginx, the worker process).", "",
           "![Requests per second by server and connection count]"
           "(results.png)", ""]
    by_conns = {}
    for row in rows:
        by_conns.setdefault(row["connections"], []).append(row)
    for conns in sorted(by_conns):
        out += [f"### {conns} connections", ""]
        body = []
        for row in by_conns[conns]:
            body.append([
                SERVER_LABELS.get(row["server"], row["server"]),
                f"{fmt_int(row['rps'])} ({fmt_int(row['rps_min'])}-"
                f"{fmt_int(row['rps_max'])})",
                fmt_ratio(row, "rps"),
                fmt(row["p50_us"] / 1000), fmt_ratio(row, "p50_us"),
                fmt(row["p99_us"] / 1000), fmt_ratio(row, "p99_us"),
                fmt(row["cpu_us_per_request"], 1),
                fmt_ratio(row, "cpu_us_per_request"),
                fmt_mib(row["rss_kib"]), fmt_ratio(row, "rss_kib"),
            ])
        out.append(table(["Server", "req/s (min-max)", "x", "p50 ms", "x",
                          "p99 ms", "x", "CPU us/req", "x", "RSS MiB", "x"],
                         body))
        out.append("")
    misses = [r for r in rows if r["server"].startswith("jobgate-miss")]
    if misses:
        out += ["On the miss rows, the upstream requests per client request "
                "were: " + "; ".join(
                    f"{SERVER_LABELS[r['server']]} at {r['connections']} "
                    f"connections {r['origin_requests_per_request']:.3f}"
                    for r in misses) +
                ". Requests for one job that arrive while its fetch is in "
                "flight share that fetch, so the one-job rows measure "
                "coalescing as much as the upstream round trip.", ""]
    return out


def fmt_split(split):
    """Format requests per worker label as shares, "52% / 48%"."""
    total = sum(split.values())
    if not total:
        return "-"
    return " / ".join(f"{split[w] / total * 100:.0f}%"
                      for w in sorted(split, key=int))


def cpu_list_text(cpus):
    """Return "CPU 0" or "CPUs 0 and 1" for a taskset list."""
    parts = cpus.split(",")
    if len(parts) == 1:
        return f"CPU {parts[0]}"
    return "CPUs " + ", ".join(parts[:-1]) + " and " + parts[-1]


def sharing_sentence(settings, cpus):
    """Say whether the 2-worker process shares wrk's CPU."""
    client = str(settings["client_cpu"])
    if client in cpus.split(","):
        return (f"wrk stays on CPU {client}, which the 2-worker process also "
                "uses, so one of its two workers shares a CPU with wrk.")
    return (f"wrk stays on CPU {client}, which the 2-worker process does not "
            "use.")


def idle_worker_note(results):
    """List the runs where a worker accepted no connection at all. The
    workers share one listening socket, and the kernel picks which of them
    accepts each connection."""
    runs = [r for r in (results.get("workers") or {}).get("runs", [])
            if any(v == 0 for v in (r.get("worker_requests") or {}).values())]
    if not runs:
        return []
    which = ", ".join(f"{r['connections']} connections, run {r['rep']}"
                      for r in runs)
    return [f"In {len(runs)} run(s) ({which}) one worker accepted no "
            "connection, so the other served every request: the workers "
            "take connections from one listening socket, and the kernel "
            "picks which of them accepts each one, here all of a run's "
            "connections opened at once. That run counts in the medians "
            "above.", ""]


def section_workers(results):
    data = results.get("workers")
    rows = results.get("summary", {}).get("workers")
    if not data or not rows:
        return []
    s = results["settings"]
    cpus = data["cpus"]
    has_matrix = "matrix" in results.get("summary", {})

    out = ["## Workers", "",
           "Two more jobgate processes, one with `workers=1` and one with "
           "`workers=2`, serve hits in turns, each repetition starting with "
           "the other one. The hits are for the same job, body and "
           f"`{s['credential_header']}` header as the jobgate hit rows of "
           "the throughput section, with the credential proven and the job "
           f"stored before the runs. Each figure is the median of "
           f"{runs_text(s['repeats'])} of {s['duration_s']} s with one wrk "
           "thread. The 1-worker process runs on "
           f"{cpu_list_text(cpus['1'])}, like the matrix's servers, and the "
           f"2-worker process on {cpu_list_text(cpus['2'])}. "
           + sharing_sentence(s, cpus["2"]),
           "",
           "\"x 1 worker\" divides by the 1-worker row at the same "
           "connection count. \"x proxy_cache\" divides requests per second "
           "by nginx proxy_cache's in the throughput section, measured "
           "earlier in this run with one nginx worker on CPU "
           f"{s['server_cpu']}. CPU us/req is the user and system time of "
           "all the process's threads over the run divided by the requests "
           "answered. Server and wrk CPU are in percent of one CPU. The last "
           "column is each worker's share of the requests, from "
           "`jobgate_worker_requests_total` on the admin port.", ""]
    out += idle_worker_note(results)
    if has_matrix:
        out += ["The chart in the throughput section shows both variants "
                "beside the servers there.", ""]
    else:
        out += ["The throughput section did not run, so there is no nginx "
                "proxy_cache figure to divide by.", "",
                "![Requests per second by variant and connection count]"
                "(results.png)", ""]

    body = []
    for row in rows:
        proxy = row.get("ratio_nginx_proxy_cache") or {}
        body.append([
            row["connections"], row["workers"],
            f"{fmt_int(row['rps'])} ({fmt_int(row['rps_min'])}-"
            f"{fmt_int(row['rps_max'])})",
            fmt_ratio(row, "rps"),
            "-" if proxy.get("rps") is None else f"{proxy['rps']:.2f}x",
            fmt(row["p50_us"] / 1000), fmt(row["p99_us"] / 1000),
            fmt(row["cpu_us_per_request"], 1),
            f"{row['server_cpu_util'] * 100:.0f}%",
            f"{row['client_cpu_util'] * 100:.0f}%",
            fmt_split(row.get("worker_requests") or {}),
        ])
    out.append(table(["Connections", "Workers", "req/s (min-max)",
                      "x 1 worker", "x proxy_cache", "p50 ms", "p99 ms",
                      "CPU us/req", "Server CPU", "wrk CPU",
                      "Requests per worker"], body))
    out.append("")
    return out


def section_cache_size(results):
    data = results.get("cache_size")
    rows = results.get("summary", {}).get("cache_size")
    if not data or not rows:
        return []
    fills = data["fills"]
    s = results["settings"]
    out = ["## Cache size", "",
           "Two jobgate processes, one filled with "
           f"{fmt_int(fills['jobgate-1k']['entries'])} entries and one "
           f"with {fmt_int(fills['jobgate-1m']['entries'])}, both through "
           "HTTP from an origin that answers any job id. Each hit run walks "
           "all the process's entries in a shuffled order, with ids that "
           "bench/wrk/jobs.lua generates in wrk's request() hook, at "
           f"{s['cache_size_connections']} connections; medians "
           f"of {runs_text(s['repeats'])}, the two processes taking turns. "
           "The hook adds client work to every request, so compare these "
           "rates with each other rather than with the single-job rows "
           "above.", ""]

    body = []
    for row in rows:
        entries = fills[row["server"]]["entries"]
        body.append([
            fmt_int(entries), f"{fmt_int(row['rps'])} "
            f"({fmt_int(row['rps_min'])}-{fmt_int(row['rps_max'])})",
            fmt_ratio(row, "rps"), fmt(row["p50_us"] / 1000),
            fmt(row["p99_us"] / 1000), fmt(row["cpu_us_per_request"], 1),
            fmt_mib(row["rss_kib"]), fmt_mib(row["rss_anon_kib"]),
        ])
    out.append(table(["Entries", "req/s (min-max)", "x 1k", "p50 ms",
                      "p99 ms", "CPU us/req", "VmRSS MiB", "RssAnon MiB"],
                     body))
    out.append("")
    pairs = results.get("summary", {}).get("cache_size_pairs") or []
    if pairs:
        out += ["The large cache's figures over the small one's, per "
                "repetition (the two runs of a repetition are adjacent in "
                "time, so a drift of the machine's speed cancels out): "
                + "; ".join(f"repetition {p['rep']}: {p['rps']:.2f}x req/s, "
                            f"{p['cpu_us_per_request']:.2f}x CPU per hit"
                            for p in pairs) + ".", ""]

    fill_rows = []
    for name in ("jobgate-1k", "jobgate-1m"):
        fill = fills[name]
        disk = fill["data_mdb_bytes"]
        fill_rows.append([fmt_int(fill["entries"]), fmt(fill["seconds"], 1),
                          fmt_int(fill["rate"]),
                          fmt_mib(disk / 1024) if disk else "-"])
    out += [f"Filling the caches, one request per new job at "
            f"{s.get('fill_connections', 64)} connections, each a miss "
            "that is fetched, inspected and stored (LMDB commits once per "
            "event-loop turn):", "",
            table(["Entries", "Seconds", "Entries per second",
                   "data.mdb on disk, MiB"], fill_rows), "",
            "VmRSS counts the LMDB pages the process has touched through "
            "its read-only map; RssAnon is the process's own memory.", ""]
    return out


def section_ready(results):
    trials = results.get("ready", {}).get("trials")
    if not trials:
        return []
    rows = []
    for label, case in trials.items():
        answers = case["answer_ms"]
        ordered = sorted(answers)
        rows.append([label, ", ".join(f"{v:.1f}" for v in answers),
                     fmt(ordered[len(ordered) // 2], 1), fmt(ordered[-1], 1),
                     fmt(sorted(case["connect_ms"])[len(ordered) // 2], 1)])
    return ["## Start time", "",
            "Milliseconds from starting the jobgate process to the first "
            "answered request. The harness polls the proxy port every "
            "0.2 ms with a job request, which jobgate forwards to the origin "
            "because no credential is proven after a start, so the figure "
            "includes that origin round trip. The last column is the time "
            "to the first accepted connection.", "",
            table(["Cache", "Trials (ms)", "Median", "Worst",
                   "Median to listening"], rows), ""]


def section_coalesce(results):
    data = results.get("coalesce")
    if not data:
        return []
    # Results from before the 2-worker cases have rows without "workers".
    cases = {}
    for row in data["cases"]:
        cases.setdefault(row["case"], {})[row.get("workers", 1)] = row
    counts = sorted({n for by_workers in cases.values() for n in by_workers})

    def per_variant(by_workers, cell):
        return " / ".join(cell(by_workers[n]) if n in by_workers else "-"
                          for n in counts)

    variants = " / ".join(f"{n} worker{'s' if n > 1 else ''}"
                          for n in counts)
    suffix = f" ({variants})" if len(counts) > 1 else ""
    rows = []
    for label, by_workers in cases.items():
        first = next(iter(by_workers.values()))
        row = [label, first["clients"], first["expected"],
               per_variant(by_workers, lambda c: str(c["origin_requests"])),
               per_variant(by_workers, lambda c: str(c["collapsed"])),
               per_variant(by_workers, lambda c: fmt(c["elapsed_ms"], 0))]
        if 2 in counts:
            split = by_workers.get(2, {}).get("worker_requests") or {}
            row.append(" / ".join(f"{split[w]:.0f}"
                                  for w in sorted(split, key=int)) or "-")
        rows.append(row)
    header = ["Case", "Clients", "Expected", "Origin requests" + suffix,
              "Answers marked collapsed" + suffix, "Burst ms" + suffix]
    text = ("Each case sends its requests at once, on connections opened "
            "beforehand, for a job that is not cached. The origin "
            f"(bench/origin/slow-origin.mjs, Node) holds every answer "
            f"{data['origin_delay_ms']} ms and counts the requests it "
            "receives per job. Unproven credentials are never merged with "
            "each other, by design, so the third case expects one fetch per "
            "credential.")
    if 2 in counts:
        header.append("Requests per worker (2 workers)")
        cpus = data.get("cpus", {})
        text += (" The cases run once against a jobgate with one worker "
                 f"on {cpu_list_text(cpus.get('1', '?'))} and once, with "
                 "other job ids, against one with `workers=2` on "
                 f"{cpu_list_text(cpus.get('2', '?'))}. Either worker may "
                 "accept a connection, so a case tests a fetch shared across "
                 "workers when the last column shows requests on both.")
    return ["## Concurrent misses for one job", "", text, "",
            table(header, rows), ""]


def watched_cost(grind, function):
    """Return (calls, instructions) per request of a watched function."""
    for row in grind.get("watched_functions", []):
        if row["function"] == function:
            return row["calls_per_request"], row["inclusive_per_request"]
    return 0.0, 0.0


def group_cost(grind, prefix):
    return sum(g["per_request"] for g in grind.get("groups", [])
               if g["group"].startswith(prefix))


def profile_summary(profile):
    """Summarise where a hit's time goes, from the measurements below."""
    lines = []
    jg = "jobgate-hit"
    ng = "nginx-proxy-cache"
    records = profile.get("perf_record", {})

    def kernel_share(name):
        for row in records.get(name, {}).get("by_dso", []):
            if row["dso"] == "[kernel.kallsyms]":
                return row["percent"]
        return None

    stats = profile.get("perf_stat", {})
    traces = profile.get("strace", {})
    if jg in records and jg in stats:
        text = (f"- Kernel and user space: jobgate spends "
                f"{fmt(kernel_share(jg), 0)}% of its CPU time in the kernel")
        if ng in records:
            text += f" (nginx proxy_cache: {fmt(kernel_share(ng), 0)}%)"
        text += (f" and makes {fmt(stats[jg]['syscalls_per_request'], 1)} "
                 "system calls per hit")
        if ng in stats:
            text += f" (nginx: {fmt(stats[ng]['syscalls_per_request'], 1)})"
        top = sorted(traces.get(jg, {}).get("syscalls", []),
                     key=lambda r: -r["per_request"])[:3]
        if top:
            text += ": " + ", ".join(f"{fmt(r['per_request'], 1)} "
                                     f"`{r['syscall']}`" for r in top)
        lines.append(text + ".")

    grind = profile.get("callgrind", {}).get("jobgate-callgrind")
    if not grind:
        return lines
    total = grind["instructions_per_request"]
    ngrind = profile.get("callgrind", {}).get("nginx-callgrind")
    text = f"- User space: {fmt_int(total)} instructions per hit"
    if ngrind:
        text += (f", {total / ngrind['instructions_per_request']:.1f}x "
                 "nginx proxy_cache's")
    areas = [g for g in grind["groups"] if g["share"] >= 0.03][:5]
    text += ". The largest areas: " + "; ".join(
        f"{g['group']} {g['share'] * 100:.0f}%" for g in areas) + "."
    lines.append(text)

    allocations = sum(watched_cost(grind, f)[0]
                      for f in ("malloc", "calloc", "realloc"))
    frees, _ = watched_cost(grind, "free")
    formats = sum(watched_cost(grind, f)[0]
                  for f in ("snprintf", "__snprintf_chk", "__isoc99_sscanf",
                            "evbuffer_add_printf", "strftime"))
    lines.append(f"- Per hit, {fmt(allocations, 1)} allocations and "
                 f"{fmt(frees, 1)} frees, and {fmt(formats, 1)} calls of "
                 "printf-style formatting (`snprintf`, `sscanf`, "
                 "`strftime`, `evbuffer_add_printf`).")

    named = [("the credential's HMAC-SHA-256 (`jg_principals_hash`; "
              "valgrind hides the CPU's SHA instructions from libcrypto, so "
              "this is higher than natively)", "jg_principals_hash"),
             ("the entry decode with its CRC32C check (`jg_entry_decode`)",
              "jg_entry_decode"),
             ("the LMDB lookup (`mdb_get`)", "mdb_get"),
             ("the job id parse (`jg_uuid_parse_segment`)",
              "jg_uuid_parse_segment")]
    parts = []
    for label, function in named:
        calls, cost = watched_cost(grind, function)
        if calls:
            parts.append(f"{label} {fmt_int(cost)} "
                         f"({cost / total * 100:.0f}%)")
    if parts:
        lines.append("- Instructions per hit of single steps: "
                     + "; ".join(parts) + ".")
    return lines


def section_profile(results):
    profile = results.get("profile")
    if not profile:
        return []
    s = results["settings"]
    out = ["## Profile of the hit path", "",
           "No code was changed for these measurements; they use the same "
           "release build. perf and strace attach to the running "
           "jobgate-hit and nginx proxy_cache worker above; callgrind runs "
           "a fresh process of each under valgrind.", ""]
    summary = profile_summary(profile)
    if summary:
        out += ["Where a hit's time goes, in short:", ""] + summary + [""]

    stats = profile.get("perf_stat", {})
    if stats:
        names = [n for n in ("jobgate-hit", "nginx-proxy-cache")
                 if n in stats]
        rows = [
            ["CPU time (task-clock), us"] +
            [fmt(stats[n]["task_clock_us_per_request"], 1) for n in names],
            ["System calls"] +
            [fmt(stats[n]["syscalls_per_request"], 2) for n in names],
            ["Context switches"] +
            [fmt(stats[n]["context_switches_per_request"], 3)
             for n in names],
        ]
        out += [f"### perf stat, per request ({s['profile_seconds']} s at "
                "64 connections)", "",
                table(["Per request"] + [SERVER_LABELS[n] for n in names],
                      rows), ""]

    traces = profile.get("strace", {})
    if traces:
        names = [n for n in ("jobgate-hit", "nginx-proxy-cache")
                 if n in traces]
        calls = {}
        for name in names:
            for row in traces[name]["syscalls"]:
                calls.setdefault(row["syscall"], {})[name] = \
                    row["per_request"]
        ordered = sorted(calls, key=lambda c: -max(calls[c].values()))
        rows = [[f"`{c}`"] + [fmt(calls[c].get(n), 3) for n in names]
                for c in ordered if max(calls[c].values()) >= 0.005]
        rows.append(["total"] + [fmt(traces[n]["total_per_request"], 2)
                                 for n in names])
        out += [f"### System calls per request (strace -c -f, "
                f"{fmt_int(s['profile_requests'])} requests at 64 "
                "connections)", "",
                table(["System call"] + [SERVER_LABELS[n] for n in names],
                      rows), ""]

    records = profile.get("perf_record", {})
    if records:
        out += [f"### Where the CPU time goes (perf record -e cpu-clock, "
                f"{s['profile_seconds']} s of hits at 64 connections)", "",
                "Share of the samples by object. `[kernel.kallsyms]` is the "
                "kernel: system calls, TCP over loopback and epoll.", ""]
        names = [n for n in ("jobgate-hit", "nginx-proxy-cache")
                 if n in records]
        shares = {}
        for name in names:
            for row in records[name]["by_dso"]:
                shares.setdefault(row["dso"], {})[name] = row["percent"]
        ordered = sorted(shares, key=lambda d: -max(shares[d].values()))
        out += [table(["Object"] + [SERVER_LABELS[n] for n in names],
                      [[f"`{d}`"] + [fmt(shares[d].get(n), 1) + "%"
                                     if n in shares[d] else "-"
                                     for n in names] for d in ordered]), ""]
        if "jobgate-hit" in records:
            out += ["jobgate's top symbols:", "",
                    table(["Share", "Object", "Symbol"],
                          [[f"{r['percent']:.1f}%", f"`{r['dso']}`",
                            f"`{r['symbol']}`"]
                           for r in records["jobgate-hit"]["by_symbol"][:20]]),
                    ""]

    grind = profile.get("callgrind", {})
    jg = grind.get("jobgate-callgrind")
    ng = grind.get("nginx-callgrind")
    if jg:
        line = (f"jobgate executes {fmt_int(jg['instructions_per_request'])}"
                " user-space instructions per hit request")
        if ng:
            ratio = jg["instructions_per_request"] / \
                ng["instructions_per_request"]
            line += (f"; nginx proxy_cache executes "
                     f"{fmt_int(ng['instructions_per_request'])} per hit "
                     f"({ratio:.2f}x)")
        out += [f"### Instructions per hit request (callgrind, "
                f"{fmt_int(jg['requests'])} requests at 8 connections)", "",
                line + ". Counters are zeroed after the warm-up and dumped "
                "after the last request, so start-up is not counted, and "
                "kernel work is not counted at all. Debian ships libevent "
                "and libcrypto without symbols for their static functions, "
                "which therefore appear as addresses. valgrind 3.19 does not "
                "report the SHA extensions of the CPU, so libcrypto runs a "
                "slower SHA-256 under callgrind than natively: the perf "
                "share of libcrypto above is the native figure.", "",
                "jobgate by area:", "",
                table(["Area", "Instructions per request", "Share"],
                      [[g["group"], fmt_int(g["per_request"]),
                        f"{g['share'] * 100:.1f}%"] for g in jg["groups"]]),
                "", "jobgate's top functions by their own instructions:", "",
                table(["Function", "Object", "Instructions per request",
                       "Share"],
                      [[f"`{f['function']}`", f"`{f['object']}`",
                        fmt_int(f["per_request"]),
                        f"{f['share'] * 100:.1f}%"]
                       for f in jg["top_functions"][:20]]), ""]
        watched = jg.get("watched_functions")
        if watched:
            out += ["Calls per hit request and the instructions spent inside "
                    "them for the steps of a hit and the calls that "
                    "allocate, format or enter the kernel. A row includes "
                    "the functions it calls, so the rows nest: the first "
                    "one covers nearly the whole request. A static function "
                    "that the compiler inlined has no row of its own.", "",
                    table(["Function", "Object", "Calls per request",
                           "Instructions per request"],
                          [[f"`{w['function']}`", f"`{w['object']}`",
                            fmt(w["calls_per_request"], 2),
                            fmt_int(w["inclusive_per_request"])]
                           for w in watched]), ""]
        if ng:
            out += ["nginx proxy_cache by area:", "",
                    table(["Area", "Instructions per request", "Share"],
                          [[g["group"], fmt_int(g["per_request"]),
                            f"{g['share'] * 100:.1f}%"]
                           for g in ng["groups"]]), ""]
    return out


def section_machine(results):
    m = results["machine"]
    s = results["settings"]
    v = m["versions"]
    out = ["## Machine, versions and method", "",
           f"- Run: {results['started_at']} to "
           f"{results.get('finished_at', '?')}, command "
           f"`{results['command']}`.",
           f"- CPU: {m['cpu_model']}, {m['cpus']} CPUs"
           f"{' (virtual machine)' if m['virtualized'] else ''}, "
           f"{m['memory_gib']} GiB memory; {m['os']}, kernel {m['kernel']}; "
           f"load average at start {' '.join(m['loadavg_at_start'])}.",
           f"- jobgate {v['jobgate']} (git describe; {build_text(v)}), nginx "
           f"{v['nginx']}, {v['wrk']}, libevent {v['libevent']}, LMDB "
           f"{v['lmdb']}, libcurl {v['libcurl']}, OpenSSL {v['openssl']}, "
           f"{v['valgrind']}, Node {v['node']}, {v['gnuplot']}.",
           f"- Body: a {s['body_bytes']}-byte OrgJobDB object, status "
           "`completed` (`in_progress` on the miss rows), "
           "`Content-Type: application/json`.",
           "- Servers: one nginx worker each (`worker_processes 1`, "
           "`access_log off`, `keepalive_requests 1000000`); jobgate with "
           "`log_level=warn`, which drops the info-level access lines, and "
           "`auth_ttl=86400`, so that a proof does not expire during the "
           "run. The origin is one more nginx, on the client's CPU."]
    out += client_and_load_notes(results)
    problems = results.get("problems") or []
    if results.get("stopped_early"):
        out.append(f"- The run stopped early: {results['stopped_early']}.")
    if problems:
        out.append("- Checks that failed: " + "; ".join(problems) + ".")
    elif "matrix" not in results:
        out.append("- Every check of the sections that ran passed.")
    else:
        workers = (", /metrics listed every worker in the workers section"
                   if "workers" in results else "")
        out.append("- Every check passed: each jobgate hit run was answered "
                   "from the cache alone (its hit counter grew by the "
                   "answers and its miss counter not at all), nginx "
                   "proxy_cache sent nothing to the origin during its runs, "
                   f"every credential was proven before the miss runs{workers}"
                   ", and wrk saw no errors.")
    out.append("")
    return out


def build_text(versions):
    build = versions.get("jobgate_build") or {}
    text = f"CMake build type {build.get('CMAKE_BUILD_TYPE', 'unknown')}"
    if build.get("CMAKE_C_FLAGS"):
        text += f", extra CFLAGS `{build['CMAKE_C_FLAGS']}`"
    modified = versions.get("jobgate_modified")
    if modified:
        # git status --porcelain writes "XY PATH" lines. The first one may
        # have lost its leading blank when the output was stripped.
        names = [line.split(None, 1)[1] for line in modified]
        text += (", built with uncommitted changes to "
                 + ", ".join(f"`{name}`" for name in names))
    return text


def client_and_load_notes(results):
    summary = results.get("summary", {})
    rows = (summary.get("matrix") or []) + (summary.get("workers") or []) + \
        (summary.get("cache_size") or [])
    notes = []
    busy = [r for r in rows if r["client_cpu_util"] >= 0.85]
    if busy:
        notes.append(
            "- wrk used 85% or more of its CPU in: " + ", ".join(
                f"{SERVER_LABELS[r['server']]} at {r['connections']}"
                for r in busy) +
            ". There the client limits the rate, so the server could answer "
            "faster than shown, and its CPU time per request is the better "
            "measure.")
    runs = (results.get("matrix", {}).get("runs", []) +
            results.get("workers", {}).get("runs", []) +
            results.get("cache_size", {}).get("runs", []))
    if runs:
        worst = max(runs, key=lambda r: r["other_cpu_util"])
        steal = max(r["steal_util"] for r in runs)
        notes.append(
            "- Other processes on the machine used up to "
            f"{worst['other_cpu_util'] * 100:.0f}% of one CPU during a run "
            f"({worst['server']}, {worst['connections']} connections, "
            f"repetition {worst['rep']}); the hypervisor stole up to "
            f"{steal * 100:.0f}% of one CPU.")
        limit = results["settings"].get("wait_for_quiet_s") or 0
        if limit > 0:
            waited = sum(r.get("waited_for_quiet_s", 0) for r in runs)
            notes.append(
                f"- Before each run the harness waited up to {limit:.0f} s "
                "for a second in which other processes used less than 20% "
                f"of one CPU ({waited:.0f} s of waiting in all).")
    return notes


# ---- chart ----------------------------------------------------------------


def write_chart(results, out_dir):
    summary = results.get("summary", {})
    rows = (summary.get("matrix") or []) + (summary.get("workers") or [])
    if not rows:
        return None
    servers = [s for s in CHART_LABELS if any(r["server"] == s for r in rows)]
    conns = sorted({r["connections"] for r in rows})
    by_key = {(r["server"], r["connections"]): r for r in rows}
    data_path = out_dir / "results.dat"
    lines = ["# connections, then median min max req/s per server: "
             + " ".join(servers)]
    for c in conns:
        cells = [str(c)]
        for s in servers:
            row = by_key.get((s, c))
            cells += ([f"{row['rps']:.0f}", f"{row['rps_min']:.0f}",
                       f"{row['rps_max']:.0f}"] if row else ["0", "0", "0"])
        lines.append(" ".join(cells))
    data_path.write_text("\n".join(lines) + "\n")

    png = out_dir / "results.png"
    plots = []
    for i, s in enumerate(servers):
        col = 2 + 3 * i
        source = f"'{data_path}'" if i == 0 else "''"
        xtic = ":xtic(1)" if i == 0 else ""
        plots.append(f"{source} using {col}:{col + 1}:{col + 2}{xtic} "
                     f"title '{CHART_LABELS[s]}'")
    script = "\n".join([
        # A key below the plot takes three rows for seven series, and
        # gnuplot then draws the x label over its first row.
        "set terminal pngcairo size 1100,560 font 'sans,10'",
        f"set output '{png}'",
        "set title 'Requests per second (median of the runs; bars: min to "
        "max)'",
        "set xlabel 'keep-alive connections'",
        "set ylabel 'requests per second'",
        "set yrange [0:*]",
        "set grid ytics",
        "set key outside right top vertical",
        "set style data histogram",
        "set style histogram errorbars gap 2 lw 1",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.9",
        "plot " + ", ".join(plots),
    ])
    done = subprocess.run(["gnuplot"], input=script, text=True,
                          capture_output=True)
    data_path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"gnuplot failed: {done.stderr}")
    return png


# ---- page -----------------------------------------------------------------


# The hand-written record of the optimisations tried, kept beside this
# script and copied into every page.
TRIED = Path(__file__).resolve().parent / "TRIED.md"


def section_tried():
    if not TRIED.exists():
        return []
    return TRIED.read_text().rstrip().split("\n") + [""]


def render(results):
    s = results["settings"]
    intro = [
        "# jobgate benchmark results", "",
        "jobgate's cache hits and misses side by side with nginx on one "
        f"machine, run with `{results['command']}` "
        f"({s['duration_s']} s per run, {runs_text(s['repeats'])} per "
        "server and connection count). "
        "[README.md](README.md) describes the harness and how to run it; "
        "this page is written by it, so edit the harness, not the page.",
        "",
    ]
    if results.get("stopped_early"):
        intro += [f"**The run stopped early** ({results['stopped_early']}); "
                  "the sections it did not reach are missing.", ""]
    parts = [intro, section_targets(results), [""], section_matrix(results),
             section_workers(results), section_cache_size(results),
             section_ready(results),
             section_coalesce(results), section_profile(results),
             section_tried(), section_machine(results)]
    return "\n".join(line for part in parts for line in part).rstrip() + "\n"


def write_all(results, out_dir):
    out_dir = Path(out_dir)
    write_chart(results, out_dir)
    (out_dir / "RESULTS.md").write_text(render(results))


def main(argv):
    if len(argv) not in (1, 2):
        print("usage: report.py RESULTS_JSON [OUT_DIR]", file=sys.stderr)
        return 2
    source = Path(argv[0])
    out_dir = Path(argv[1]) if len(argv) == 2 else source.parent
    write_all(json.loads(source.read_text()), out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
