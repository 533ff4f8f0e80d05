#!/usr/bin/env python3
"""
Measure jobgate against nginx on one machine and write bench/results.json.

This script owns a whole benchmark run once bench/run.sh has built
jobgate: it starts every server in a temporary directory of its own, drives
them with wrk, reads CPU time and memory from /proc, checks that every
measured answer is what the run claims (a cache hit, a miss), and then
calls bench/report.py to write RESULTS.md and results.png.

Servers run pinned to one CPU and wrk, with one thread, to another. Every
request carries the same credential header. Each process this script starts
is recorded by PID and stopped on exit, on error and on SIGINT, SIGTERM or
SIGHUP; nothing else is signalled.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

ORG_ID = "1c9e5a7d-3b2f-4e8a-b6d4-0f7a2c9e1b35"
HIT_JOB = "7f8c4f5e-2b1d-4c3a-9e0f-1a2b3c4d5e6f"
MISS_JOB = "0b6e2d1f-8c4a-4f3e-a9d7-5e2c1b0a9f84"
CREDENTIAL_HEADER = "Galileo-API-Key"
CREDENTIAL = "bench-credential-0001"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000

# Port offsets from --port-base, one per listener this script opens.
PORTS = {
    "nginx-static": 0,
    "nginx-proxy-cache": 1,
    "origin": 2,
    "origin-pending": 3,
    "jobgate-hit": 4,
    "jobgate-miss": 6,
    "jobgate-miss-distinct": 8,
    "jobgate-1k": 10,
    "jobgate-1m": 12,
    "jobgate-ready": 14,
    "jobgate-coalesce": 16,
    "slow-origin": 18,
    "jobgate-callgrind": 19,
    "nginx-callgrind": 21,
    "jobgate-hit-workers-1": 23,
    "jobgate-hit-workers-2": 25,
    "jobgate-coalesce-workers-2": 27,
}
# A jobgate listener at port P has its admin listener at P + 1.

MATRIX_SERVERS = [
    "nginx-static",
    "nginx-proxy-cache",
    "jobgate-hit",
    "jobgate-miss",
    "jobgate-miss-distinct",
]

# The jobgate processes of the workers section and their worker counts.
WORKER_VARIANTS = [("jobgate-hit-workers-1", 1), ("jobgate-hit-workers-2", 2)]

SECTIONS = ["matrix", "workers", "cache-size", "ready", "coalesce",
            "profile"]


class BenchError(Exception):
    """A step of the run failed; the message names the step and the cause."""


# ---- processes -----------------------------------------------------------


def read_stat(pid):
    """Return (utime + stime ticks, start time ticks, ppid, flags) of pid,
    or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12]), int(rest[19]), int(rest[1]),
            int(rest[6]))


def rss_by_mapping(pid, top=8):
    """Split the resident memory of PID by what is mapped: the files with
    the most resident KiB (shared libraries, the LMDB map), and the
    anonymous rest, from /proc/PID/smaps."""
    per_file = {}
    anon = 0
    name = None
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and ":" not in fields[0]:
            # A mapping header: address range, perms, offset, dev, inode,
            # then the path, if the mapping has one.
            name = fields[5] if len(fields) > 5 else None
            continue
        if fields[0] != "Rss:":
            continue
        kib = int(fields[1])
        if name is None or name.startswith("["):
            anon += kib
        else:
            base = Path(name).name
            per_file[base] = per_file.get(base, 0) + kib
    files = sorted(per_file.items(), key=lambda kv: -kv[1])
    return {"anon_kib": anon,
            "files": [[n, k] for n, k in files[:top]],
            "other_files_kib": sum(k for _, k in files[top:])}


def read_status(pid):
    """Return the memory lines of /proc/PID/status in KiB."""
    fields = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0])
    return fields


def children_of(pid):
    """Return the PIDs whose parent is pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = read_stat(int(entry))
        if st is not None and st[2] == pid:
            found.append(int(entry))
    return found


class Process:
    """One process this script started, and the children it tracks."""

    def __init__(self, name, popen, log_path):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        # (pid, start time) of children such as nginx workers, so that a
        # reused PID is never signalled.
        self.children = []
        self.measured_pids = [popen.pid]

    def adopt_children(self):
        for pid in children_of(self.pid):
            st = read_stat(pid)
            if st is not None:
                self.children.append((pid, st[1]))

    def log_tail(self, lines=20):
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The registry of every process started, stopped in reverse order."""

    def __init__(self):
        self.running = []

    def start(self, name, argv, log_path, cpu=None, env=None, preexec=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)
        log = open(log_path, "ab")
        try:
            # A session of its own keeps a terminal's Ctrl-C away from the
            # servers: this script stops them itself, in order.
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True,
                                     preexec_fn=preexec)
        finally:
            log.close()
        proc = Process(name, popen, log_path)
        self.running.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM, timeout=10.0):
        """Signal proc, wait up to timeout seconds, then SIGKILL it and any
        tracked child that outlived it."""
        if proc not in self.running:
            return
        self.running.remove(proc)
        if proc.popen.poll() is None:
            try:
                proc.popen.send_signal(sig)
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {proc.name} (pid {proc.pid}) ignored "
                      f"{signal.Signals(sig).name} for {timeout:.0f} s; "
                      "sending SIGKILL", file=sys.stderr)
                proc.popen.kill()
                proc.popen.wait()
        for pid, started in proc.children:
            st = read_stat(pid)
            if st is not None and st[1] == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop_all(self):
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc, timeout=5.0)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name}: {exc}", file=sys.stderr)

    def pids(self):
        found = {os.getpid()}
        for proc in self.running:
            found.add(proc.pid)
            found.update(pid for pid, _ in proc.children)
        return found


def on_signal(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


# ---- HTTP and ports --------------------------------------------------------


def http_get(port, path, headers=None, timeout=10.0):
    """GET path from 127.0.0.1:port; return (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def credential_headers(credential=CREDENTIAL):
    return {CREDENTIAL_HEADER: credential}


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(proc, port, timeout_s):
    """Poll until port accepts a connection, at most timeout_s seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with status "
                             f"{proc.popen.returncode} before listening on "
                             f"{port}:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise BenchError(f"{proc.name} did not listen on 127.0.0.1:{port} "
                     f"within {timeout_s:.0f} s:\n{proc.log_tail()}")


def parse_metrics(text):
    """Return the Prometheus samples of text as {name_with_labels: value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples


# ---- the run context ------------------------------------------------------


class Bench:
    """Settings, work directory and started servers of one run."""

    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.procs = Processes()
        self.servers = {}
        self.problems = []
        self.scripts = {}
        self.user = _user_name()
        self.group = _group_name()
        self.body_template = (BENCH_DIR / "origin" / "job.json.in").read_text()

    def port(self, name):
        return self.args.port_base + PORTS[name]

    def problem(self, text):
        print(f"bench: CHECK FAILED: {text}", file=sys.stderr)
        self.problems.append(text)

    def body(self, job_id, status):
        return (self.body_template.replace("@JOB_ID@", job_id)
                .replace("@ORG_ID@", ORG_ID).replace("@STATUS@", status))


def _user_name():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def _group_name():
    import grp
    return grp.getgrgid(os.getgid()).gr_name


def log(text):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", flush=True)


# ---- servers --------------------------------------------------------------


def render_template(path, values):
    """Replace each @NAME@ in the file at path with values[NAME]."""
    text = path.read_text()

    def replace(match):
        key = match.group(1)
        if key not in values:
            raise BenchError(f"{path}: no value for placeholder @{key}@")
        return values[key]

    return re.sub(r"@([A-Z_]+)@", replace, text)


def start_nginx(bench, name, template, extra_values=None, cpu=None,
                single_process=False, wrapper=()):
    """Start nginx with bench/nginx/TEMPLATE under a prefix of its own.

    With single_process, nginx runs without a master (for valgrind);
    otherwise the measured PID is the one worker's.
    """
    prefix = bench.work / name
    prefix.mkdir()
    values = {
        "PREFIX": str(prefix),
        "USER": bench.user,
        "GROUP": bench.group,
        "PORT": str(bench.port(name)),
        "ORIGIN_PORT": str(bench.port("origin")),
        "PENDING_PORT": str(bench.port("origin-pending")),
    }
    values.update(extra_values or {})
    conf = render_template(BENCH_DIR / "nginx" / template, values)
    if single_process:
        conf = "master_process off;\n" + conf
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)

    argv = list(wrapper) + ["nginx", "-p", str(prefix), "-c", str(conf_path),
                            "-e", str(prefix / "error.log")]
    check = subprocess.run(argv[len(wrapper):] + ["-t"], capture_output=True,
                           text=True)
    if check.returncode != 0:
        raise BenchError(f"nginx rejected {conf_path}:\n{check.stderr}")

    proc = bench.procs.start(name, argv, prefix / "stdout.log", cpu=cpu)
    wait_for_port(proc, bench.port(name), 120 if wrapper else 10)
    if not single_process:
        _find_nginx_worker(proc)
    bench.servers[name] = proc
    return proc


def _find_nginx_worker(proc):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proc.adopt_children()
        workers = [pid for pid, _ in proc.children
                   if b"worker process" in _cmdline(pid)]
        if workers:
            proc.measured_pids = workers
            return
        proc.children.clear()
        time.sleep(0.01)
    raise BenchError(f"{proc.name}: no nginx worker process found")


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def jobgate_env():
    """Return the environment without JOBGATE_* variables, which would
    override the flags below or, when unknown, stop the start."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}


def jobgate_argv(bench, port, upstream_port, cache_dir, extra=()):
    return [
        str(bench.args.jobgate),
        f"--listen=127.0.0.1:{port}",
        f"--admin_listen=127.0.0.1:{port + 1}",
        f"--upstream=http://127.0.0.1:{upstream_port}",
        f"--cache_dir={cache_dir}",
        "--log_level=warn",
        # A proof lasts the whole run, so that no hit run meets an expired
        # proof and sends one request upstream.
        "--auth_ttl=86400",
        "--drain_timeout_ms=2000",
        *extra,
    ]


def start_jobgate(bench, name, upstream, extra=(), cpu=None, wrapper=(),
                  port_name=None):
    port = bench.port(port_name or name)
    workdir = bench.work / name
    workdir.mkdir()
    argv = list(wrapper) + jobgate_argv(bench, port, bench.port(upstream),
                                        workdir / "cache", extra)
    proc = bench.procs.start(name, argv, workdir / "stderr.log", cpu=cpu,
                             env=jobgate_env())
    proc.port = port
    proc.admin_port = port + 1
    proc.cache_dir = workdir / "cache"
    wait_for_port(proc, port, 120 if wrapper else 10)
    bench.servers[name] = proc
    return proc


def jobgate_metrics(proc):
    status, _, body = http_get(proc.admin_port, "/metrics")
    if status != 200:
        raise BenchError(f"{proc.name}: GET /metrics returned status {status}")
    return parse_metrics(body.decode())


def worker_requests(metrics):
    """Return jobgate_worker_requests_total by worker label, as
    {"0": value, ...}; empty for a jobgate without the counter."""
    pattern = re.compile(r'jobgate_worker_requests_total\{worker="(\d+)"\}')
    found = {}
    for key, value in metrics.items():
        match = pattern.fullmatch(key)
        if match:
            found[match.group(1)] = value
    return found


def split_text(split):
    """Format requests per worker label for the log, "0: 512, 1: 488"."""
    return ", ".join(f"{worker}: {split[worker]:.0f}"
                     for worker in sorted(split, key=int))


def wait_for_entries(proc, count, timeout_s=30.0):
    """Poll /metrics until jobgate_cache_entries reaches count, at most
    timeout_s seconds, because writes are committed once per event-loop
    turn. Returns the last metrics read."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = jobgate_metrics(proc)
        if metrics["jobgate_cache_entries"] >= count or \
                time.monotonic() >= deadline:
            return metrics
        time.sleep(0.05)


def origin_requests(bench):
    """Return the requests the origin nginx has served, this one included."""
    status, _, body = http_get(bench.port("origin"), "/nginx_status")
    if status != 200:
        raise BenchError(f"origin: GET /nginx_status returned status "
                         f"{status}")
    # "server accepts handled requests" is followed by the three counters.
    numbers = body.decode().splitlines()[2].split()
    return int(numbers[2])


# ---- checks before measuring ----------------------------------------------


def expect(bench, condition, text):
    if not condition:
        bench.problem(text)
    return condition


def check_job_body(bench, name, body, job_id, status):
    try:
        doc = json.loads(body)
    except ValueError:
        return expect(bench, False, f"{name}: the answer is not JSON")
    ok = expect(bench, doc.get("id") == job_id,
                f"{name}: body id {doc.get('id')!r}, expected {job_id}")
    ok &= expect(bench, doc.get("organization_id") == ORG_ID,
                 f"{name}: body organization_id differs")
    ok &= expect(bench, doc.get("status") == status,
                 f"{name}: body status {doc.get('status')!r}, "
                 f"expected {status}")
    return ok


def prove_and_store(bench, proc):
    """Send the hit job's first request, which proves the credential and
    stores the job, wait for the commit, and check that the next request is
    a hit. With several workers the next request may reach another worker,
    which finds the entry only once it is committed."""
    job_path = f"/v2/org-jobs/{HIT_JOB}"
    status, headers, _ = http_get(proc.port, job_path, credential_headers())
    expect(bench, status == 200 and
           "stored" in headers.get("cache-status", ""),
           f"{proc.name}: first answer {status} "
           f"Cache-Status {headers.get('cache-status')!r}, expected stored")
    wait_for_entries(proc, 1)
    status, headers, body = http_get(proc.port, job_path,
                                     credential_headers())
    expect(bench, status == 200 and
           headers.get("cache-status") == "jobgate; hit",
           f"{proc.name}: second answer Cache-Status "
           f"{headers.get('cache-status')!r}, expected 'jobgate; hit'")
    check_job_body(bench, proc.name, body, HIT_JOB, "completed")


def prepare_servers(bench):
    """Start the servers of the main matrix and check their first
    responses."""
    cpu = bench.args.server_cpu
    job_path = f"/v2/org-jobs/{HIT_JOB}"

    start_nginx(bench, "origin", "origin.conf.in", {
        "BODY_COMPLETED": bench.body("$job", "completed"),
        "BODY_IN_PROGRESS": bench.body("$job", "in_progress"),
    }, cpu=bench.args.client_cpu)
    status, headers, body = http_get(bench.port("origin"), job_path)
    expect(bench, status == 200 and
           headers.get("content-type") == "application/json",
           f"origin: {status} {headers.get('content-type')}")
    check_job_body(bench, "origin", body, HIT_JOB, "completed")

    start_nginx(bench, "nginx-static", "static.conf.in",
                {"BODY": bench.body(HIT_JOB, "completed")}, cpu=cpu)
    status, _, body = http_get(bench.port("nginx-static"), job_path)
    expect(bench, status == 200, f"nginx-static answered {status}")
    check_job_body(bench, "nginx-static", body, HIT_JOB, "completed")

    start_nginx(bench, "nginx-proxy-cache", "proxy-cache.conf.in", cpu=cpu)
    for attempt in ("MISS", "HIT"):
        status, headers, body = http_get(bench.port("nginx-proxy-cache"),
                                         job_path, credential_headers())
        expect(bench, status == 200 and headers.get("x-cache") == attempt,
               f"nginx-proxy-cache: X-Cache {headers.get('x-cache')}, "
               f"expected {attempt}")
    check_job_body(bench, "nginx-proxy-cache", body, HIT_JOB, "completed")

    prove_and_store(bench, start_jobgate(bench, "jobgate-hit", "origin",
                                         cpu=cpu))

    for name in ("jobgate-miss", "jobgate-miss-distinct"):
        miss = start_jobgate(bench, name, "origin-pending", cpu=cpu)
        path = f"/v2/org-jobs/{MISS_JOB}"
        status, headers, body = http_get(miss.port, path,
                                         credential_headers())
        cache_status = headers.get("cache-status", "")
        expect(bench, status == 200 and "fwd=miss" in cache_status and
               "stored" not in cache_status,
               f"{name}: first answer Cache-Status {cache_status!r}, "
               "expected a miss that is not stored")
        check_job_body(bench, name, body, MISS_JOB, "in_progress")
        before = jobgate_metrics(miss)
        http_get(miss.port, path, credential_headers())
        after = jobgate_metrics(miss)
        expect(bench, after["jobgate_unproven_misses_total"] ==
               before["jobgate_unproven_misses_total"],
               f"{name}: the credential is not proven after an answer "
               "with an organization_id")


# ---- load generation ------------------------------------------------------


def wrk_script(bench, parts):
    """Join the bench/wrk files named in parts into one script file."""
    key = "+".join(parts)
    if key not in bench.scripts:
        path = bench.work / f"wrk-{'-'.join(parts)}.lua"
        path.write_text("\n".join((BENCH_DIR / "wrk" / f"{part}.lua")
                                  .read_text() for part in parts))
        bench.scripts[key] = path
    return bench.scripts[key]


def run_wrk(bench, port, conns, duration_s, path=f"/v2/org-jobs/{HIT_JOB}",
            jobs=None, count=None):
    """Run wrk against 127.0.0.1:port and return its summary.

    With jobs = (N, family, order), the requests walk N generated job ids
    (bench/wrk/jobs.lua) instead of requesting path. With count, wrk stops
    after count responses instead of after duration_s, which is then only
    the upper bound.
    """
    parts = ["summary"]
    if jobs is not None:
        parts.append("jobs")
    if count is not None:
        parts.append("count")
    script = wrk_script(bench, parts)
    marker = bench.work / f"wrk-done-{time.monotonic_ns()}"
    argv = [
        "wrk", "-t1", f"-c{conns}", f"-d{int(duration_s)}s", "--latency",
        "--timeout", "5s", "-s", str(script),
        "-H", f"{CREDENTIAL_HEADER}: {CREDENTIAL}",
        f"http://127.0.0.1:{port}{path}", "--",
        *(str(value) for value in (jobs or (0, 0, "-"))),
        str(count or 0), str(marker),
    ]
    log_path = bench.work / "wrk.log"
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = bench.procs.start("wrk", argv, log_path, cpu=bench.args.client_cpu)
    proc.log_offset = log_path.stat().st_size
    finished_at = None
    try:
        if count is None:
            proc.popen.wait(timeout=duration_s + 60)
        else:
            deadline = started + duration_s
            while time.monotonic() < deadline and proc.popen.poll() is None:
                if marker.exists():
                    finished_at = time.monotonic()
                    break
                time.sleep(0.02)
            # wrk waits out its -d duration; SIGINT ends that wait.
            proc.popen.send_signal(signal.SIGINT)
            proc.popen.wait(timeout=60)
    finally:
        bench.procs.stop(proc)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)

    output = log_path.read_text(errors="replace")[proc.log_offset:]
    summary = None
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            summary = json.loads(line[len("BENCH_JSON "):])
    if summary is None:
        raise BenchError(f"wrk printed no summary:\n{output[-2000:]}")
    if count is not None and finished_at is None:
        raise BenchError(f"wrk did not receive {count} responses within "
                         f"{duration_s:.0f} s ({summary['requests']} "
                         "received)")
    summary["client_cpu_s"] = (
        usage_after.ru_utime - usage_before.ru_utime +
        usage_after.ru_stime - usage_before.ru_stime)
    summary["wall_to_count_s"] = (finished_at - started
                                  if finished_at is not None else None)
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def other_cpu_ticks(exclude):
    """Return {pid: ticks} of user-space processes not in exclude."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        st = read_stat(int(entry))
        if st is not None and not st[3] & PF_KTHREAD:
            ticks[int(entry)] = st[0]
    return ticks


def steal_ticks():
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) if len(fields) > 8 else 0


def pid_ticks(pids):
    total = 0
    for pid in pids:
        st = read_stat(pid)
        if st is None:
            raise BenchError(f"process {pid} is gone")
        total += st[0]
    return total


def wait_for_quiet(bench):
    """Wait, at most --wait-for-quiet seconds, for a one-second window in
    which other processes use less than 20% of one CPU. Returns the seconds
    waited."""
    limit = bench.args.wait_for_quiet
    if limit <= 0:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < limit:
        own = bench.procs.pids()
        before = other_cpu_ticks(own)
        time.sleep(1.0)
        after = other_cpu_ticks(own)
        used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
        if used / CLK_TCK < 0.2:
            break
    return time.monotonic() - started


def measure(bench, name, conns, duration_s, rep, path=None, jobs=None):
    """Run wrk once against a started server and record the server's CPU
    time and memory, the load of other processes, and the cache checks."""
    proc = bench.servers[name]
    port = getattr(proc, "port", None) or bench.port(name)
    origin = bench.servers["origin"]
    is_jobgate = name.startswith("jobgate")

    waited = wait_for_quiet(bench)
    metrics_before = jobgate_metrics(proc) if is_jobgate else None
    origin_before = origin_requests(bench)
    own = bench.procs.pids()
    other_before = other_cpu_ticks(own)
    steal_before = steal_ticks()
    server_before = pid_ticks(proc.measured_pids)
    origin_cpu_before = pid_ticks(origin.measured_pids)

    wrk = run_wrk(bench, port, conns, duration_s,
                  path=path or f"/v2/org-jobs/{HIT_JOB}",
                  jobs=jobs)

    server_ticks = pid_ticks(proc.measured_pids) - server_before
    origin_ticks = pid_ticks(origin.measured_pids) - origin_cpu_before
    steal = steal_ticks() - steal_before
    other_after = other_cpu_ticks(own)
    other = sum(ticks - other_before.get(pid, 0)
                for pid, ticks in other_after.items())
    memory = {}
    for pid in proc.measured_pids:
        for key, value in read_status(pid).items():
            memory[key] = memory.get(key, 0) + value
    origin_seen = origin_requests(bench) - origin_before - 1
    seconds = wrk["duration_us"] / 1e6

    run = {
        "server": name,
        "connections": conns,
        "rep": rep,
        "requests": wrk["requests"],
        "duration_s": seconds,
        "rps": wrk["rps"],
        "latency_us": wrk["latency_us"],
        "errors": wrk["errors"],
        "server_cpu_s": server_ticks / CLK_TCK,
        "server_cpu_us_per_request":
            server_ticks / CLK_TCK * 1e6 / max(wrk["requests"], 1),
        "server_cpu_util": server_ticks / CLK_TCK / seconds,
        "client_cpu_util": wrk["client_cpu_s"] / seconds,
        "origin_requests": origin_seen,
        "origin_cpu_us_per_request":
            origin_ticks / CLK_TCK * 1e6 / max(wrk["requests"], 1),
        "other_cpu_util": other / CLK_TCK / seconds,
        "steal_util": steal / CLK_TCK / seconds,
        "waited_for_quiet_s": waited,
        "memory_kib": memory,
        "rss_by_mapping": (rss_by_mapping(proc.measured_pids[0])
                           if name.startswith("jobgate") else None),
    }
    errors = sum(wrk["errors"].values())
    expect(bench, errors == 0,
           f"{name} c={conns} rep {rep}: wrk errors {wrk['errors']}")

    if is_jobgate:
        after = jobgate_metrics(proc)

        def delta(metric):
            return after[metric] - metrics_before[metric]

        run["server_requests"] = delta("jobgate_job_requests_total")
        run["hits"] = delta("jobgate_cache_hits_total")
        run["misses"] = delta("jobgate_cache_misses_total")
        run["upstream_requests"] = delta("jobgate_upstream_requests_total")
        run["coalesced"] = delta("jobgate_coalesced_total")
        run["unproven_misses"] = delta("jobgate_unproven_misses_total")
        split_before = worker_requests(metrics_before)
        run["worker_requests"] = {
            worker: value - split_before.get(worker, 0)
            for worker, value in worker_requests(after).items()}
        if name.startswith("jobgate-miss"):
            expect(bench, run["hits"] == 0 and run["unproven_misses"] == 0,
                   f"{name} c={conns} rep {rep}: {run['hits']:.0f} hits and "
                   f"{run['unproven_misses']:.0f} unproven misses, "
                   "expected proven misses only")
        else:
            # Requests in flight when wrk stopped were served but not
            # counted by wrk, at most one per connection.
            expect(bench, run["misses"] == 0 and
                   wrk["requests"] <= run["hits"] <= wrk["requests"] + conns,
                   f"{name} c={conns} rep {rep}: {run['hits']:.0f} hits and "
                   f"{run['misses']:.0f} misses for {wrk['requests']} "
                   "answers, expected hits only")
    if name == "nginx-proxy-cache":
        expect(bench, origin_seen == 0,
               f"nginx-proxy-cache c={conns} rep {rep}: the origin saw "
               f"{origin_seen} requests, expected 0 (hits only)")
    if name in ("nginx-static", "jobgate-hit", "jobgate-1k", "jobgate-1m") \
            or name in dict(WORKER_VARIANTS):
        expect(bench, origin_seen == 0,
               f"{name} c={conns} rep {rep}: the origin saw {origin_seen} "
               "requests, expected 0")

    log(f"  {name:22s} c={conns:<5d} rep {rep}: {run['rps']:9.0f} req/s  "
        f"p50 {run['latency_us']['p50'] / 1000:7.2f} ms  "
        f"p99 {run['latency_us']['p99'] / 1000:7.2f} ms  "
        f"cpu {run['server_cpu_us_per_request']:6.1f} us/req  "
        f"client {run['client_cpu_util'] * 100:3.0f}%  "
        f"other {run['other_cpu_util'] * 100:3.0f}%")
    return run


# ---- sections -------------------------------------------------------------


def generate_ids(count, seed=20251120):
    """Return count distinct version 4 UUIDs drawn from a seeded generator,
    the same on every run."""
    rng = random.Random(seed)
    ids = []
    while len(ids) < count:
        value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if value not in ids:
            ids.append(value)
    return ids


def run_matrix(bench, results):
    args = bench.args
    # Family 2 of bench/wrk/jobs.lua, one miss per id until the walk wraps.
    jobs = {"jobgate-miss-distinct": (args.distinct_jobs, 2, "sequential")}
    path_of = {"jobgate-miss": f"/v2/org-jobs/{MISS_JOB}"}

    log("warming up every server for 2 s")
    for name in MATRIX_SERVERS:
        port = getattr(bench.servers[name], "port", None) or bench.port(name)
        run_wrk(bench, port, 64, 2, path=path_of.get(name,
                f"/v2/org-jobs/{HIT_JOB}"), jobs=jobs.get(name))

    runs = []
    for conns in args.connections:
        for rep in range(1, args.repeats + 1):
            # Each repetition starts with another server, so that a slow
            # drift of the machine does not favour one server.
            shift = (rep - 1) % len(MATRIX_SERVERS)
            order = MATRIX_SERVERS[shift:] + MATRIX_SERVERS[:shift]
            for name in order:
                runs.append(measure(bench, name, conns, args.duration, rep,
                                    path=path_of.get(name),
                                    jobs=jobs.get(name)))
                time.sleep(args.pause)
    results["matrix"] = {"runs": runs}


def two_worker_cpus(args):
    """Return the CPUs a 2-worker jobgate may use, as a taskset list. They
    are the server CPU and one that wrk does not use, or wrk's CPU when the
    machine has no third one."""
    spare = sorted(os.sched_getaffinity(0) -
                   {args.server_cpu, args.client_cpu})
    second = spare[0] if spare else args.client_cpu
    return f"{args.server_cpu},{second}"


def check_worker_split(bench, run, workers):
    """Check that /metrics lists every worker of a jobgate and that the
    per-worker counts add up to the requests wrk received."""
    name, conns, rep = run["server"], run["connections"], run["rep"]
    split = run.get("worker_requests", {})
    served = sum(split.values())
    expect(bench, len(split) == workers,
           f"{name} c={conns} rep {rep}: /metrics lists "
           f"jobgate_worker_requests_total for {len(split)} workers, "
           f"expected {workers}")
    # The kernel, not jobgate, picks the worker that accepts each
    # connection, and it may give all of a run's connections to one: that
    # is recorded and shown on the page, not a failed check.
    if any(value == 0 for value in split.values()):
        log(f"  {name} c={conns} rep {rep}: a worker accepted no "
            f"connection ({split})")
    # Requests in flight when wrk stopped were served but not counted by
    # wrk, at most one per connection.
    expect(bench, run["requests"] <= served <= run["requests"] + conns,
           f"{name} c={conns} rep {rep}: the workers served {served:.0f} "
           f"requests for {run['requests']} answers")


def run_workers(bench, results):
    """Measure the hit throughput of jobgate with one worker, pinned like
    the matrix's servers, and with two workers on two CPUs, the two
    processes taking turns."""
    args = bench.args
    cpus = {1: str(args.server_cpu), 2: two_worker_cpus(args)}
    names = [name for name, _ in WORKER_VARIANTS]
    workers_of = dict(WORKER_VARIANTS)
    for name, workers in WORKER_VARIANTS:
        proc = start_jobgate(bench, name, "origin", [f"--workers={workers}"],
                             cpu=cpus[workers])
        prove_and_store(bench, proc)

    log("warming up both for 2 s")
    for name in names:
        run_wrk(bench, bench.servers[name].port, 64, 2)

    runs = []
    for conns in args.connections:
        for rep in range(1, args.repeats + 1):
            # As in the matrix, each repetition starts with the other one.
            shift = (rep - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                run = measure(bench, name, conns, args.duration, rep)
                run["workers"] = workers_of[name]
                check_worker_split(bench, run, workers_of[name])
                log(f"  {name:22s} requests per worker: "
                    + split_text(run.get("worker_requests", {})))
                runs.append(run)
                time.sleep(args.pause)
    results["workers"] = {
        "cpus": {str(workers): cpus[workers] for workers in cpus},
        "runs": runs,
    }
    for name in names:
        bench.procs.stop(bench.servers[name])


def run_cache_size(bench, results):
    """Hit throughput with a small and a large cache, and the fill time.

    Both caches hold jobs of family 1 of bench/wrk/jobs.lua: the small one
    jobs 0 to small_fill - 1, the large one jobs 0 to fill - 1.
    """
    args = bench.args
    cpu = args.server_cpu

    # An entry takes about 1 KiB of map (body, key, by_time row and
    # half-full B-tree pages; a 1000000-entry fill measured 960 bytes each).
    # A map of 4 KiB per entry keeps the fill far below the high-water
    # mark, so nothing is evicted. The file grows only as it is used.
    map_bytes = max(1 << 30, args.fill * 4096)
    extra = [f"--cache_max_bytes={map_bytes}"]
    small = start_jobgate(bench, "jobgate-1k", "origin", extra, cpu=cpu)
    large = start_jobgate(bench, "jobgate-1m", "origin", extra, cpu=cpu)

    fills = {}
    for proc, count in ((small, args.small_fill), (large, args.fill)):
        log(f"filling {proc.name} with {count} entries through HTTP")
        before = jobgate_metrics(proc)
        wrk = run_wrk(bench, proc.port, args.fill_connections,
                      args.fill_timeout, jobs=(count, 1, "sequential"),
                      count=count)
        fill_s = wrk["wall_to_count_s"]
        after = wait_for_entries(proc, count)
        stored = after["jobgate_stored_total"] - before["jobgate_stored_total"]
        entries = after["jobgate_cache_entries"]
        expect(bench, stored == count and entries == count,
               f"{proc.name}: {stored:.0f} stored and {entries:.0f} entries "
               f"after a fill of {count}")
        data_mdb = proc.cache_dir / "data.mdb"
        fills[proc.name] = {
            "entries": count,
            "seconds": fill_s,
            "rate": count / fill_s if fill_s else None,
            "upstream_requests": after["jobgate_upstream_requests_total"] -
                before["jobgate_upstream_requests_total"],
            "cache_used_bytes": after.get("jobgate_cache_used_bytes"),
            "data_mdb_bytes": data_mdb.stat().st_blocks * 512
                if data_mdb.exists() else None,
            "errors": wrk["errors"],
        }
        log(f"  {count} entries in {fill_s:.1f} s "
            f"({count / fill_s:.0f} per second)")

    runs = []
    walks = {"jobgate-1k": (args.small_fill, 1, "shuffled"),
             "jobgate-1m": (args.fill, 1, "shuffled")}
    log(f"hit throughput over every entry in random order, "
        f"c={args.cache_size_connections}")
    for rep in range(1, args.repeats + 1):
        order = ["jobgate-1k", "jobgate-1m"]
        if rep % 2 == 0:
            order.reverse()
        for name in order:
            runs.append(measure(bench, name, args.cache_size_connections,
                                args.duration, rep, jobs=walks[name]))
            time.sleep(args.pause)
    results["cache_size"] = {"fills": fills, "runs": runs,
                             "cache_max_bytes": map_bytes}

    # The ready section restarts jobgate on the large cache directory.
    bench.procs.stop(small)
    bench.procs.stop(large)
    bench.large_cache_dir = large.cache_dir


def time_first_answer(bench, cache_dir):
    """Start jobgate and poll its proxy port until a request is answered.

    Returns the milliseconds from the start to the first accepted
    connection and to the first answer.
    """
    port = bench.port("jobgate-ready")
    argv = jobgate_argv(bench, port, bench.port("origin"), cache_dir)
    request = (f"GET /v2/org-jobs/{HIT_JOB} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"{CREDENTIAL_HEADER}: {CREDENTIAL}\r\n"
               "Connection: close\r\n\r\n").encode()
    log_path = bench.work / "jobgate-ready.log"
    cpu = bench.args.server_cpu

    started = time.monotonic()
    # Setting the CPU in the child before exec keeps an exec of taskset out
    # of the timing.
    proc = bench.procs.start("jobgate-ready", argv, log_path,
                             env=jobgate_env(),
                             preexec=lambda: os.sched_setaffinity(0, {cpu}))
    connected = answered = None
    try:
        # At most 20000 attempts 0.2 ms apart, about 5 s.
        for _ in range(20000):
            if proc.popen.poll() is not None:
                raise BenchError(f"jobgate exited during start:\n"
                                 f"{proc.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port),
                                              timeout=5) as sock:
                    if connected is None:
                        connected = time.monotonic()
                    sock.sendall(request)
                    first = sock.recv(64)
                if first.startswith(b"HTTP/1.1 200"):
                    answered = time.monotonic()
                    break
            except OSError:
                pass
            time.sleep(0.0002)
    finally:
        bench.procs.stop(proc)
    if answered is None:
        raise BenchError("jobgate sent no response within 5 s of its start")
    return (connected - started) * 1000, (answered - started) * 1000


def run_ready(bench, results):
    trials = {}
    cases = [("empty cache", None)]
    large_dir = getattr(bench, "large_cache_dir", None)
    if large_dir is not None:
        cases.append((f"{bench.args.fill} entries", large_dir))
    for label, cache_dir in cases:
        connect_ms = []
        answer_ms = []
        for trial in range(bench.args.ready_trials):
            directory = cache_dir or bench.work / f"ready-cache-{trial}"
            connected, answered = time_first_answer(bench, directory)
            connect_ms.append(connected)
            answer_ms.append(answered)
        trials[label] = {"connect_ms": connect_ms, "answer_ms": answer_ms}
        log(f"first answer after start, {label}: "
            + ", ".join(f"{v:.1f}" for v in answer_ms) + " ms")
    results["ready"] = {"trials": trials}


def burst(port, job_id, credentials):
    """Send one request per credential, all at once, each on a connection
    opened beforehand; return the Cache-Status values received."""
    barrier = threading.Barrier(len(credentials))
    answers = [None] * len(credentials)

    def client(index, credential):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.connect()
            barrier.wait(timeout=30)
            conn.request("GET", f"/v2/org-jobs/{job_id}",
                         headers=credential_headers(credential))
            resp = conn.getresponse()
            resp.read()
            answers[index] = (resp.status, resp.getheader("Cache-Status"))
        except Exception as exc:
            answers[index] = (None, repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i, cred))
               for i, cred in enumerate(credentials)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def run_bursts(bench, proc, slow_port, ids, workers):
    """Send the four bursts of concurrent misses to one jobgate, in order,
    because the second and fourth need the proofs of the first and third.
    ids are four jobs not yet requested from the slow origin."""
    args = bench.args

    def origin_count(job_id):
        _, _, body = http_get(slow_port, "/counts")
        return json.loads(body)["jobs"].get(job_id, 0)

    one = [CREDENTIAL] * args.burst
    many = [f"bench-credential-{i:04d}" for i in range(2, args.burst + 2)]
    cases = [
        ("one credential, not yet proven", ids[0], one, 1),
        ("one credential, proven", ids[1], one, 1),
        (f"{args.burst} credentials, none proven", ids[2], many, args.burst),
        (f"{args.burst} credentials, all proven for the organization",
         ids[3], many, 1),
    ]
    rows = []
    for label, job_id, creds, expected in cases:
        split_before = worker_requests(jobgate_metrics(proc))
        started = time.monotonic()
        answers = burst(proc.port, job_id, creds)
        elapsed = (time.monotonic() - started) * 1000
        seen = origin_count(job_id)
        split_after = worker_requests(jobgate_metrics(proc))
        ok_answers = sum(1 for status, _ in answers if status == 200)
        collapsed = sum(1 for _, cs in answers if cs and "collapsed" in cs)
        rows.append({
            "case": label, "workers": workers, "job": job_id,
            "clients": len(creds), "origin_requests": seen,
            "expected": expected, "answers_200": ok_answers,
            "collapsed": collapsed, "elapsed_ms": elapsed,
            "worker_requests": {
                worker: value - split_before.get(worker, 0)
                for worker, value in split_after.items()},
        })
        where = f"coalesce '{label}', {workers} worker(s)"
        expect(bench, ok_answers == len(creds),
               f"{where}: {ok_answers} of {len(creds)} answers were 200: "
               f"{answers[:3]}")
        expect(bench, seen == expected,
               f"{where}: the origin saw {seen} requests, expected "
               f"{expected}")
        log(f"{len(creds)} concurrent misses, {label}, {workers} worker(s): "
            f"origin saw {seen} (expected {expected}), {collapsed} answers "
            f"marked collapsed, {elapsed:.0f} ms, requests per worker "
            + split_text(rows[-1]["worker_requests"]))
    return rows


def run_coalesce(bench, results):
    """Send bursts of concurrent misses for one job to a 1-worker jobgate,
    pinned like the matrix's servers, and to a 2-worker one. There the
    requests for one job may reach either worker and must still share one
    fetch."""
    args = bench.args
    slow_port = bench.port("slow-origin")
    origin = bench.procs.start(
        "slow-origin",
        ["node", str(BENCH_DIR / "origin" / "slow-origin.mjs"),
         str(slow_port), str(args.origin_delay_ms), ORG_ID,
         str(BENCH_DIR / "origin" / "job.json.in")],
        bench.work / "slow-origin.log", cpu=args.client_cpu)
    wait_for_port(origin, slow_port, 10)
    # generate_ids is seeded, so the 1-worker cases keep the job ids of
    # results from before the 2-worker cases existed.
    ids = generate_ids(8)

    proc = start_jobgate(bench, "jobgate-coalesce", "slow-origin",
                         ["--workers=1"], cpu=args.server_cpu)
    rows = run_bursts(bench, proc, slow_port, ids[:4], 1)
    bench.procs.stop(proc)

    cpus = two_worker_cpus(args)
    proc = start_jobgate(bench, "jobgate-coalesce-workers-2", "slow-origin",
                         ["--workers=2"], cpu=cpus)
    rows += run_bursts(bench, proc, slow_port, ids[4:], 2)
    bench.procs.stop(proc)

    results["coalesce"] = {"origin_delay_ms": args.origin_delay_ms,
                           "cpus": {"1": str(args.server_cpu), "2": cpus},
                           "cases": rows}
    bench.procs.stop(origin)


# ---- profile --------------------------------------------------------------


def server_requests(bench, name):
    proc = bench.servers[name]
    if name.startswith("jobgate"):
        return jobgate_metrics(proc)["jobgate_job_requests_total"]
    return None


def run_perf_stat(bench, name):
    """Count task-clock, context switches and system calls per request
    during one wrk run at 64 connections."""
    proc = bench.servers[name]
    port = getattr(proc, "port", None) or bench.port(name)
    out = bench.work / f"perf-stat-{name}.csv"
    perf = bench.procs.start(
        "perf-stat",
        ["perf", "stat", "-x", ",", "-o", str(out), "-e",
         "task-clock,context-switches,raw_syscalls:sys_enter",
         "-p", ",".join(map(str, proc.measured_pids))],
        bench.work / "perf.log")
    time.sleep(0.2)
    wrk = run_wrk(bench, port, 64, bench.args.profile_seconds)
    bench.procs.stop(perf, sig=signal.SIGINT)

    # perf stat -x writes "value,unit,event,..." per counter, and
    # "<not supported>" or "<not counted>" as the value of a missing one.
    counters = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3:
            continue
        try:
            counters[fields[2]] = float(fields[0])
        except ValueError:
            counters[fields[2]] = None

    requests = wrk["requests"]

    def per_request(event, scale=1.0):
        value = counters.get(event)
        return None if value is None else value * scale / requests

    return {
        "requests": requests,
        "rps": wrk["rps"],
        "task_clock_us_per_request": per_request("task-clock", 1000.0),
        "context_switches_per_request": per_request("context-switches"),
        "syscalls_per_request": per_request("raw_syscalls:sys_enter"),
    }


def parse_strace_summary(text):
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit():
            continue
        # % time, seconds, usecs/call, calls, [errors,] syscall
        name = fields[-1]
        if name == "total":
            continue
        errors = int(fields[4]) if len(fields) == 6 else 0
        rows.append({"syscall": name, "calls": int(fields[3]),
                     "errors": errors})
    return rows


def run_strace(bench, name):
    """Count system calls by name over a fixed number of hit requests."""
    proc = bench.servers[name]
    port = getattr(proc, "port", None) or bench.port(name)
    out = bench.work / f"strace-{name}.txt"
    count = bench.args.profile_requests
    strace = bench.procs.start(
        "strace",
        ["strace", "-c", "-f", "-o", str(out)] +
        [arg for pid in proc.measured_pids for arg in ("-p", str(pid))],
        bench.work / "strace.log")
    time.sleep(0.5)
    before = server_requests(bench, name)
    wrk = run_wrk(bench, port, 64, 600, count=count)
    after = server_requests(bench, name)
    bench.procs.stop(strace, sig=signal.SIGINT)
    # The /metrics requests go to the admin listener and are not counted.
    requests = (after - before) if before is not None else wrk["requests"]
    rows = parse_strace_summary(out.read_text())
    for row in rows:
        row["per_request"] = row["calls"] / requests
    rows.sort(key=lambda row: -row["calls"])
    return {"requests": requests,
            "total_per_request": sum(r["calls"] for r in rows) / requests,
            "syscalls": rows}


def run_perf_record(bench, name):
    """Sample where the CPU time of one server goes, kernel included."""
    proc = bench.servers[name]
    port = getattr(proc, "port", None) or bench.port(name)
    data = bench.work / f"perf-{name}.data"
    perf = bench.procs.start(
        "perf-record",
        ["perf", "record", "-e", "cpu-clock", "-F", "999", "-o", str(data),
         "-p", ",".join(map(str, proc.measured_pids))],
        bench.work / "perf.log")
    time.sleep(0.3)
    run_wrk(bench, port, 64, bench.args.profile_seconds)
    bench.procs.stop(perf, sig=signal.SIGINT)

    def report(sort):
        text = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children",
             "--sort", sort, "--percent-limit", "0.5"],
            capture_output=True, text=True).stdout
        rows = []
        for line in text.splitlines():
            match = re.match(r"\s+([\d.]+)%\s+(\S+)(?:\s+\[.\]\s+(.*))?$",
                             line.rstrip())
            if match:
                rows.append({"percent": float(match.group(1)),
                             "dso": match.group(2),
                             "symbol": (match.group(3) or "").strip()})
        return rows

    return {"by_dso": report("dso"), "by_symbol": report("dso,sym")[:30]}


def parse_callgrind(path):
    """Read a callgrind output file.

    Returns (costs, calls, total). costs maps (object, function) to the
    instructions the function executed itself. calls maps a called
    (object, function) to [number of calls, instructions inside them],
    summed over calls from other functions, which is the function's
    inclusive cost unless it recurses through another function. A cost line
    after a calls= line is the inclusive cost of that call, not the
    caller's own.
    """
    names = {"ob": {}, "fn": {}}
    current = {"ob": "?", "fn": "?"}
    callee = {"ob": None, "fn": "?"}
    costs = {}
    calls = {}
    pending = None
    total = 0
    summary = None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        match = re.match(r"^(ob|fn|cob|cfn|fl|fi|fe|cfi|cfl)=\((\d+)\)"
                         r"(?: (.*))?$", line)
        if match:
            kind, index, name = match.groups()
            table = {"cob": "ob", "cfn": "fn"}.get(kind, kind)
            if name is not None and table in names:
                names[table][index] = name
            if kind in ("ob", "fn"):
                current[kind] = names[kind].get(index, index)
                callee["ob"] = None
            elif kind in ("cob", "cfn"):
                callee[table] = names[table].get(index, index)
            continue
        if line.startswith("calls="):
            count = int(line[len("calls="):].split()[0])
            target = (callee["ob"] or current["ob"], callee["fn"])
            pending = (target, count)
            callee["ob"] = None
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            fields = line.split()
            if len(fields) < 2:
                continue
            value = int(fields[1])
            if pending is not None:
                target, count = pending
                pending = None
                if target != (current["ob"], current["fn"]):
                    entry = calls.setdefault(target, [0, 0])
                    entry[0] += count
                    entry[1] += value
                continue
            key = (current["ob"], current["fn"])
            costs[key] = costs.get(key, 0) + value
            total += value
            continue
        if line.startswith("summary:"):
            summary = int(line.split()[1])
    return costs, calls, summary if summary is not None else total


# Functions whose calls per request and inclusive cost RESULTS.md lists:
# jobgate's steps of a hit, the libevent and libc work they start, and the
# calls that cost a system call or an allocation.
WATCHED_FUNCTIONS = [
    # jobgate's HTTP server and job route (static ones appear when they are
    # not inlined).
    "on_readable", "process_input", "parse_head", "dispatch",
    "finish_request", "jg_http_reply", "jg_http_reply_buffer", "format_head",
    "send_iov", "flush_output", "arm_deadline", "http_date", "jg_http_find",
    "jg_http_add_header", "jg_request_handle", "job_route", "lookup",
    "reply_hit", "jg_principals_hash", "jg_principals_fingerprint",
    "jg_principals_orgs", "jg_cache_get", "jg_cache_release",
    "jg_entry_decode", "jg_uuid_parse_segment", "jg_server_reply",
    "jg_access_log",
    # libevent, where jobgate still uses it per request.
    "evhttp_send_reply", "evhttp_parse_firstline_",
    "evhttp_uri_parse_with_flags", "evutil_date_rfc1123",
    "evhttp_find_header", "evhttp_add_header", "evbuffer_add_printf",
    "event_add", "event_del", "event_active",
    # libc calls that allocate, format or enter the kernel.
    "malloc", "calloc", "realloc", "free", "snprintf", "__snprintf_chk",
    "__vsnprintf_chk", "__isoc99_sscanf", "strftime", "gmtime_r",
    "epoll_ctl", "epoll_wait", "recv", "read", "readv", "writev", "send",
    "ioctl", "clock_gettime",
    # libcrypto and LMDB.
    "HMAC", "HMAC_Init_ex", "EVP_MAC_init", "EVP_MAC_update",
    "EVP_MAC_final", "mdb_get", "mdb_txn_renew", "mdb_txn_reset",
]


COST_GROUPS = [
    # (group, object pattern, function pattern); first match wins.
    ("malloc and free", r"libc\.so", r"malloc|free|calloc|realloc|"
     r"_int_|tcache|unlink_chunk|arena|sysmalloc|consolidate"),
    ("printf-style formatting", r"libc\.so",
     r"printf|_IO_|itoa|strchrnul|scanf|strtol|____strtol|__strtoul|"
     r"str_to_mpn|__mpn|round_and_return|strftime|__tz|gmtime|localtime|"
     r"offtime|__offtime"),
    ("HMAC-SHA-256 (libcrypto)", r"libcrypto", r""),
    ("LMDB", r"liblmdb", r""),
    ("libcurl", r"libcurl", r""),
    ("libevent (event loop; evhttp, bufferevent, evbuffer where used)",
     r"libevent", r""),
    ("libc strings and memory", r"libc\.so", r"str|mem|bcmp|tolower|toupper"),
    ("libc other", r"libc\.so", r""),
    ("dynamic linker (PLT, TLS)", r"ld-linux", r""),
    ("nginx", r"nginx", r""),
    ("jobgate: entry decode (CRC32C)", r"jobgate", r"jg_entry_decode|crc"),
    ("jobgate: logging", r"jobgate", r"log"),
    ("jobgate: HTTP server", r"jobgate", r"^(jg_http|on_readable|"
     r"process_input|parse_|read_head|read_body|read_framing|dispatch|"
     r"finish_request|format_head|send_iov|flush_output|arm_deadline|"
     r"http_date|append|is_tchar|is_field_char|list_has_token|"
     r"method_from_name|reason_phrase|on_writable|on_accept|conn_)"),
    ("jobgate: other", r"jobgate", r""),
]


def group_of(obj, fn):
    for group, obj_pattern, fn_pattern in COST_GROUPS:
        if re.search(obj_pattern, obj) and re.search(fn_pattern, fn):
            return group
    return "other"


def run_callgrind_one(bench, name, start):
    """Count instructions per hit request under callgrind: zero the
    counters after the warm-up, send a fixed number of requests, dump."""
    count = bench.args.profile_requests
    out = bench.work / f"callgrind-{name}.out"
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--collect-systime=no"]
    proc = start(wrapper)
    port = getattr(proc, "port", None) or bench.port(name)
    path = f"/v2/org-jobs/{HIT_JOB}"
    for _ in range(2):
        http_get(port, path, credential_headers(), timeout=30)
    _, headers, _ = http_get(port, path, credential_headers(), timeout=30)
    expect(bench, headers.get("cache-status", headers.get("x-cache")) in
           ("jobgate; hit", "HIT"),
           f"{name}: the warm-up did not end with a hit: {headers}")

    control = subprocess.run(["callgrind_control", "-z", str(proc.pid)],
                             capture_output=True, text=True)
    if control.returncode != 0:
        raise BenchError(f"callgrind_control -z failed: {control.stderr}")
    wrk = run_wrk(bench, port, 8, 600, count=count)
    control = subprocess.run(["callgrind_control", "-d", str(proc.pid)],
                             capture_output=True, text=True)
    if control.returncode != 0:
        raise BenchError(f"callgrind_control -d failed: {control.stderr}")
    dumps = sorted(bench.work.glob(f"callgrind-{name}.out.*"))
    bench.procs.stop(proc, timeout=60)
    if not dumps:
        raise BenchError(f"callgrind wrote no dump for {name}")

    costs, calls, total = parse_callgrind(dumps[-1])
    # Requests in flight when wrk stopped were served too, at most one per
    # connection, so the per-request figures are at most 0.04 % high.
    requests = wrk["requests"]
    groups = {}
    for (obj, fn), value in costs.items():
        group = group_of(obj, fn)
        groups[group] = groups.get(group, 0) + value
    top = sorted(costs.items(), key=lambda item: -item[1])[:25]
    watched = []
    for (obj, fn), (count, inclusive) in calls.items():
        if fn in WATCHED_FUNCTIONS and count > 0:
            watched.append({"object": Path(obj).name, "function": fn,
                            "calls_per_request": count / requests,
                            "inclusive_per_request": inclusive / requests})
    watched.sort(key=lambda row: -row["inclusive_per_request"])
    return {
        "requests": requests,
        "instructions_per_request": total / requests,
        "groups": sorted(({"group": g, "per_request": v / requests,
                           "share": v / total}
                          for g, v in groups.items()),
                         key=lambda row: -row["per_request"]),
        "top_functions": [{"object": Path(obj).name, "function": fn,
                           "per_request": value / requests,
                           "share": value / total}
                          for (obj, fn), value in top],
        "watched_functions": watched,
    }


def run_callgrind(bench):
    cpu = bench.args.server_cpu
    found = {}

    def start_jg(wrapper):
        return start_jobgate(bench, "jobgate-callgrind", "origin", cpu=cpu,
                             wrapper=wrapper)

    def start_nginx_cg(wrapper):
        proc = start_nginx(bench, "nginx-callgrind", "proxy-cache.conf.in",
                           cpu=cpu, single_process=True, wrapper=wrapper)
        return proc

    for name, start in (("jobgate-callgrind", start_jg),
                        ("nginx-callgrind", start_nginx_cg)):
        log(f"callgrind: {bench.args.profile_requests} hits on {name}")
        found[name] = run_callgrind_one(bench, name, start)
        log(f"  {found[name]['instructions_per_request']:.0f} instructions "
            "per request")
    return found


def run_profile(bench, results):
    profile = {}
    for tool, step in (("perf_stat", run_perf_stat), ("strace", run_strace)):
        profile[tool] = {}
        for name in ("jobgate-hit", "nginx-proxy-cache"):
            log(f"{tool} on {name}")
            try:
                profile[tool][name] = step(bench, name)
            except (BenchError, OSError, KeyError, ValueError) as exc:
                bench.problem(f"{tool} on {name} failed: {exc}")
    profile["perf_record"] = {}
    for name in ("jobgate-hit", "nginx-proxy-cache"):
        log(f"perf record on {name}")
        try:
            profile["perf_record"][name] = run_perf_record(bench, name)
        except (BenchError, OSError) as exc:
            bench.problem(f"perf record on {name} failed: {exc}")
    try:
        profile["callgrind"] = run_callgrind(bench)
    except (BenchError, OSError) as exc:
        bench.problem(f"callgrind failed: {exc}")
    results["profile"] = profile


# ---- summary and targets ----------------------------------------------------


def summarize_runs(runs, baseline="nginx-proxy-cache"):
    """Median figures per (server, connections) and ratios to baseline."""
    groups = {}
    for run in runs:
        groups.setdefault((run["server"], run["connections"]), []).append(run)
    rows = []
    for (server, conns), items in groups.items():
        last = max(items, key=lambda r: r["rep"])
        rows.append({
            "server": server,
            "connections": conns,
            "runs": len(items),
            "rps": statistics.median(r["rps"] for r in items),
            "rps_min": min(r["rps"] for r in items),
            "rps_max": max(r["rps"] for r in items),
            "p50_us": statistics.median(r["latency_us"]["p50"]
                                        for r in items),
            "p99_us": statistics.median(r["latency_us"]["p99"]
                                        for r in items),
            "cpu_us_per_request": statistics.median(
                r["server_cpu_us_per_request"] for r in items),
            "server_cpu_util": statistics.median(r["server_cpu_util"]
                                                 for r in items),
            "client_cpu_util": statistics.median(r["client_cpu_util"]
                                                 for r in items),
            "other_cpu_util_max": max(r["other_cpu_util"] for r in items),
            "rss_kib": last["memory_kib"].get("VmRSS"),
            "rss_anon_kib": last["memory_kib"].get("RssAnon"),
            "rss_by_mapping": last.get("rss_by_mapping"),
            "hwm_kib": last["memory_kib"].get("VmHWM"),
            "origin_requests_per_request": statistics.median(
                r.get("upstream_requests", r["origin_requests"]) /
                max(r["requests"], 1) for r in items),
            "errors": sum(sum(r["errors"].values()) for r in items),
        })
    by_key = {(r["server"], r["connections"]): r for r in rows}
    for row in rows:
        base = by_key.get((baseline, row["connections"]))
        if base is None:
            continue
        row["ratio"] = {
            key: (row[key] / base[key] if base[key] else None)
            for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request",
                        "rss_kib")
            if row[key] is not None and base[key] is not None
        }
    rows.sort(key=lambda r: (r["connections"],
                             MATRIX_SERVERS.index(r["server"])
                             if r["server"] in MATRIX_SERVERS else 99))
    return rows


def summarize_workers(results):
    """Summarize the workers section: median figures per variant and
    connection count, with ratios to the 1-worker variant ("ratio").

    When the matrix ran, "ratio_nginx_proxy_cache" divides by its nginx
    proxy_cache figure at the same connection count. "worker_requests"
    sums the requests per worker over the runs."""
    runs = results["workers"]["runs"]
    rows = summarize_runs(runs, baseline=WORKER_VARIANTS[0][0])
    proxy_cache = {r["connections"]: r
                   for r in results["summary"].get("matrix", [])
                   if r["server"] == "nginx-proxy-cache"}
    workers_of = dict(WORKER_VARIANTS)
    for row in rows:
        row["workers"] = workers_of[row["server"]]
        base = proxy_cache.get(row["connections"])
        row["ratio_nginx_proxy_cache"] = (
            {"rps": row["rps"] / base["rps"]} if base and base["rps"]
            else None)
        totals = {}
        for run in runs:
            if (run["server"], run["connections"]) == \
                    (row["server"], row["connections"]):
                for worker, value in run.get("worker_requests", {}).items():
                    totals[worker] = totals.get(worker, 0) + value
        row["worker_requests"] = totals
    rows.sort(key=lambda r: (r["connections"], r["workers"]))
    return rows


def pair_ratios(runs, numerator, denominator):
    """Return, per repetition, the large cache's figures over the small
    one's: req/s and CPU time per request. The two runs of a repetition are
    adjacent in time, so a slow drift of the machine's speed cancels out of
    these ratios, which it does not in a ratio of medians."""
    by_rep = {}
    for run in runs:
        by_rep.setdefault(run["rep"], {})[run["server"]] = run
    pairs = []
    for rep in sorted(by_rep):
        pair = by_rep[rep]
        if numerator in pair and denominator in pair:
            top, bottom = pair[numerator], pair[denominator]
            pairs.append({
                "rep": rep,
                "rps": top["rps"] / bottom["rps"],
                "cpu_us_per_request": top["server_cpu_us_per_request"] /
                    bottom["server_cpu_us_per_request"],
            })
    return pairs


def evaluate_targets(results):
    """Compare the run with the project's performance targets."""
    targets = []
    rows = {(r["server"], r["connections"]): r
            for r in results.get("summary", {}).get("matrix", [])}

    def add(text, measured, met):
        targets.append({"target": text, "measured": measured, "met": met})

    def hit_vs(conns, base, minimum, label):
        row = rows.get(("jobgate-hit", conns))
        ref = rows.get((base, conns))
        if row is None or ref is None:
            add(label, "not measured", None)
            return
        ratio = row["rps"] / ref["rps"]
        add(label, f"{ratio:.2f}x ({row['rps']:.0f} / {ref['rps']:.0f} "
            "req/s)", ratio >= minimum)

    hit_vs(64, "nginx-proxy-cache", 1.2,
           "hit throughput >= 1.2x nginx proxy_cache at 64 connections")
    hit_vs(1000, "nginx-proxy-cache", 1.0,
           "hit throughput >= 1.0x nginx proxy_cache at 1000 connections")
    conns_measured = sorted({c for _, c in rows})
    for conns in conns_measured:
        row = rows.get(("jobgate-hit", conns))
        ref = rows.get(("nginx-proxy-cache", conns))
        if row and ref:
            add(f"hit p99 <= nginx proxy_cache p99 at {conns} connections",
                f"{row['p99_us'] / 1000:.2f} ms vs "
                f"{ref['p99_us'] / 1000:.2f} ms",
                row["p99_us"] <= ref["p99_us"])
    for conns in conns_measured:
        hit_vs(conns, "nginx-static", 0.6,
               f"hit throughput >= 0.6x nginx static at {conns} connections")
    row = rows.get(("jobgate-hit", 1000))
    if row and row["rss_kib"]:
        anon = row.get("rss_anon_kib")
        own = (f", of which {anon / 1024:.1f} MiB its own memory (RssAnon)"
               if anon is not None else "")
        add("RSS after the 1000-connection run <= 12 MB",
            f"{row['rss_kib'] / 1024:.1f} MiB{own}",
            row["rss_kib"] <= 12 * 1024)
    else:
        add("RSS after the 1000-connection run <= 12 MB", "not measured",
            None)
    sizes = {r["server"]: r for r in
             results.get("summary", {}).get("cache_size", [])}
    pairs = results.get("summary", {}).get("cache_size_pairs") or []
    if "jobgate-1k" in sizes and "jobgate-1m" in sizes and pairs:
        small, large = sizes["jobgate-1k"], sizes["jobgate-1m"]
        ratio = statistics.median(p["rps"] for p in pairs)
        cpu = statistics.median(p["cpu_us_per_request"] for p in pairs)
        client = max(small["client_cpu_util"], large["client_cpu_util"])
        entries = results["cache_size"]["fills"]["jobgate-1m"]["entries"]
        # When wrk saturates its CPU, both rates are the client's, so the
        # server's CPU time per hit also has to stay within 1 / 0.9.
        add(f"hit throughput with {entries} entries >= 0.9x with "
            f"{results['cache_size']['fills']['jobgate-1k']['entries']} "
            "(median of the per-repetition ratios)",
            f"{ratio:.2f}x req/s; CPU time per hit {cpu:.2f}x (wrk at "
            f"{client * 100:.0f}% of its CPU)",
            ratio >= 0.9 and cpu <= 1 / 0.9)
    else:
        add("hit throughput with 1 000 000 entries >= 0.9x with 1 000",
            "not measured", None)
    ready = results.get("ready", {}).get("trials", {})
    if ready:
        worst = max(max(case["answer_ms"]) for case in ready.values())
        add("ready within 50 ms of start (worst trial)", f"{worst:.1f} ms",
            worst <= 50)
    else:
        add("ready within 50 ms of start", "not measured", None)
    return targets


# ---- machine ----------------------------------------------------------------


def command_output(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip()
    return text or None


def dpkg_version(package):
    return command_output(["dpkg-query", "-W", "-f=${Version}", package])


def build_info(binary):
    """Return the build type and extra C flags from the CMake cache in the
    directory of binary, or {} when there is none."""
    cache = Path(binary).resolve().parent / "CMakeCache.txt"
    info = {}
    if not cache.exists():
        return info
    for line in cache.read_text(errors="replace").splitlines():
        for key in ("CMAKE_BUILD_TYPE", "CMAKE_C_FLAGS"):
            if line.startswith(key + ":"):
                info[key] = line.split("=", 1)[1]
    return info


def modified_files():
    """Return the tracked files that differ from the commit, as git status
    lists them. The binary under test was built from the tree with them."""
    text = command_output(["git", "-C", str(REPO_DIR), "status",
                           "--porcelain", "--untracked-files=no"])
    return text.splitlines() if text else []


def machine_info(args, jobgate):
    cpu_model = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    wrk_version = command_output(["wrk", "-v"]) or ""
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "virtualized": " hypervisor" in flags,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": command_output(["sh", "-c", ". /etc/os-release && "
                              "echo $PRETTY_NAME"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "versions": {
            "jobgate": args.jobgate_version or command_output(
                ["git", "-C", str(REPO_DIR), "describe", "--always",
                 "--dirty", "--tags"]),
            "jobgate_build": build_info(jobgate),
            "jobgate_sha256": hashlib.sha256(
                Path(jobgate).read_bytes()).hexdigest(),
            "jobgate_modified": [] if args.jobgate_version
                else modified_files(),
            "nginx": (command_output(["nginx", "-v"]) or "").replace(
                "nginx version: ", ""),
            "wrk": wrk_version.splitlines()[0].split(" [")[0]
                if wrk_version else None,
            "libevent": dpkg_version("libevent-2.1-7"),
            "lmdb": dpkg_version("liblmdb0"),
            "libcurl": dpkg_version("libcurl4"),
            "openssl": dpkg_version("libssl3"),
            "gnuplot": command_output(["gnuplot", "--version"]),
            "valgrind": command_output(["valgrind", "--version"]),
            "node": command_output(["node", "--version"]),
        },
    }


# ---- main -------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark jobgate against nginx (bench/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s runs, one repetition, a "
                        "20000-entry fill; results go to "
                        "bench/results/tmp/quick unless --out is given")
    parser.add_argument("--duration", type=int, help="seconds per wrk run "
                        "(default 10, quick 2)")
    parser.add_argument("--repeats", type=int, help="runs per server and "
                        "connection count (default 3, quick 1)")
    parser.add_argument("--connections", default="64,256,1000",
                        help="comma-separated wrk connection counts "
                        "(default 64,256,1000)")
    parser.add_argument("--fill", type=int, help="entries in the large "
                        "cache (default 1000000, quick 20000)")
    parser.add_argument("--small-fill", type=int, default=1000,
                        help="entries in the small cache (default 1000)")
    parser.add_argument("--fill-connections", type=int, default=64,
                        help="wrk connections for the cache fill "
                        "(default 64)")
    parser.add_argument("--fill-timeout", type=int, default=3600,
                        help="seconds a fill may take (default 3600)")
    parser.add_argument("--cache-size-connections", type=int, default=64,
                        help="wrk connections for the cache-size hit runs "
                        "(default 64)")
    parser.add_argument("--distinct-jobs", type=int, default=100000,
                        help="job ids walked by jobgate-miss-distinct "
                        "(default 100000)")
    parser.add_argument("--ready-trials", type=int, help="starts timed per "
                        "cache (default 5, quick 3)")
    parser.add_argument("--burst", type=int, default=50,
                        help="concurrent misses for one job (default 50)")
    parser.add_argument("--origin-delay-ms", type=int, default=200,
                        help="delay of each response of the slow origin "
                        "(default 200)")
    parser.add_argument("--profile-requests", type=int, help="requests per "
                        "strace and callgrind run (default 20000, quick "
                        "2000)")
    parser.add_argument("--profile-seconds", type=int, help="seconds per "
                        "perf run (default 10, quick 2)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated parts to run (default all: "
                        + ",".join(SECTIONS) + ")")
    parser.add_argument("--jobgate", type=Path,
                        default=REPO_DIR / "build-release" / "jobgate",
                        help="jobgate binary (default build-release/jobgate)")
    parser.add_argument("--jobgate-version",
                        help="version to report for --jobgate (default: "
                        "git describe of the working tree, with its "
                        "modified files)")
    parser.add_argument("--port-base", type=int, default=18400,
                        help="first of the 29 loopback ports used "
                        "(default 18400)")
    parser.add_argument("--server-cpu", type=int, default=0,
                        help="CPU the measured servers run on (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1,
                        help="CPU wrk and the origins run on (default 1)")
    parser.add_argument("--wait-for-quiet", type=float, default=0.0,
                        help="before each measured run, wait up to this "
                        "many seconds for other processes to use less than "
                        "20%% of one CPU (default 0: do not wait)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between runs (default 1)")
    parser.add_argument("--out", type=Path, help="directory for "
                        "results.json, RESULTS.md and results.png "
                        "(default bench/)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the temporary directory of the run")
    args = parser.parse_args(argv)

    quick = args.quick
    defaults = {"duration": (10, 2), "repeats": (3, 1),
                "fill": (1000000, 20000), "ready_trials": (5, 3),
                "profile_requests": (20000, 2000),
                "profile_seconds": (10, 2)}
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.out is None:
        args.out = (BENCH_DIR / "results" / "tmp" / "quick" if quick
                    else BENCH_DIR)
    args.connections = [int(c) for c in args.connections.split(",")]
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; "
                     f"expected some of {SECTIONS}")
    if args.small_fill > args.fill:
        parser.error("--small-fill must not exceed --fill")
    return args


def preflight(args):
    """Check the tools, CPUs, ports and open-file limit the run needs, and
    raise the open-file soft limit to the hard one."""
    for tool in ("nginx", "wrk", "taskset", "node", "gnuplot"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed; bench/run.sh "
                             "installs it")
    if "profile" in args.sections:
        for tool in ("perf", "strace", "valgrind", "callgrind_control"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed; run "
                                 "bench/run.sh or leave out the profile "
                                 "section with --sections")
    if not args.jobgate.exists():
        raise BenchError(f"{args.jobgate} does not exist; build it with "
                         "bench/run.sh")

    cpus = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu not in cpus:
            raise BenchError(f"CPU {cpu} is not available to this process "
                             f"(available: {sorted(cpus)})")

    ports = [args.port_base + offset + extra for offset in PORTS.values()
             for extra in (0, 1)]
    busy = [port for port in ports if not port_is_free(port)]
    if busy:
        raise BenchError(f"ports {busy} on 127.0.0.1 are in use; choose "
                         "another --port-base")

    # wrk and the server each hold one descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    required = max(args.connections) * 2 + 1024
    if hard != resource.RLIM_INFINITY and hard < required:
        raise BenchError(f"the open-file hard limit {hard} is below "
                         f"{required}, needed for {max(args.connections)} "
                         "connections; raise it with ulimit -Hn")
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv):
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    preflight(args)

    work = Path(tempfile.mkdtemp(prefix="jobgate-bench-"))
    # Every jobgate of the run starts from this copy, so that a rebuild of
    # the tree during the run does not change the binary under test.
    source = args.jobgate
    args.jobgate = work / "jobgate"
    shutil.copy2(source, args.jobgate)
    bench = Bench(args, work)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(
        ["bench/bench.py"] + list(argv))
    results = {
        "started_at": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": machine_info(args, source),
        "settings": {
            "duration_s": args.duration, "repeats": args.repeats,
            "connections": args.connections, "fill": args.fill,
            "small_fill": args.small_fill,
            "cache_size_connections": args.cache_size_connections,
            "fill_connections": args.fill_connections,
            "distinct_jobs": args.distinct_jobs,
            "ready_trials": args.ready_trials, "burst": args.burst,
            "profile_requests": args.profile_requests,
            "profile_seconds": args.profile_seconds,
            "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
            "wait_for_quiet_s": args.wait_for_quiet,
            "wrk_threads": 1, "credential_header": CREDENTIAL_HEADER,
            "sections": args.sections,
            "body_bytes": len(bench.body(HIT_JOB, "completed")),
        },
    }
    log(f"work directory {work}")
    failed = None
    try:
        prepare_servers(bench)
        steps = {"matrix": run_matrix, "workers": run_workers,
                 "cache-size": run_cache_size,
                 "ready": run_ready, "coalesce": run_coalesce,
                 "profile": run_profile}
        for section in SECTIONS:
            if section in args.sections:
                log(f"section {section}")
                steps[section](bench, results)
    except (BenchError, KeyboardInterrupt) as exc:
        failed = f"{type(exc).__name__}: {exc}"
        print(f"bench: stopped: {failed}", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the cleanup short, and every stop
        # below is bounded by its own timeout.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        bench.procs.stop_all()

    results["finished_at"] = datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["summary"] = {}
    if "matrix" in results:
        results["summary"]["matrix"] = summarize_runs(results["matrix"]["runs"])
    if "cache_size" in results:
        results["summary"]["cache_size"] = summarize_runs(
            results["cache_size"]["runs"], baseline="jobgate-1k")
        results["summary"]["cache_size_pairs"] = pair_ratios(
            results["cache_size"]["runs"], "jobgate-1m", "jobgate-1k")
    if "workers" in results:
        results["summary"]["workers"] = summarize_workers(results)
    results["targets"] = evaluate_targets(results)
    results["problems"] = bench.problems
    results["stopped_early"] = failed

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {json_path}")
    sys.path.insert(0, str(BENCH_DIR))
    # No __pycache__ in the source tree.
    sys.dont_write_bytecode = True
    import report
    report.write_all(results, args.out)
    log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.png'}")

    if args.keep_work:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed or bench.problems:
        for text in bench.problems:
            print(f"bench: check failed: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
