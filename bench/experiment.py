#!/usr/bin/env python3
"""An experiment of 2 models x ROWS rows x 3 runs, each answer judged, against a
zero-latency `volley mock` told the models' accuracies. Reports the run's wall time,
cells per second, CPU per cell and peak RSS for each size, so that memory can be seen to
stay flat as rows x runs grow (it is bounded by the cells in the pipeline, not by the
run's size). volley and the mock are pinned to a core each, as in bench.py.

    python3 bench/experiment.py [--rows 2000 20000] [--concurrency 64] [--no-build]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")

CONFIG = """
[providers.mock]
base_url = "{url}"
api_key_env = "BENCH_KEY"

[models.small]
max_tokens = 32
[models.large]
max_tokens = 32
[models.judge]
max_tokens = 8

[datasets.arith]
path = "arith.jsonl"

[prompts.qa]
user = "{{{{ question }}}}"
[prompts.grade]
user = "Expected {{{{ row.expected }}}}; answer: {{{{ answer }}}}"

[experiments.bench]
datasets = ["arith"]
models = ["small", "large"]
runs = 3
prompt = "qa"
judge = {{ model = "judge", prompt = "grade" }}
"""


def pinned(core):
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def run_once(rows, concurrency, url):
    work = tempfile.mkdtemp(prefix="volley-experiment-bench-")
    with open(os.path.join(work, "arith.jsonl"), "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "expected": str(2 * i)}) + "\n")
    with open(os.path.join(work, "bench.toml"), "w") as f:
        f.write(CONFIG.format(url=url))
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run([*pinned(0), BIN, "experiment", "run", "bench.toml", "--out", "run",
                           "--concurrency", str(concurrency)],
                          cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"volley exited {proc.returncode}: {proc.stderr[-2000:]}")
    cells = rows * 2 * 3
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far: run sizes in increasing order.
    rss_mb = after.ru_maxrss / 1024
    with open(os.path.join(work, "run", "judgements.jsonl")) as f:
        judged = sum(1 for _ in f)
    shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "cells": cells, "judged": judged, "wall_s": round(wall, 2),
            "cells_per_s": round(cells / wall), "cpu_us_per_cell": round(cpu / cells * 1e6, 1),
            "peak_rss_mb": round(rss_mb, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    mock = subprocess.Popen([*pinned(1), BIN, "mock", "--addr", "127.0.0.1:0", "--seed", "7",
                             "--accuracy", "small=0.8", "--accuracy", "large=0.6", "--judge-model", "judge"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = mock.stdout.readline().strip()
    try:
        for rows in sorted(a.rows):
            print(json.dumps(run_once(rows, a.concurrency, url)), flush=True)
    finally:
        mock.kill()
        mock.wait()


if __name__ == "__main__":
    main()
