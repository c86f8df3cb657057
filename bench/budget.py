#!/usr/bin/env python3
"""`--max-cost` benchmark (issue 4): how close to the cap a run stops, whole processes
against `volley mock --cost-per-million-tokens`.

For each concurrency: run the batch once uncapped to learn its total cost, then again
against a fresh ledger with `--max-cost` at a third of that. Reports what the mock
billed against the cap. The cap is met when spent <= cap + the in-flight requests'
cost; a conservative in-flight estimate stops a little below it.

    python3 bench/budget.py [--requests 3000] [--concurrency 8 64] [--no-build]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")


def mock_call(base, path, method="GET"):
    req = urllib.request.Request(base.replace("/v1", path), method=method)
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def run(path, base, *flags):
    env = dict(os.environ, BENCH_KEY="bench-key-0002")
    p = subprocess.run([BIN, "run", path, "--base-url", base, "--api-key-env", "BENCH_KEY", "--model", "m",
                        "--progress", "off", *flags], env=env, stderr=subprocess.PIPE, text=True)
    return p.returncode, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    mock = subprocess.Popen([BIN, "mock", "--addr", "127.0.0.1:0", "--cost-per-million-tokens", "2.5",
                             "--latency-ms", "50", "--jitter-ms", "100", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = mock.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in a.concurrency:
                batch = os.path.join(tmp, f"b{concurrency}.jsonl")
                results = batch.replace(".jsonl", ".results.jsonl")
                errors = batch.replace(".jsonl", ".errors.jsonl")
                with open(batch, "w") as f:
                    for i in range(a.requests):
                        f.write(json.dumps({"id": f"q{i}", "prompt": "word " * (i % 30) + str(i),
                                            "max_tokens": 40}) + "\n")
                mock_call(base, "/mock/reset", "POST")
                code, err = run(batch, base, "--concurrency", str(concurrency))
                if code != 0:
                    sys.exit(f"uncapped run exited {code}:\n{err}")
                total = mock_call(base, "/mock/stats")["cost_billed"]
                for path in (results, errors):
                    if os.path.exists(path):
                        os.remove(path)
                mock_call(base, "/mock/reset", "POST")
                cap = total / 3
                code, err = run(batch, base, "--concurrency", str(concurrency), "--max-cost", repr(cap))
                if code != 3:
                    sys.exit(f"capped run exited {code}, expected 3:\n{err}")
                billed = mock_call(base, "/mock/stats")
                spent = billed["cost_billed"]
                per_request = total / a.requests
                print(json.dumps({
                    "requests": a.requests, "concurrency": concurrency, "total_usd": round(total, 6),
                    "cap_usd": round(cap, 6), "spent_usd": round(spent, 6),
                    "spent_of_cap_pct": round(100 * spent / cap, 1),
                    "overshoot_in_average_requests": round((spent - cap) / per_request, 1),
                    "requests_sent": billed["requests"],
                }), flush=True)
    finally:
        mock.kill()
        mock.wait()


if __name__ == "__main__":
    main()
