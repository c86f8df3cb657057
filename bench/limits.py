#!/usr/bin/env python3
"""Rate-limit benchmarks, whole processes against `volley mock` (SPEC §5: within 1.1x of
the ideal time the provider's real limit allows, with at most 1% answered 429).

1. window:   900 requests against `mock --rpm 600` (a sliding 60 s window); volley is told
             nothing and learns the limit from headers. Ideal: the windows the attempts
             need — 600 go in the first window, the rest when it slides, 60 s later —
             plus one median latency: (ceil(attempts / limit) - 1) x 60 s + latency.
2. bucket:   600 requests against `mock --limit-shape bucket --rpm 300 --burst 300` with
             8% of attempts failing 5xx (a provider on a bad day); volley is told
             nothing. Ideal: (attempts - burst) / rate + one median latency, where
             attempts are those the bucket admitted (failed ones included) and the rate
             is 300/min.
3. tpm:      requests of varied sizes against `mock --tpm N`, tokens the binding limit;
             volley learns N from headers. Ideal: the windows the billed tokens fill,
             (ceil(tokens / N) - 1) x 60 s + latency; the time an evenly pacing client
             needs is reported beside it. (The mock counts ~4 characters per token, not
             tiktoken's way: the estimate has to be calibrated by usage.)
4. adaptive: `mock --rpm 600 --hide-limits` (no limits on successes, OpenRouter-style
             headers on 429s): throughput after warm-up as a share of 600/min, and 429s.

    python3 bench/limits.py [--only window|bucket|tpm|adaptive] [--no-build]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volley")


def start_mock(*flags):
    mock = subprocess.Popen([BIN, "mock", "--addr", "127.0.0.1:0", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return mock, mock.stdout.readline().strip()


def stats(base):
    with urllib.request.urlopen(base.replace("/v1", "/mock/stats")) as r:
        return json.load(r)


def run(path, base, *flags):
    env = dict(os.environ, BENCH_KEY="bench-key-0001")
    start = time.monotonic()
    p = subprocess.run([BIN, "run", path, "--base-url", base, "--api-key-env", "BENCH_KEY", "--model", "m",
                        "--progress", "off", "--events", path + ".events", *flags],
                       env=env, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if p.returncode not in (0, 1):
        sys.exit(f"volley exited {p.returncode}:\n{p.stderr}")
    return wall


def finish_times(path):
    times = []
    with open(path + ".events") as f:
        for line in f:
            e = json.loads(line)
            if e["event"] == "request_finished":
                times.append(e["t"])
    return sorted(times)


def prompts(path, n, prefix):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i}", "prompt": f"question {i}", "max_tokens": 20}) + "\n")


def median_latency_s(path):
    lat = []
    with open(path + ".events") as f:
        for line in f:
            e = json.loads(line)
            if e["event"] == "attempt_finished":
                lat.append(e["latency_ms"] / 1000)
    lat.sort()
    return lat[len(lat) // 2] if lat else 0.0


def shape_report(n, wall, ideal, s, extra):
    limited = s["by_status"].get("429", 0)
    out = {"requests": n, "wall_s": round(wall, 1), "ideal_s": round(ideal, 1),
           "ratio_to_ideal": round(wall / ideal, 3), "attempts": s["requests"], "answered_429": limited,
           "pct_429": round(100 * limited / s["requests"], 2)}
    out.update(extra)
    return out


def bench_window(tmp, n=900, limit=600):
    mock, base = start_mock("--rpm", str(limit), "--latency-ms", "50")
    try:
        path = os.path.join(tmp, "window.jsonl")
        prompts(path, n, "w")
        wall = run(path, base)
        s = stats(base)
        admitted = s["requests"] - s["by_status"].get("429", 0)
        windows = -(-admitted // limit)
        ideal = (windows - 1) * 60 + median_latency_s(path)
        return shape_report(n, wall, ideal, s, {"limit_rpm": limit, "mock_peak_rpm": s["peak_requests_per_minute"]})
    finally:
        mock.kill()


def bench_bucket(tmp, n=600, limit=300, burst=300):
    mock, base = start_mock("--rpm", str(limit), "--limit-shape", "bucket", "--burst", str(burst),
                            "--fail-rate", "0.08", "--latency-ms", "50", "--seed", "7")
    try:
        path = os.path.join(tmp, "bucket.jsonl")
        prompts(path, n, "b")
        wall = run(path, base, "--max-retries", "8")
        s = stats(base)
        admitted = s["requests"] - s["by_status"].get("429", 0)
        ideal = max(admitted - burst, 0) / (limit / 60) + median_latency_s(path)
        return shape_report(n, wall, ideal, s, {"limit_rpm": limit, "burst": burst,
                                                "failed_5xx": sum(v for k, v in s["by_status"].items() if k.startswith("5"))})
    finally:
        mock.kill()


def bench_tpm(tmp, tpm=12000):
    mock, base = start_mock("--tpm", str(tpm), "--latency-ms", "50")
    try:
        path = os.path.join(tmp, "tpm.jsonl")
        rng = random.Random(7)
        with open(path, "w") as f:
            for i in range(300):
                words = " ".join("word" for _ in range(rng.randint(5, 150)))
                f.write(json.dumps({"id": f"t{i}", "prompt": f"summarise: {words}", "max_tokens": 20}) + "\n")
        wall = run(path, base)
        s = stats(base)
        billed = s["tokens_billed"]["total"]
        # The mock's window is sliding: what the tokens need is the windows they fill.
        ideal = (-(-billed // tpm) - 1) * 60 + median_latency_s(path)
        even = billed / tpm * 60  # an evenly pacing client
        limited = s["by_status"].get("429", 0)
        return {"requests": 300, "limit_tpm": tpm, "tokens_billed": billed, "wall_s": round(wall, 1),
                "ideal_s": round(ideal, 1), "ratio_to_ideal": round(wall / ideal, 3) if ideal else None,
                "evenly_paced_s": round(even, 1),
                "answered_429": limited, "pct_429": round(100 * limited / s["requests"], 2),
                "mock_peak_tpm": s["peak_tokens_per_minute"]}
    finally:
        mock.kill()


def bench_adaptive(tmp, n=1500):
    mock, base = start_mock("--rpm", "600", "--hide-limits", "--latency-ms", "100")
    try:
        path = os.path.join(tmp, "adaptive.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"a{i}", "prompt": f"question {i}", "max_tokens": 20}) + "\n")
        wall = run(path, base)
        s = stats(base)
        times = finish_times(path)
        # After warm-up: the second minute onward.
        later = [t for t in times if t >= 60]
        rate = (len(later) / (times[-1] - 60) * 60) if later and times[-1] > 60 else None
        limited = s["by_status"].get("429", 0)
        return {"requests": n, "limit_rpm": 600, "wall_s": round(wall, 1),
                "rpm_after_warmup": round(rate) if rate else None,
                "share_of_limit_after_warmup": round(rate / 600, 3) if rate else None,
                "answered_429": limited, "pct_429": round(100 * limited / s["requests"], 2)}
    finally:
        mock.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["window", "bucket", "tpm", "adaptive"])
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "volley"], cwd=ROOT, check=True)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in [("window", bench_window), ("bucket", bench_bucket), ("tpm", bench_tpm),
                         ("adaptive", bench_adaptive)]:
            if a.only in (None, name):
                report[name] = fn(tmp)
                print(json.dumps({name: report[name]}), flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "limits.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
