#!/usr/bin/env python3
"""Whole-process benchmark of `volley run` against `volley mock` (issue 2's targets).

With two or more cores, volley runs pinned to core 0 and the mock to core 1, so that
the busy share of each core says which process limits throughput. Reports, for N requests (default 100,000) against a zero-latency mock at concurrency
256: requests/s, volley's CPU seconds and peak RSS, and the mock's CPU seconds; then the
peak RSS of a run over a 1,000,000-line input, of resuming that run once it is all
done (the fingerprint check of every line), and what `volley report --html` over that
run's RESULTS takes (time, peak RSS, page size). Run from the repository root:

    python3 bench/bench.py            # builds --release first
    python3 bench/bench.py --requests 20000 --big-lines 200000   # a quicker look

Not part of the test suite: timing belongs here, not in tests.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")
TICK = os.sysconf("SC_CLK_TCK")
PIN = True


def write_input(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write('{"id":"r%d","prompt":"benchmark question %d about nothing in particular","max_tokens":16}\n' % (i, i))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the full line; 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / TICK


def pin(core):
    """Runs a process on one core, so each process's share of the machine is plain: the
    one whose core is saturated is the bottleneck."""
    if PIN and os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def start_mock():
    mock = subprocess.Popen(pin(1) + [BIN, "mock", "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = mock.stdout.readline().strip()
    return mock, base


def timed_run(args, env):
    start = time.monotonic()
    p = subprocess.Popen(pin(0) + [BIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    stderr = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"volley exited {code}:\n{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--big-lines", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-pin", action="store_true", help="let both processes share both cores")
    a = ap.parse_args()
    global PIN
    PIN = not a.no_pin
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    env = dict(os.environ, BENCH_KEY="bench-key-0000")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        mock, base = start_mock()
        try:
            common = ["--base-url", base, "--api-key-env", "BENCH_KEY", "--model", "m", "--progress", "off",
                      "--concurrency", str(a.concurrency)]
            path = os.path.join(tmp, "throughput.jsonl")
            write_input(path, a.requests)
            mock_cpu0 = cpu_seconds(mock.pid)
            wall, cpu, rss = timed_run(["run", path] + common, env)
            mock_cpu = cpu_seconds(mock.pid) - mock_cpu0
            report["throughput"] = {
                "requests": a.requests, "concurrency": a.concurrency, "wall_s": round(wall, 2),
                "requests_per_s": round(a.requests / wall), "volley_cpu_s": round(cpu, 2),
                "mock_cpu_s": round(mock_cpu, 2), "volley_peak_rss_mb": round(rss, 1),
                "pinned_one_core_each": bool(pin(0)),
                "volley_core_busy_pct": round(100 * cpu / wall), "mock_core_busy_pct": round(100 * mock_cpu / wall),
            }
            print(json.dumps(report["throughput"]), flush=True)

            big = os.path.join(tmp, "big.jsonl")
            write_input(big, a.big_lines)
            wall, cpu, rss = timed_run(["run", big] + common, env)
            report["big_input"] = {
                "lines": a.big_lines, "wall_s": round(wall, 2), "requests_per_s": round(a.big_lines / wall),
                "volley_cpu_s": round(cpu, 2), "volley_peak_rss_mb": round(rss, 1), "target_rss_mb": 64,
            }
            print(json.dumps(report["big_input"]), flush=True)

            # The same command again: every line is finished, so the run only reads
            # RESULTS, checks each line's fingerprint against it and sends nothing.
            wall, cpu, rss = timed_run(["run", big] + common, env)
            report["resume_all_done"] = {
                "lines": a.big_lines, "wall_s": round(wall, 2), "volley_cpu_s": round(cpu, 2),
                "volley_peak_rss_mb": round(rss, 1),
            }
            print(json.dumps(report["resume_all_done"]), flush=True)

            # `volley report` over that run's RESULTS, with the HTML page: how long a
            # report of a big past run takes, how much memory, how big the page is.
            html = os.path.join(tmp, "big.html")
            wall, cpu, rss = timed_run(["report", os.path.join(tmp, "big.results.jsonl"),
                                        "--html", html, "--json", os.path.join(tmp, "big.report.json")], env)
            report["report_from_files"] = {
                "lines": a.big_lines, "wall_s": round(wall, 2), "volley_cpu_s": round(cpu, 2),
                "volley_peak_rss_mb": round(rss, 1), "html_kb": round(os.path.getsize(html) / 1024, 1),
            }
            print(json.dumps(report["report_from_files"]), flush=True)
        finally:
            mock.kill()
            mock.wait()
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
