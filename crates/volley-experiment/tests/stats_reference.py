#!/usr/bin/env python3
"""Independent reference for volley-experiment's scores/stats.rs, in numpy and scipy.

Reads one JSON object on stdin:

    {"items": [[v, ...], ...],          # each item's observed values (one per judged run)
     "pairs": [[[a, b], ...], ...]}     # optional: each item's (a, b) pairs of two models

and prints one JSON object on stdout:

    {"mean":       {"value": ..., "low": ..., "high": ...} | null,
     "difference": {"value": ..., "low": ..., "high": ...} | null,
     "n_pairs":    ...,
     "mcnemar":    {"a_only": ..., "b_only": ..., "p_value": ...} | null}

Definitions (the same as stats.rs):
- Items with no values are dropped; no item left gives null.
- value = pooled mean = sum of all values / number of values.
- The interval: B resamples (--resamples, default 10000) of n items drawn with
  replacement (an item's runs stay together), each the pooled mean of the drawn
  items' values (a resample holding no value is skipped); low and high are
  np.quantile(means, [0.025, 0.975]) with numpy's default method "linear".
- difference: the same on the per-pair differences a - b, grouped by item.
- mcnemar (only when every a and b is 0 or 1): a_only = #(1, 0), b_only = #(0, 1),
  p_value = scipy.stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
  (two-sided), 1 when a_only + b_only = 0.

The resampling uses numpy's own RNG (np.random.default_rng(--seed)), so the interval
ends differ from stats.rs's by Monte-Carlo noise (at B = 10000 about 1% of the
interval's width; with 0/1 verdicts the resampled means sit on a grid and an end may
move by one step of it): compare them with a tolerance. value and p_value agree up
to rounding.

Usage: python3 stats_reference.py [--resamples B] [--seed S] < input.json
"""

import argparse
import json
import sys

import numpy as np
from scipy.stats import binomtest

LOW_QUANTILE, HIGH_QUANTILE = 0.025, 0.975


def bootstrap_mean(items, resamples, rng):
    """The pooled mean of the items' values and its clustered percentile interval."""
    items = [np.asarray(values, dtype=float) for values in items if len(values) > 0]
    if not items:
        return None
    sums = np.array([values.sum() for values in items])
    counts = np.array([len(values) for values in items])
    value = sums.sum() / counts.sum()
    drawn = rng.integers(0, len(items), size=(resamples, len(items)))
    drawn_counts = counts[drawn].sum(axis=1)
    kept = drawn_counts > 0
    means = sums[drawn].sum(axis=1)[kept] / drawn_counts[kept]
    if means.size == 0:
        return None
    low, high = np.quantile(means, [LOW_QUANTILE, HIGH_QUANTILE])
    return {"value": float(value), "low": float(low), "high": float(high)}


def mcnemar(pairs):
    """McNemar's exact test over all pairs, or None unless every value is 0 or 1."""
    flat = [(a, b) for item in pairs for a, b in item]
    if not flat or any(v not in (0, 1) for pair in flat for v in pair):
        return None
    a_only = sum(1 for a, b in flat if a == 1 and b == 0)
    b_only = sum(1 for a, b in flat if a == 0 and b == 1)
    n = a_only + b_only
    p_value = binomtest(min(a_only, b_only), n, 0.5).pvalue if n > 0 else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p_value)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = json.load(sys.stdin)
    pairs = data.get("pairs", [])
    differences = [[a - b for a, b in item] for item in pairs]
    # One generator per statistic, so adding pairs does not move the mean's interval.
    result = {
        "mean": bootstrap_mean(data.get("items", []), args.resamples, np.random.default_rng(args.seed)),
        "difference": bootstrap_mean(differences, args.resamples, np.random.default_rng(args.seed)),
        "n_pairs": sum(len(item) for item in pairs),
        "mcnemar": mcnemar(pairs),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
