#!/usr/bin/env python3
"""Independent recomputation of a run directory's scores, in numpy and scipy.

Reads ONLY the run directory's `run.json` and `judgements.jsonl` (never `scores.json`)
and prints one JSON object on stdout:

    {"results": [{"experiment", "dataset", "model", "judge", "judged",
                  "score": {"value", "low", "high"},
                  "runs": {"per_run": [...], "min", "max", "std_dev"}}, ...],
     "comparisons": [{"experiment", "dataset", "judge", "a", "b", "n_pairs",
                      "difference": {"value", "low", "high"},
                      "mcnemar": {"a_only", "b_only", "p_value"} | null}, ...]}

Definitions (the same as scores/compute.rs and scores/stats.rs, written here from
their documentation):
- A judgement line with a numeric `value` is a verdict for (experiment, dataset,
  model, judge, item, run); a later line for the same cell replaces an earlier one;
  `value: null` is a failed judgement and counts for nothing.
- score: the pooled mean over every verdict of the model, with the 95% bootstrap
  interval resampling items (all of an item's runs together), see stats_reference.py.
- runs: each run's mean over the items judged in that run; min, max, and the sample
  standard deviation np.std(means, ddof=1) (0 with fewer than two runs).
- For each pair of models (a before b in run.json), per item the runs judged for
  both, paired by run index; the difference a - b is bootstrapped the same way, and
  McNemar's exact test counts the (item, run) pairs (1, 0) and (0, 1) and takes
  scipy.stats.binomtest(min, a_only + b_only, 0.5).pvalue.

The interval's resampling uses numpy's RNG (np.random.default_rng(--seed)), not the
ChaCha8 stream the Rust side uses: the interval ends agree only up to Monte-Carlo noise.

Usage: python3 scores_reference.py [--resamples B] [--seed S] RUN_DIR
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats_reference import bootstrap_mean, mcnemar  # noqa: E402


def read_verdicts(path):
    """(experiment, dataset, model, judge) -> item -> run -> value."""
    verdicts = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("stage") != "judge" or record.get("value") is None:
                continue
            key = (record["experiment"], record["dataset"], record["model"], record["judge"])
            runs = verdicts.setdefault(key, {}).setdefault(record["item"], {})
            runs[int(record["run"])] = float(record["value"])
    return verdicts


def run_spread(items):
    """Per-run means over the items judged in each run, their min, max and sample std."""
    if not items:
        return None
    runs = max(max(runs) for runs in items.values()) + 1
    per_run = []
    for run in range(runs):
        values = [runs_of[run] for runs_of in items.values() if run in runs_of]
        per_run.append(float(np.mean(values)) if values else None)
    means = np.array([m for m in per_run if m is not None])
    return {
        "per_run": per_run,
        "min": float(means.min()),
        "max": float(means.max()),
        "std_dev": float(np.std(means, ddof=1)) if means.size >= 2 else 0.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("run_dir")
    args = parser.parse_args()
    with open(os.path.join(args.run_dir, "run.json"), encoding="utf-8") as f:
        info = json.load(f)
    verdicts = read_verdicts(os.path.join(args.run_dir, "judgements.jsonl"))

    results, comparisons = [], []
    for experiment in info["experiments"]:
        models = [m["name"] for m in experiment["models"]]
        for dataset in experiment["datasets"]:
            for judge in info["judges"]:
                key = lambda model: (experiment["name"], dataset["name"], model, judge["id"])
                if not any(key(m) in verdicts for m in models):
                    continue
                for model in models:
                    items = verdicts.get(key(model), {})
                    values = [list(runs.values()) for runs in items.values()]
                    results.append({
                        "experiment": experiment["name"],
                        "dataset": dataset["name"],
                        "model": model,
                        "judge": judge["id"],
                        "judged": sum(len(v) for v in values),
                        "score": bootstrap_mean(values, args.resamples, np.random.default_rng(args.seed)),
                        "runs": run_spread(items),
                    })
                for i, a in enumerate(models):
                    for b in models[i + 1:]:
                        items_a, items_b = verdicts.get(key(a), {}), verdicts.get(key(b), {})
                        pairs = [
                            [(items_a[item][run], items_b[item][run])
                             for run in sorted(items_a[item]) if run in items_b[item]]
                            for item in items_a if item in items_b
                        ]
                        differences = [[x - y for x, y in item] for item in pairs]
                        comparisons.append({
                            "experiment": experiment["name"],
                            "dataset": dataset["name"],
                            "judge": judge["id"],
                            "a": a,
                            "b": b,
                            "n_pairs": sum(len(item) for item in pairs),
                            "difference": bootstrap_mean(
                                differences, args.resamples, np.random.default_rng(args.seed)
                            ),
                            "mcnemar": mcnemar(pairs),
                        })
    json.dump({"results": results, "comparisons": comparisons}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
