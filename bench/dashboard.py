#!/usr/bin/env python3
"""What the dashboard costs: 50 batches running at once through `volley serve`, about
1,000 requests a second against a `volley mock` with latency (`--concurrency 50` over
50 ms), measured in three windows of equal length: without the page, with the page open
in headless Chromium (driven by tests/browser/dashboard.mjs, which also reports the
script time of each page update from Chrome's own ScriptDuration), and without it again.
Reports the gateway's CPU in each window (% of one core), the page's cost (the middle
window minus the mean of the other two), the request rate, and ms of script per update.

    python3 bench/dashboard.py [--batches 50] [--window 15] [--no-build]

Needs node and playwright-core in crates/volley/tests/browser (scripts/test installs
them) and chromium.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")
DRIVER = os.path.join(ROOT, "crates", "volley", "tests", "browser", "dashboard.mjs")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def upload(url, name, lines):
    boundary = "volley-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n").encode() \
        + lines + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/files", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(req))["id"]


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def finished(url):
    batches = json.load(urllib.request.urlopen(url + "/batches?limit=100"))["data"]
    return sum(b["request_counts"]["completed"] + b["request_counts"]["failed"] for b in batches)


def window(url, pid, seconds, during=None):
    """CPU % of one core and requests/s over `seconds` (or while `during` runs)."""
    cpu, done, start = cpu_seconds(pid), finished(url), time.monotonic()
    result = during() if during else time.sleep(seconds)
    wall = time.monotonic() - start
    return {"cpu_pct": round(100 * (cpu_seconds(pid) - cpu) / wall, 2),
            "requests_per_s": round((finished(url) - done) / wall), "wall_s": round(wall, 1)}, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--window", type=int, default=15, help="seconds per window (the page polls once a second)")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="volley-dashboard-bench-")
    mock = subprocess.Popen([BIN, "mock", "--addr", "127.0.0.1:0", "--latency-ms", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    mock_url = mock.stdout.readline().strip()
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    serve = subprocess.Popen([BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", os.path.join(work, "data"),
                              "--base-url", mock_url, "--api-key-env", "BENCH_KEY", "--quiet",
                              "--concurrency", "50"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    url = serve.stdout.readline().strip()
    root = url.removesuffix("/v1") + "/"
    try:
        # Enough requests that no batch ends during the three windows.
        per_batch = int(1000 * (3 * a.window + 20) * 1.5 / a.batches)
        ids = []
        for b in range(a.batches):
            lines = "".join(
                json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": f"model-{b % 5}", "max_tokens": 16,
                                     "messages": [{"role": "user", "content": f"batch {b} question {i}"}]}}) + "\n"
                for i in range(per_batch)).encode()
            file_id = upload(url, f"b{b}.jsonl", lines)
            ids.append(post(url, "/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"})["id"])
        time.sleep(5)  # every batch running
        before, _ = window(url, serve.pid, a.window)

        def with_page():
            plan = {"url": root, "polls": a.window, "timeout_ms": (a.window + 30) * 1000}
            out = subprocess.run(["node", DRIVER, json.dumps(plan)], capture_output=True, text=True,
                                 env=dict(os.environ, VOLLEY_CHROMIUM=shutil.which("chromium") or "chromium"))
            return json.loads(out.stdout)

        page, seen = window(url, serve.pid, a.window, with_page)
        after, _ = window(url, serve.pid, a.window)
        if "error" in seen:
            raise SystemExit(f"the driver failed: {seen['error']}")
        baseline = (before["cpu_pct"] + after["cpu_pct"]) / 2
        print(json.dumps({
            "batches": a.batches, "without_page": before, "with_page": page, "without_again": after,
            "page_cpu_pct_of_core": round(page["cpu_pct"] - baseline, 2), "target_pct": 5,
            "script_ms_per_update": round(seen.get("script_ms_per_update", float("nan")), 2),
            "updates": seen.get("polls"), "target_ms": 100,
        }))
        for i in ids:
            post(url, f"/batches/{i}/cancel", {})
    finally:
        serve.terminate()
        mock.terminate()
        serve.wait()
        mock.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
