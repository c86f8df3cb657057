//! The statistics of scores: a model's score with its 95% confidence interval,
//! its spread across runs, and the paired comparison of two models on the same
//! items (the difference with its interval, and McNemar's exact test).
//!
//! This module owns the numbers only: pure functions over `f64`s, no I/O, no
//! knowledge of models, datasets or judges. Every definition is written out
//! exactly in the doc comments below because `tests/stats_reference.py`
//! recomputes them independently with numpy and scipy.
//!
//! # Why a clustered bootstrap
//! An experiment asks each item `runs` times. The runs of one item are not
//! independent observations: an item the model cannot answer is usually wrong
//! in every run. Treating the `items × runs` values as independent would give
//! an interval too narrow by up to a factor `√runs`. So the bootstrap resamples
//! *items* (all of an item's runs go together) and recomputes the pooled mean;
//! the interval then reflects how much the score would move on another draw of
//! items from the same population, which is the question a reader asks.
//!
//! # Inputs
//! Values are expected finite (a verdict is 0.0 or 1.0, a score a number from
//! JSON, which cannot carry NaN or infinities); a non-finite value makes the
//! results non-finite. The order of items matters for reproducibility only: the
//! same items in the same order with the same seed give the same interval.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};

/// How many bootstrap resamples an interval is computed from unless told
/// otherwise. Efron & Tibshirani (An Introduction to the Bootstrap, 1993) ask
/// for about 1,000 or more for percentile intervals; 10,000 makes the
/// Monte-Carlo noise of the 2.5% and 97.5% ends about 1% of the interval's
/// width (measured across seeds), and costs a few milliseconds for hundreds of
/// items (one resample is O(items), see [`bootstrap_mean`]).
pub const DEFAULT_RESAMPLES: usize = 10_000;

/// The confidence level of every interval here.
pub const CONFIDENCE_LEVEL: f64 = 0.95;

/// The quantile of the resampled statistics taken as an interval's lower end:
/// `(1 − 0.95) / 2`.
pub const LOW_QUANTILE: f64 = 0.025;

/// The quantile of the resampled statistics taken as an interval's upper end:
/// `1 − (1 − 0.95) / 2`.
pub const HIGH_QUANTILE: f64 = 0.975;

/// A point value and its 95% confidence interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The statistic computed on the data as observed.
    pub value: f64,
    /// The lower end of the 95% percentile-bootstrap interval.
    pub low: f64,
    /// The upper end of the 95% percentile-bootstrap interval.
    pub high: f64,
}

/// How a bootstrap is run: how many resamples, and the seed that makes it
/// reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    /// The number of resamples `B`.
    pub resamples: usize,
    /// Seeds `rand_chacha::ChaCha8Rng::seed_from_u64`: the same seed and the
    /// same items in the same order give the same interval (with the same
    /// versions of `rand` and `rand_chacha`, whose outputs are value-stable
    /// within a minor version).
    pub seed: u64,
}

impl Bootstrap {
    /// [`DEFAULT_RESAMPLES`] resamples from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Bootstrap {
            resamples: DEFAULT_RESAMPLES,
            seed,
        }
    }
}

impl Default for Bootstrap {
    /// [`DEFAULT_RESAMPLES`] resamples from seed 0.
    fn default() -> Self {
        Bootstrap::with_seed(0)
    }
}

/// The pooled mean of the observed values with its clustered-bootstrap 95%
/// interval.
///
/// `items[i]` holds item `i`'s observed values, one per judged run (missing
/// runs are simply absent).
///
/// Definitions:
/// - Items with no values are dropped first; `n` is the number left.
///   Returns `None` when `n = 0`, or when `bootstrap.resamples = 0`.
/// - `value` = pooled mean = (sum of all values) / (number of values). Items
///   with more observed runs weigh more, exactly as if every value were pooled.
/// - One resample draws `n` item indices with replacement, each
///   `rng.random_range(0..n)` from one `ChaCha8Rng::seed_from_u64(seed)` that
///   runs through all resamples in order; its statistic is the pooled mean of
///   all values of the drawn items (an item drawn twice counts twice). A
///   resample whose drawn items hold no value would be skipped, not counted;
///   since empty items are dropped beforehand this never happens here, but it
///   is part of the definition the Python reference shares.
/// - `low`, `high` = the 0.025 and 0.975 quantiles of the `B` resampled
///   statistics, as `numpy.quantile(stats, q)` computes them with its default
///   `method="linear"` (Hyndman & Fan type 7): sort the `B` statistics into
///   `x`, `h = (B − 1)·q`, `lo = ⌊h⌋`, result `x[lo] + (h − lo)·(x[lo+1] − x[lo])`
///   (the last value when `h = B − 1`), computed with numpy's own order of
///   operations so that the same array gives the same bits.
///
/// Guarantees: `low ≤ high`, and both lie within `[min, max]` of the values
/// (up to rounding of the means). The interval need **not** contain `value`:
/// with few or very skewed items the percentile interval can sit to one side of
/// the pooled mean. With one item `low = value = high`; with all values equal,
/// too (up to rounding when the value is not exact in binary).
///
/// Cost: per-item sums and counts are computed once, so a resample costs `n`
/// index draws and additions, not a pass over every value; 10,000 resamples of
/// 200 items × 3 runs take about 3.5 ms in a release build.
pub fn bootstrap_mean<I: AsRef<[f64]>>(items: &[I], bootstrap: Bootstrap) -> Option<Estimate> {
    bootstrap_mean_of(
        items.iter().map(|values| values.as_ref().iter().copied()),
        bootstrap,
    )
}

/// [`bootstrap_mean`] of items given one by one, each as its values in order: the same
/// result for the same values, without the values being held together (only a sum
/// and a count per item are kept).
pub fn bootstrap_mean_of<I, V>(items: I, bootstrap: Bootstrap) -> Option<Estimate>
where
    I: IntoIterator<Item = V>,
    V: IntoIterator<Item = f64>,
{
    let clusters: Vec<Cluster> = items.into_iter().filter_map(Cluster::of).collect();
    clustered_mean(&clusters, bootstrap)
}

/// The pooled mean of `clusters` and its interval (see [`bootstrap_mean`]).
fn clustered_mean(clusters: &[Cluster], bootstrap: Bootstrap) -> Option<Estimate> {
    let value = pooled_mean(clusters)?;
    let mut resampled = resampled_means(clusters, bootstrap);
    if resampled.is_empty() {
        return None;
    }
    resampled.sort_unstable_by(f64::total_cmp);
    Some(Estimate {
        value,
        low: quantile_linear(&resampled, LOW_QUANTILE),
        high: quantile_linear(&resampled, HIGH_QUANTILE),
    })
}

/// One item's observed values, reduced to what a resample needs.
#[derive(Debug, Clone, Copy)]
struct Cluster {
    /// The sum of the item's values, added in order.
    sum: f64,
    /// How many values the item has (at least one).
    count: usize,
}

impl Cluster {
    /// `None` for an item with no values: it carries no information and is
    /// dropped before resampling.
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Cluster> {
        let mut count = 0;
        // Summed as `Iterator::sum` does, in order.
        let sum = values.into_iter().inspect(|_| count += 1).sum();
        (count > 0).then_some(Cluster { sum, count })
    }
}

/// Sum of all values / number of values; `None` when there is no value.
fn pooled_mean(clusters: &[Cluster]) -> Option<f64> {
    let count: usize = clusters.iter().map(|c| c.count).sum();
    if count == 0 {
        return None;
    }
    let sum: f64 = clusters.iter().map(|c| c.sum).sum();
    Some(sum / count as f64)
}

/// The pooled means of `bootstrap.resamples` resamples of the clusters (in
/// draw order, unsorted), skipping any resample that holds no value.
fn resampled_means(clusters: &[Cluster], bootstrap: Bootstrap) -> Vec<f64> {
    let n = clusters.len();
    if n == 0 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(bootstrap.seed);
    let mut means = Vec::with_capacity(bootstrap.resamples);
    for _ in 0..bootstrap.resamples {
        let mut sum = 0.0;
        let mut count = 0usize;
        for _ in 0..n {
            let drawn = clusters[rng.random_range(0..n)];
            sum += drawn.sum;
            count += drawn.count;
        }
        if count > 0 {
            means.push(sum / count as f64);
        }
    }
    means
}

/// The `q`-quantile of `sorted` (ascending, non-empty) exactly as
/// `numpy.quantile(x, q)` computes it with its default `method="linear"`:
/// the virtual index `h = (len − 1)·q`, `lo = ⌊h⌋`, `t = h − lo`; past the last
/// index the last value; otherwise numpy's `_lerp` of `a = x[lo]` and
/// `b = x[lo + 1]`: `a + (b − a)·t` when `t < 0.5`, `b − (b − a)·(1 − t)`
/// when `t ≥ 0.5` (the same operations in the same order, so the results agree
/// to the bit on the same array).
fn quantile_linear(sorted: &[f64], q: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return f64::NAN;
    };
    let last_index = sorted.len() - 1;
    let virtual_index = last_index as f64 * q;
    if virtual_index >= last_index as f64 {
        return last;
    }
    if virtual_index < 0.0 {
        return sorted[0];
    }
    let lo = virtual_index.floor();
    let t = virtual_index - lo;
    // `lo < last_index` here, so `lo + 1` is a valid index.
    let a = sorted[lo as usize];
    let b = sorted[lo as usize + 1];
    let difference = b - a;
    if t >= 0.5 {
        b - difference * (1.0 - t)
    } else {
        a + difference * t
    }
}

/// How much a model's score moves from one run to the next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSpread {
    /// The mean of each run over the items observed in that run, by run index;
    /// `None` for a run in which no item was observed.
    pub per_run: Vec<Option<f64>>,
    /// The smallest of the per-run means.
    pub min: f64,
    /// The largest of the per-run means.
    pub max: f64,
    /// The sample standard deviation (divisor `k − 1`, numpy's
    /// `np.std(x, ddof=1)`) of the `k` per-run means; 0 when `k < 2`.
    pub std_dev: f64,
}

/// The spread of the score across runs.
///
/// `items[i][r]` is item `i`'s value in run `r`, `None` where it is missing
/// (the request failed or is unjudged). Items may have rows of different
/// lengths; the number of runs is the longest row.
///
/// Definitions: run `r`'s mean = (sum of `items[i][r]` over the items observed
/// in run `r`) / (their number). `min`, `max` and `std_dev` are over the runs
/// that have a mean (runs with no observation are left out, not counted as 0).
/// Returns `None` when no run has any observation.
pub fn run_spread<I: AsRef<[Option<f64>]>>(items: &[I]) -> Option<RunSpread> {
    run_spread_of(items.iter().map(|row| row.as_ref().iter().copied()))
}

/// [`run_spread`] of items given one by one, each as its row (`None` where a run is
/// missing): the same result for the same rows, holding only a sum and a count per run.
pub fn run_spread_of<I, R>(items: I) -> Option<RunSpread>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = Option<f64>>,
{
    let mut sums: Vec<f64> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for row in items {
        for (run, value) in row.into_iter().enumerate() {
            // The number of runs is the longest row, a missing last run included.
            if sums.len() <= run {
                sums.resize(run + 1, 0.0);
                counts.resize(run + 1, 0);
            }
            if let Some(value) = value {
                sums[run] += value;
                counts[run] += 1;
            }
        }
    }
    let per_run: Vec<Option<f64>> = sums
        .iter()
        .zip(&counts)
        .map(|(&sum, &count)| (count > 0).then(|| sum / count as f64))
        .collect();
    let means: Vec<f64> = per_run.iter().flatten().copied().collect();
    let min = means.iter().copied().reduce(f64::min)?;
    let max = means.iter().copied().reduce(f64::max)?;
    Some(RunSpread {
        min,
        max,
        std_dev: sample_std_dev(&means),
        per_run,
    })
}

/// `sqrt(Σ (x − mean)² / (k − 1))`, 0 when `k < 2`.
fn sample_std_dev(values: &[f64]) -> f64 {
    let k = values.len();
    if k < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / k as f64;
    let squares: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    (squares / (k - 1) as f64).sqrt()
}

/// Two models compared on the runs where both were judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// How many (a, b) pairs the comparison rests on.
    pub n_pairs: u64,
    /// `mean(a) − mean(b)` pooled over all pairs, with its clustered-bootstrap
    /// 95% interval (see [`paired`]).
    pub difference: Estimate,
    /// McNemar's exact test, when every value is a verdict (0 or 1).
    pub mcnemar: Option<McNemar>,
}

/// McNemar's exact test of two models' verdicts on the same (item, run) pairs:
/// do they disagree more often one way than the other?
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Pairs where model a is right and model b wrong (a = 1, b = 0).
    pub a_only: u64,
    /// Pairs where model b is right and model a wrong (a = 0, b = 1).
    pub b_only: u64,
    /// The two-sided exact p-value (see [`McNemar::from_counts`]).
    pub p_value: f64,
}

impl McNemar {
    /// McNemar's exact (binomial) test from the discordant counts.
    ///
    /// With `n = a_only + b_only` and `X ~ Binomial(n, 0.5)`:
    /// `p = min(1, 2·P(X ≤ min(a_only, b_only)))`, and `p = 1` when `n = 0`.
    /// Pairs where both models agree carry no information on which is better
    /// and do not enter.
    ///
    /// This equals `scipy.stats.binomtest(min(a_only, b_only), n, 0.5).pvalue`
    /// (two-sided): checked with scipy 1.17 for every `a_only, b_only` in
    /// 0..=120 (largest relative difference 1.3e-15) and for (400, 600),
    /// (480, 520), (500, 500), (0, 1000), (1, 999), (5000, 5200) and
    /// (100000, 101000). The tail `P(X ≤ k)` comes from statrs' binomial CDF,
    /// the regularized incomplete beta `I_{0.5}(n − k, k + 1)`, which stays
    /// accurate in relative terms far into the tail where summing probabilities
    /// term by term would lose digits or underflow: against scipy on the cases
    /// above it differs by at most 1.3e-12 relatively for `n ≤ 1000` (including
    /// 1.87e-301 for (0, 1000)) and 4.2e-11 for `n = 201,000`.
    pub fn from_counts(a_only: u64, b_only: u64) -> McNemar {
        McNemar {
            a_only,
            b_only,
            p_value: mcnemar_exact_p(a_only, b_only),
        }
    }
}

/// See [`McNemar::from_counts`].
fn mcnemar_exact_p(a_only: u64, b_only: u64) -> f64 {
    let n = a_only + b_only;
    if n == 0 {
        return 1.0;
    }
    let smaller = a_only.min(b_only);
    // 0.5 is always a valid probability, so `new` cannot fail; 1 (no evidence)
    // would be the safe answer if it did.
    Binomial::new(0.5, n).map_or(1.0, |binomial| (2.0 * binomial.cdf(smaller)).min(1.0))
}

/// The paired comparison of model a with model b.
///
/// `items[i]` holds item `i`'s (a, b) value pairs: one per run in which both
/// models were judged, paired by run index (see [`pair_by_run`]).
///
/// Definitions:
/// - `n_pairs` = the number of pairs over all items. Returns `None` when it
///   is 0.
/// - `difference` is [`bootstrap_mean`] applied to the per-pair differences
///   `a − b` grouped by item: its value is the pooled mean of `a − b`, which is
///   `mean(a) − mean(b)` over the pairs (up to rounding), and its interval
///   resamples items (all of an item's pairs together; items with no pair are
///   dropped) with the same seed rule and quantiles.
/// - `mcnemar` is `Some` when every value of every pair is exactly 0.0 or 1.0:
///   `a_only` counts pairs (1, 0), `b_only` pairs (0, 1), and the p-value is
///   [`McNemar::from_counts`]. With scores it is `None`. McNemar treats the
///   pairs as independent, which the runs of one item are not; the bootstrap
///   interval of the difference is the one that accounts for clustering.
pub fn paired<I: AsRef<[(f64, f64)]>>(items: &[I], bootstrap: Bootstrap) -> Option<Paired> {
    paired_of(
        items.iter().map(|pairs| pairs.as_ref().iter().copied()),
        bootstrap,
    )
}

/// [`paired`] of items given one by one, each as its pairs in order: the same result
/// for the same pairs, holding only a sum and a count per item.
pub fn paired_of<I, P>(items: I, bootstrap: Bootstrap) -> Option<Paired>
where
    I: IntoIterator<Item = P>,
    P: IntoIterator<Item = (f64, f64)>,
{
    let (mut n_pairs, mut a_only, mut b_only) = (0u64, 0u64, 0u64);
    let mut binary = true;
    let is_verdict = |value: f64| value == 0.0 || value == 1.0;
    let clusters: Vec<Cluster> = items
        .into_iter()
        .filter_map(|pairs| {
            Cluster::of(pairs.into_iter().map(|(a, b)| {
                n_pairs += 1;
                binary &= is_verdict(a) && is_verdict(b);
                a_only += u64::from(a > b);
                b_only += u64::from(a < b);
                a - b
            }))
        })
        .collect();
    let difference = clustered_mean(&clusters, bootstrap)?;
    let mcnemar = binary.then(|| McNemar::from_counts(a_only, b_only));
    Some(Paired {
        n_pairs,
        difference,
        mcnemar,
    })
}

/// One item's (a, b) pairs: the runs where both `a[run]` and `b[run]` are
/// observed, in run order. A run past the end of either row is missing.
pub fn pair_by_run(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<(f64, f64)> {
    a.iter()
        .zip(b)
        .filter_map(|(&a, &b)| Some((a?, b?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `ones` items whose runs are all 1.0 and `zeros` whose runs are all 0.0,
    /// each with `runs` values.
    fn verdict_items(ones: usize, zeros: usize, runs: usize) -> Vec<Vec<f64>> {
        let mut items = vec![vec![1.0; runs]; ones];
        items.extend(vec![vec![0.0; runs]; zeros]);
        items
    }

    /// 30 items of scores in tenths, 3 runs each with some missing: a case
    /// whose resampled means are nearly continuous (verdicts give a coarse grid
    /// on which two seeds often land on the same quantiles).
    fn score_items() -> Vec<Vec<f64>> {
        (0..30)
            .map(|i| {
                (0..3)
                    .filter(|r| (i + r) % 4 != 0)
                    .map(|r| ((i * 7 + r * 3) % 10) as f64 / 10.0)
                    .collect()
            })
            .collect()
    }

    fn width(estimate: Estimate) -> f64 {
        estimate.high - estimate.low
    }

    fn estimate(items: &[Vec<f64>], seed: u64) -> Estimate {
        bootstrap_mean(items, Bootstrap::with_seed(seed)).expect("items have values")
    }

    #[test]
    fn the_value_is_the_pooled_mean_over_all_values() {
        // Pooled, not the mean of item means (which would be (1 + 0.5) / 2).
        let items = vec![vec![1.0], vec![1.0, 0.0, 0.0, 1.0]];
        assert_eq!(estimate(&items, 1).value, 3.0 / 5.0);
    }

    #[test]
    fn the_interval_contains_the_value_and_narrows_as_items_grow() {
        let small = estimate(&verdict_items(14, 6, 3), 7);
        let large = estimate(&verdict_items(140, 60, 3), 7);
        for e in [small, large] {
            assert_eq!(e.value, 0.7);
            assert!(e.low < e.value && e.value < e.high, "{e:?}");
        }
        // Ten times the items: about √10 ≈ 3.2 times narrower.
        let ratio = width(small) / width(large);
        assert!((2.5..4.0).contains(&ratio), "{small:?} {large:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_interval_and_another_seed_a_close_one() {
        let items = score_items();
        let first = estimate(&items, 42);
        assert_eq!(first, estimate(&items, 42));
        let other = estimate(&items, 43);
        assert_ne!(first, other);
        assert_eq!(first.value, other.value);
        assert!((first.low - other.low).abs() < 0.03, "{first:?} {other:?}");
        assert!(
            (first.high - other.high).abs() < 0.03,
            "{first:?} {other:?}"
        );
    }

    #[test]
    fn runs_that_agree_within_an_item_widen_the_interval() {
        // 20 items × 3 runs that always agree, against the same 60 values as
        // 60 independent one-run items: same pooled mean, but the clustered
        // data hold only 20 independent observations, so the interval is about
        // √3 ≈ 1.7 times wider.
        let clustered = estimate(&verdict_items(10, 10, 3), 3);
        let independent = estimate(&verdict_items(30, 30, 1), 3);
        assert_eq!(clustered.value, independent.value);
        let ratio = width(clustered) / width(independent);
        assert!((1.4..2.1).contains(&ratio), "{clustered:?} {independent:?}");
    }

    #[test]
    fn the_interval_agrees_with_numpy_up_to_monte_carlo_noise() {
        // 30 items of scores with some runs missing. tests/stats_reference.py
        // on {"items": [[((i*7+r*3)%10)/10 for r in range(3) if (i+r)%4 != 0]
        // for i in range(30)]} printed, for --seed 0..=4, value
        // 0.4661764705882353, low 0.41692..0.41781, high 0.51493..0.51515.
        // Its RNG is numpy's, so the ends agree only up to Monte-Carlo noise.
        let ours = estimate(&score_items(), 0);
        assert!((ours.value - 0.4661764705882353).abs() < 1e-15, "{ours:?}");
        assert!((ours.low - 0.4172).abs() < 0.003, "{ours:?}");
        assert!((ours.high - 0.5150).abs() < 0.003, "{ours:?}");
    }

    #[test]
    fn no_items_or_only_empty_items_give_no_estimate() {
        let none: Vec<Vec<f64>> = Vec::new();
        assert_eq!(bootstrap_mean(&none, Bootstrap::default()), None);
        let empty: Vec<Vec<f64>> = vec![vec![], vec![]];
        assert_eq!(bootstrap_mean(&empty, Bootstrap::default()), None);
        let no_resamples = Bootstrap {
            resamples: 0,
            seed: 0,
        };
        assert_eq!(bootstrap_mean(&[vec![1.0]], no_resamples), None);
    }

    #[test]
    fn one_item_gives_an_interval_equal_to_its_value() {
        let items = vec![vec![0.1, 0.7, 0.3]];
        let e = estimate(&items, 9);
        assert_eq!((e.low, e.high), (e.value, e.value));
    }

    #[test]
    fn all_equal_values_give_a_point_interval() {
        let items = vec![vec![0.5, 0.5], vec![0.5], vec![0.5, 0.5, 0.5]];
        assert_eq!(
            estimate(&items, 5),
            Estimate {
                value: 0.5,
                low: 0.5,
                high: 0.5
            }
        );
    }

    #[test]
    fn items_without_values_are_dropped_and_missing_runs_weigh_less() {
        let with_empty = vec![vec![1.0, 1.0], vec![], vec![0.0], vec![]];
        let without = vec![vec![1.0, 1.0], vec![0.0]];
        assert_eq!(estimate(&with_empty, 11), estimate(&without, 11));
        assert_eq!(estimate(&without, 11).value, 2.0 / 3.0);
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        // Each expected number is repr(np.quantile(np.array(x), [0.025, 0.975]))
        // with numpy 2.4.
        let cases: [(Vec<f64>, f64, f64); 4] = [
            (
                vec![0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05, 0.95],
                0.0625,
                0.9375,
            ),
            (vec![1.0, 3.0], 1.05, 2.95),
            (vec![2.5], 2.5, 2.5),
            // x = [((i * 37) % 40) / 7.0 for i in range(40)]: t = 0.975 ≥ 0.5.
            (
                (0..40).map(|i| ((i * 37) % 40) as f64 / 7.0).collect(),
                0.1392857142857143,
                5.432142857142857,
            ),
        ];
        for (mut x, low, high) in cases {
            x.sort_unstable_by(f64::total_cmp);
            assert_eq!(quantile_linear(&x, LOW_QUANTILE), low, "{x:?}");
            assert_eq!(quantile_linear(&x, HIGH_QUANTILE), high, "{x:?}");
        }
        // np.quantile(np.arange(10000) / 3.0, [0.025, 0.975])
        let x: Vec<f64> = (0..10_000).map(|i| i as f64 / 3.0).collect();
        assert_eq!(quantile_linear(&x, LOW_QUANTILE), 83.325);
        assert_eq!(quantile_linear(&x, HIGH_QUANTILE), 3249.6749999999997);
    }

    #[test]
    fn the_spread_is_over_run_means_of_observed_items() {
        let items = vec![
            vec![Some(1.0), Some(0.0), Some(1.0)],
            vec![Some(1.0), None, Some(0.0)],
            vec![None, Some(1.0), Some(1.0)],
            vec![Some(0.0)],
        ];
        let spread = run_spread(&items).expect("observed");
        let per_run = [2.0 / 3.0, 0.5, 2.0 / 3.0];
        assert_eq!(spread.per_run, per_run.map(Some).to_vec());
        assert_eq!((spread.min, spread.max), (0.5, 2.0 / 3.0));
        // np.std([2/3, 1/2, 2/3], ddof=1) = 0.09622504486493762
        assert!((spread.std_dev - 0.09622504486493762).abs() < 1e-15);
    }

    #[test]
    fn a_run_with_no_observation_is_left_out_of_the_spread() {
        let items = vec![vec![Some(1.0), None, Some(0.0)], vec![None, None]];
        let spread = run_spread(&items).expect("observed");
        assert_eq!(spread.per_run, vec![Some(1.0), None, Some(0.0)]);
        assert_eq!((spread.min, spread.max), (0.0, 1.0));
        // np.std([1, 0], ddof=1)
        assert_eq!(spread.std_dev, std::f64::consts::FRAC_1_SQRT_2);
    }

    #[test]
    fn fewer_than_two_runs_have_no_deviation_and_none_have_no_spread() {
        let one_run = run_spread(&[vec![Some(0.25)], vec![Some(0.75)]]).expect("observed");
        assert_eq!((one_run.min, one_run.max, one_run.std_dev), (0.5, 0.5, 0.0));
        let nothing: Vec<Vec<Option<f64>>> = vec![vec![None, None]];
        assert_eq!(run_spread(&nothing), None);
        let no_items: Vec<Vec<Option<f64>>> = Vec::new();
        assert_eq!(run_spread(&no_items), None);
    }

    #[test]
    fn mcnemar_matches_scipy_binomtest() {
        // Each p is scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue with
        // scipy 1.17 (two-sided); (0, 0) is 1 by definition.
        let cases: [(u64, u64, f64); 18] = [
            (0, 0, 1.0),
            (1, 0, 1.0),
            (0, 1, 1.0),
            (3, 3, 1.0),
            (20, 20, 1.0),
            (21, 20, 1.0),
            (5, 0, 0.0625),
            (6, 1, 0.125),
            (10, 2, 0.03857421875),
            (2, 10, 0.03857421875),
            (12, 5, 0.143463134765625),
            (25, 15, 0.1538599441628321),
            (50, 30, 0.03299261842647619),
            (480, 520, 0.2174482932041415),
            (500, 500, 1.0),
            (400, 600, 2.728464156065947e-10),
            (1, 999, 1.8683937642434442e-298),
            (0, 1000, 1.8665272370064378e-301),
        ];
        for (a_only, b_only, scipy) in cases {
            let ours = McNemar::from_counts(a_only, b_only).p_value;
            let relative = (ours - scipy).abs() / scipy;
            assert!(relative < 1e-9, "({a_only}, {b_only}): {ours} vs {scipy}");
        }
    }

    #[test]
    fn paired_verdicts_get_the_difference_and_mcnemar() {
        // Item 0: a better in both runs; item 1: b better once, a tie once;
        // item 2: both right; item 3: no run judged by both.
        let items = vec![
            pair_by_run(&[Some(1.0), Some(1.0)], &[Some(0.0), Some(0.0)]),
            pair_by_run(&[Some(0.0), Some(1.0)], &[Some(1.0), Some(1.0)]),
            pair_by_run(&[Some(1.0), None], &[Some(1.0), Some(0.0)]),
            pair_by_run(&[None, Some(1.0)], &[Some(1.0), None]),
        ];
        assert!(items[3].is_empty());
        let result = paired(&items, Bootstrap::with_seed(1)).expect("pairs");
        assert_eq!(result.n_pairs, 5);
        // mean(a) − mean(b) over the 5 pairs: 4/5 − 3/5.
        assert!((result.difference.value - 0.2).abs() < 1e-15);
        assert!(result.difference.low <= result.difference.high);
        let mcnemar = result.mcnemar.expect("verdicts");
        assert_eq!((mcnemar.a_only, mcnemar.b_only), (2, 1));
        // scipy.stats.binomtest(1, 3, 0.5).pvalue = 1.0
        assert_eq!(mcnemar.p_value, 1.0);
    }

    #[test]
    fn paired_scores_have_no_mcnemar_and_no_pairs_no_comparison() {
        let scores = vec![vec![(0.8, 0.5), (0.9, 0.4)], vec![(0.2, 0.3)]];
        let result = paired(&scores, Bootstrap::with_seed(1)).expect("pairs");
        assert_eq!(result.mcnemar, None);
        assert_eq!(result.n_pairs, 3);
        let none: Vec<Vec<(f64, f64)>> = vec![vec![], vec![]];
        assert_eq!(paired(&none, Bootstrap::default()), None);
    }

    #[test]
    fn pairing_is_by_run_index() {
        let a = [Some(1.0), None, Some(0.0), Some(1.0)];
        let b = [Some(0.0), Some(1.0), Some(0.0)];
        assert_eq!(pair_by_run(&a, &b), vec![(1.0, 0.0), (0.0, 0.0)]);
    }

    /// Some items (possibly empty), each with up to 5 values.
    fn any_items() -> impl Strategy<Value = Vec<Vec<f64>>> {
        prop::collection::vec(prop::collection::vec(-100.0f64..100.0, 0..5), 0..12)
    }

    /// Rounding slack for comparing means with the values they average.
    const SLACK: f64 = 1e-9;

    proptest! {
        /// What a percentile interval guarantees for any input: ordered ends
        /// within the range of the values (it need not contain the value).
        #[test]
        fn the_interval_is_ordered_and_within_the_values(items in any_items(), seed in any::<u64>()) {
            let bootstrap = Bootstrap { resamples: 200, seed };
            let values: Vec<f64> = items.iter().flatten().copied().collect();
            match bootstrap_mean(&items, bootstrap) {
                None => prop_assert!(values.is_empty()),
                Some(e) => {
                    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(e.low <= e.high, "{:?}", e);
                    prop_assert!(min - SLACK <= e.low && e.high <= max + SLACK, "{:?}", e);
                    prop_assert!(min - SLACK <= e.value && e.value <= max + SLACK, "{:?}", e);
                }
            }
        }

        #[test]
        fn mcnemar_p_is_a_probability_and_symmetric(a_only in 0u64..2000, b_only in 0u64..2000) {
            let p = McNemar::from_counts(a_only, b_only).p_value;
            prop_assert!((0.0..=1.0).contains(&p));
            prop_assert_eq!(p, McNemar::from_counts(b_only, a_only).p_value);
        }
    }
}
