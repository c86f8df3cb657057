#!/usr/bin/env python3
"""An experiment of 2 models x ROWS rows x 3 runs, each answer judged, against a
zero-latency `volley mock` told the models' accuracies. Reports the run's wall time,
cells per second, CPU per cell and peak RSS for each size, so that memory can be seen to
stay flat as rows x runs grow (it is bounded by the cells in the pipeline, not by the
run's size). volley and the mock are pinned to a core each, as in bench.py.

With --timeline, volley's resident memory is also sampled every 0.5 s with the
judgements written so far, printed to standard error, and `pipeline_rss_mb` is the
largest sample taken before the last judgement was written (the scores are computed after
it): what the cells cost, apart from the scoring pass over the files.

    python3 bench/experiment.py [--rows 2000 20000] [--concurrency 64] [--timeline] [--no-build]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
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


def vm_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class LineCounter:
    """Counts the lines of a growing file, reading only what was appended since."""

    def __init__(self, path):
        self.path, self.offset, self.lines = path, 0, 0

    def count(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    self.lines += chunk.count(b"\n")
                    self.offset += len(chunk)
        except OSError:
            pass
        return self.lines


def run_once(rows, concurrency, url, timeline=False):
    work = tempfile.mkdtemp(prefix="volley-experiment-bench-")
    with open(os.path.join(work, "arith.jsonl"), "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "expected": str(2 * i)}) + "\n")
    with open(os.path.join(work, "bench.toml"), "w") as f:
        f.write(CONFIG.format(url=url))
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    cells = rows * 2 * 3
    popen = subprocess.Popen([*pinned(0), BIN, "experiment", "run", "bench.toml", "--out", "run",
                              "--concurrency", str(concurrency)],
                             cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pipeline_rss = None
    if timeline:
        judgements = LineCounter(os.path.join(work, "run", "judgements.jsonl"))
        while popen.poll() is None:
            rss = vm_rss_mb(popen.pid)
            judged = judgements.count()
            if rss is not None:
                print(f"  {time.monotonic() - start:6.1f} s  {rss:6.1f} MB  {judged} judged",
                      file=sys.stderr, flush=True)
                if judged < cells:
                    pipeline_rss = max(pipeline_rss or 0, rss)
            time.sleep(0.5)
    _, stderr = popen.communicate()
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, None, stderr)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"volley exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far: run sizes in increasing order.
    rss_mb = after.ru_maxrss / 1024
    with open(os.path.join(work, "run", "judgements.jsonl")) as f:
        judged = sum(1 for _ in f)
    shutil.rmtree(work, ignore_errors=True)
    result = {"rows": rows, "cells": cells, "judged": judged, "wall_s": round(wall, 2),
              "cells_per_s": round(cells / wall), "cpu_us_per_cell": round(cpu / cells * 1e6, 1),
              "peak_rss_mb": round(rss_mb, 1)}
    if pipeline_rss is not None:
        result["pipeline_rss_mb"] = round(pipeline_rss, 1)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--timeline", action="store_true")
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
            print(json.dumps(run_once(rows, a.concurrency, url, a.timeline)), flush=True)
    finally:
        mock.kill()
        mock.wait()


if __name__ == "__main__":
    main()
