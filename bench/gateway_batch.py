#!/usr/bin/env python3
"""A batch through `volley serve`, as a client would send it: upload a JSONL of N Batch
lines (default 50,000, OpenAI's most), create the batch, poll it to `completed`, against
a zero-latency `volley mock`. Reports the upload time, the batch's wall time and rate,
the gateway's CPU per request (upload, SQLite records and output files included) and its
peak RSS. volley and the mock are pinned to a core each, as in bench.py.

    python3 bench/gateway_batch.py [--lines 50000] [--concurrency 256] [--no-build]
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


def pinned(core):
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="volley-gateway-bench-")
    mock = subprocess.Popen([*pinned(1), BIN, "mock", "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    mock_url = mock.stdout.readline().strip()
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    serve = subprocess.Popen([*pinned(0), BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", os.path.join(work, "data"),
                              "--base-url", mock_url, "--api-key-env", "BENCH_KEY", "--quiet",
                              "--concurrency", str(a.concurrency)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    url = serve.stdout.readline().strip()
    try:
        lines = "".join(
            json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "m", "max_tokens": 16,
                                 "messages": [{"role": "user", "content": f"question {i}"}]}}) + "\n"
            for i in range(a.lines)).encode()
        boundary = "volley-bench-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n").encode() \
            + lines + f"\r\n--{boundary}--\r\n".encode()
        started = time.monotonic()
        req = urllib.request.Request(url + "/files", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        file_id = json.load(urllib.request.urlopen(req))["id"]
        upload = time.monotonic() - started
        started = time.monotonic()
        req = urllib.request.Request(url + "/batches", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"}).encode())
        batch = json.load(urllib.request.urlopen(req))
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            batch = json.load(urllib.request.urlopen(url + "/batches/" + batch["id"]))
        wall = time.monotonic() - started
        stat = open(f"/proc/{serve.pid}/stat").read().split()
        cpu = (int(stat[13]) + int(stat[14])) / os.sysconf("SC_CLK_TCK")
        hwm = next(l for l in open(f"/proc/{serve.pid}/status") if l.startswith("VmHWM")).split()[1]
        print(json.dumps({
            "lines": a.lines, "status": batch["status"], "request_counts": batch["request_counts"],
            "upload_s": round(upload, 2), "batch_s": round(wall, 2), "requests_per_s": round(a.lines / wall),
            "serve_cpu_us_per_request": round(cpu / a.lines * 1e6, 1), "serve_peak_rss_mb": round(int(hwm) / 1024, 1),
        }))
    finally:
        for p in (serve, mock):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
