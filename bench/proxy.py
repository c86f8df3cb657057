#!/usr/bin/env python3
"""The proxy's added latency (SPEC §9): Debian's `wrk` against a zero-latency upstream
(`volley mock`), once directly and once through `volley serve`'s proxy, at the same
connection count; added = percentile through the proxy - the same percentile direct.
Targets: p50 < 1 ms and p99 < 5 ms added, at >= 2,000 requests/s through the proxy.

Every request is a small chat completion (POST /v1/chat/completions). wrk keeps each
connection busy (a closed loop), so a run's rate is what its connections achieve; the
report gives the rate beside the percentiles. Needs `apt-get install wrk`.

    python3 bench/proxy.py [--connections 8] [--seconds 10] [--no-build]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"Say hello in five words."}]}'
"""


def start(args, env=None):
    p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    url = p.stdout.readline().strip()
    if not url.startswith("http://"):
        sys.exit(f"{args[0]} did not start: {url!r}")
    return p, url


def wrk(url, connections, seconds, script):
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", script,
         url + "/chat/completions"],
        capture_output=True, text=True, check=True).stdout
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
        pct[int(p)] = float(value) * scale
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": pct[50], "p90_ms": pct[90], "p99_ms": pct[99], "rate": rate,
            "non_2xx": int(errors.group(1)) if errors else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="volley-proxy-bench-")
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(LUA)
    mock, mock_url = start(["mock", "--addr", "127.0.0.1:0"])
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    serve, serve_url = start(["serve", "--addr", "127.0.0.1:0", "--data-dir", os.path.join(work, "data"),
                              "--base-url", mock_url, "--api-key-env", "BENCH_KEY", "--quiet",
                              "--concurrency", "256"], env=env)
    try:
        wrk(mock_url, a.connections, 2, script)  # warm both up
        wrk(serve_url, a.connections, 2, script)
        rows = []
        for run in range(a.runs):
            direct = wrk(mock_url, a.connections, a.seconds, script)
            proxied = wrk(serve_url, a.connections, a.seconds, script)
            added = {k: proxied[k] - direct[k] for k in ("p50_ms", "p90_ms", "p99_ms")}
            rows.append({"run": run + 1, "direct": direct, "proxied": proxied, "added": added})
            print(f"run {run + 1}: direct p50 {direct['p50_ms']:.3f} ms p99 {direct['p99_ms']:.3f} ms "
                  f"({direct['rate']:.0f}/s) | proxied p50 {proxied['p50_ms']:.3f} ms p99 {proxied['p99_ms']:.3f} ms "
                  f"({proxied['rate']:.0f}/s, {proxied['non_2xx']} non-2xx) | added p50 {added['p50_ms']:.3f} ms "
                  f"p99 {added['p99_ms']:.3f} ms", flush=True)
        worst = {k: max(r["added"][k] for r in rows) for k in ("p50_ms", "p99_ms")}
        slowest = min(r["proxied"]["rate"] for r in rows)
        ok = worst["p50_ms"] < 1 and worst["p99_ms"] < 5 and slowest >= 2000
        print(json.dumps({"connections": a.connections, "worst_added": worst,
                          "slowest_proxied_rate": slowest, "targets_met": ok}))
    finally:
        for p in (serve, mock):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
