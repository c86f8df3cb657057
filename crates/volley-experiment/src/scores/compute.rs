//! Scores computed from a run directory's files alone, so that `report` recomputes
//! exactly what the run wrote: every map is ordered and every sum taken in file order,
//! and each interval's seed is derived from what it is about.
//!
//! Memory does not grow with the lines read beyond a byte per judged (item, run): the
//! verdicts are kept as one-byte codes of the distinct values (see [`RunValues`]), each
//! item id once per dataset (the bootstrap resamples items, and two models are paired
//! on them), and the latency percentiles are found by reading `answers.jsonl` again
//! ([`select`]) instead of holding every latency.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use volley_core::accounting::usage::Usage;
use volley_core::input::ids::{IdTable, StableHash, id_hash};

use super::stats::{self, Bootstrap, Estimate, Paired, RunSpread};
use crate::plan::VerdictKind;
use crate::record::{self, ANSWERS, Cell, ERRORS, JUDGEMENTS, RecordError, Stage};
use crate::run_info::{self, JudgeInfo, RunInfo};
use select::{Changed, Histogram, Select};

mod select;

/// The seed every interval's seed is derived from.
pub const BASE_SEED: u64 = 0x766f_6c6c_6579;

/// Everything `scores.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub bootstrap: BootstrapInfo,
    /// The judges that graded in this run directory.
    pub judges: Vec<JudgeInfo>,
    /// One per experiment × dataset × model × judge (judge `null` when nothing was
    /// judged).
    pub results: Vec<ScoreRow>,
    /// One per experiment × dataset × judge × pair of models.
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapInfo {
    pub resamples: usize,
    pub level: f64,
    /// Each interval's seed is this mixed with a hash of what it is about.
    pub base_seed: u64,
    /// Resampled: items, with all their runs.
    pub clustered_by: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreRow {
    pub experiment: String,
    pub dataset: String,
    pub model: String,
    /// The judge's identity, `null` when no judgement is counted.
    pub judge: Option<String>,
    pub judge_model: Option<String>,
    /// `accuracy` or `mean_score`; `null` without a judge.
    pub metric: Option<&'static str>,
    /// The accuracy or mean score over judged (item, run) cells, with its 95% interval
    /// (a bootstrap over items, runs clustered by item).
    pub score: Option<Estimate>,
    /// The score of each run, and their spread.
    pub runs: Option<RunSpread>,
    pub counts: Counts,
    /// The answers' tokens and cost (every attempt, failed ones too).
    pub tokens: Tokens,
    pub cost_usd: Option<f64>,
    pub latency_ms: Option<Latency>,
    /// This judge's tokens and cost for grading this model's answers, apart.
    pub judge_tokens: Tokens,
    pub judge_cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Rows × runs.
    pub cells: u64,
    pub answered: u64,
    pub answer_failed: u64,
    pub postprocess_failed: u64,
    /// Graded by this judge with a verdict.
    pub judged: u64,
    /// This judge failed, or replied without a verdict.
    pub judge_failed: u64,
    /// Answered (and postprocessed) but not graded by this judge yet.
    pub unjudged: u64,
    /// Never answered: left for a re-run.
    pub missing: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub experiment: String,
    pub dataset: String,
    pub judge: String,
    pub a: String,
    pub b: String,
    /// `a − b` over the (item, run) cells both have a verdict for, and McNemar's exact
    /// test for correct-verdicts.
    pub paired: Option<Paired>,
}

/// The usage part of a line.
#[derive(Deserialize)]
struct LineVolley {
    usage: Usage,
    latency_ms: f64,
}

#[derive(Deserialize)]
struct Line {
    #[serde(flatten)]
    cell: Cell,
    stage: Stage,
    judge: Option<String>,
    volley: Option<LineVolley>,
    value: Option<f64>,
}

/// (experiment, dataset, model)
type GroupKey = (String, String, String);

#[derive(Default)]
struct Spend {
    tokens: Tokens,
    cost: f64,
    /// Lines whose cost is unknown: the total is then unknown too.
    unknown: bool,
}

impl Spend {
    fn add(&mut self, usage: &Usage) {
        self.tokens.prompt += usage.prompt_tokens;
        self.tokens.completion += usage.completion_tokens;
        self.tokens.total += usage.total_tokens;
        match usage.cost {
            Some(cost) => self.cost += cost,
            // A line that used tokens with no known cost makes the total unknown.
            None => self.unknown |= usage.total_tokens > 0,
        }
    }

    fn cost(&self) -> Option<f64> {
        (!self.unknown).then_some(self.cost)
    }
}

#[derive(Default)]
struct Group {
    answered: u64,
    answer_failed: u64,
    postprocess_failed: u64,
    spend: Spend,
    latencies: Latencies,
    /// By judge: each item's value per run, and the judge's spend and failures.
    judged: BTreeMap<String, Judged>,
}

#[derive(Default)]
struct Judged {
    values: RunValues,
    failed: u64,
    spend: Spend,
}

/// The item ids of one experiment's dataset that have a value, each numbered once (in
/// the order they are first seen): the ids one after another in one string, found by
/// their hash, and an id whose hash another id has apart.
#[derive(Default)]
struct Items {
    text: String,
    /// Where each item's id starts in `text`; it ends where the next starts.
    starts: Vec<usize>,
    by_hash: IdTable<u32>,
    collided: HashMap<Box<str>, u32>,
}

impl Items {
    fn id(&self, item: u32) -> &str {
        let item = item as usize;
        let end = self
            .starts
            .get(item + 1)
            .copied()
            .unwrap_or(self.text.len());
        &self.text[self.starts[item]..end]
    }

    fn number(&mut self, id: &str) -> u32 {
        let hash = id_hash(id);
        let next = self.starts.len() as u32;
        match self.by_hash.get(hash) {
            Some(&item) if self.id(item) == id => return item,
            Some(_) => match self.collided.get(id) {
                Some(&item) => return item,
                None => {
                    self.collided.insert(id.into(), next);
                }
            },
            None => {
                self.by_hash.insert_new(hash, next);
            }
        }
        self.starts.push(self.text.len());
        self.text.push_str(id);
        next
    }

    /// The items' numbers in the order of their ids.
    fn in_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.starts.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.id(a).cmp(self.id(b)));
        order
    }
}

/// Distinct values a [`RunValues`] codes in a byte before it keeps them whole.
const CODES: usize = u8::MAX as usize;

/// Each item's value in each run of one model under one judge, the last line of an
/// (item, run) counting. Verdicts are a few distinct values (0 and 1, or a judge's
/// scale): each (item, run) is a byte, 0 for none and `k` for `palette[k − 1]`, until
/// more than [`CODES`] distinct values make it keep the values themselves.
#[derive(Default)]
struct RunValues {
    /// Runs per item: (item, run) is at `item × runs + run`.
    runs: usize,
    cells: Cells,
    /// The highest run with a value, if any.
    last_run: Option<usize>,
}

enum Cells {
    Coded { codes: Vec<u8>, palette: Vec<f64> },
    Whole(Vec<Option<f64>>),
}

impl Default for Cells {
    fn default() -> Self {
        Cells::Coded {
            codes: Vec::new(),
            palette: Vec::new(),
        }
    }
}

impl RunValues {
    fn set(&mut self, item: u32, run: usize, runs: usize, value: f64) {
        self.runs = runs;
        self.last_run = self.last_run.max(Some(run));
        let at = item as usize * runs + run;
        if let Cells::Coded { codes, palette } = &mut self.cells {
            let known = palette.iter().position(|p| p.to_bits() == value.to_bits());
            let code = match known {
                Some(i) => Some(i + 1),
                None if palette.len() < CODES => {
                    palette.push(value);
                    Some(palette.len())
                }
                None => None,
            };
            if let Some(code) = code {
                if codes.len() <= at {
                    codes.resize(at + 1, 0);
                }
                codes[at] = code as u8;
                return;
            }
            let whole = codes
                .iter()
                .map(|&c| (c > 0).then(|| palette[c as usize - 1]))
                .collect();
            self.cells = Cells::Whole(whole);
        }
        if let Cells::Whole(values) = &mut self.cells {
            if values.len() <= at {
                values.resize(at + 1, None);
            }
            values[at] = Some(value);
        }
    }

    fn get(&self, item: u32, run: usize) -> Option<f64> {
        let at = item as usize * self.runs + run;
        match &self.cells {
            Cells::Coded { codes, palette } => match codes.get(at) {
                Some(&c) if c > 0 => Some(palette[c as usize - 1]),
                _ => None,
            },
            Cells::Whole(values) => values.get(at).copied().flatten(),
        }
    }

    /// The item's values, in run order.
    fn values(&self, item: u32) -> impl Iterator<Item = f64> + '_ {
        (0..self.runs).filter_map(move |run| self.get(item, run))
    }

    /// How many (item, run) have a value.
    fn count(&self) -> u64 {
        match &self.cells {
            Cells::Coded { codes, .. } => codes.iter().filter(|&&c| c > 0).count() as u64,
            Cells::Whole(values) => values.iter().flatten().count() as u64,
        }
    }
}

/// A group's answer latencies: mean and maximum as they are read, the percentiles by
/// passes over the answers ([`select`]).
struct Latencies {
    count: u64,
    sum: f64,
    max: Option<f64>,
    /// The first pass of the percentiles.
    first: Histogram,
    /// p50 and p95, once the count is known.
    percentiles: Option<[Select; 2]>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            count: 0,
            // Where `Iterator::sum` starts, so the mean is that of the values summed.
            sum: -0.0,
            max: None,
            first: Histogram::default(),
            percentiles: None,
        }
    }
}

impl Latencies {
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.max = Some(match self.max {
            Some(max) if max.total_cmp(&value).is_ge() => max,
            _ => value,
        });
        self.first.add(value);
    }

    /// Starts the percentiles' passes: the index of quantile `q` in the sorted values
    /// is `round((count − 1)·q)`.
    fn start(&mut self) -> Result<(), Changed> {
        if self.count == 0 {
            return Ok(());
        }
        let rank = |q: f64| ((self.count - 1) as f64 * q).round() as u64;
        self.percentiles = Some([
            Select::new(rank(0.5), &self.first)?,
            Select::new(rank(0.95), &self.first)?,
        ]);
        self.first = Histogram::default();
        Ok(())
    }

    fn pending(&self) -> bool {
        self.percentiles
            .as_ref()
            .is_some_and(|p| p.iter().any(|s| s.found().is_none()))
    }

    fn latency(&self) -> Option<Latency> {
        let [p50, p95] = self.percentiles.as_ref()?;
        Some(Latency {
            mean: self.sum / self.count as f64,
            p50: p50.found()?,
            p95: p95.found()?,
            max: self.max?,
        })
    }
}

/// Computes the scores of the run directory `dir` from its files.
pub fn compute(dir: &Path) -> Result<Scores, RecordError> {
    let info = run_info::read(dir)?.ok_or_else(|| RecordError::Io {
        path: dir.join(run_info::RUN_INFO).display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a run directory"),
    })?;
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    // By (experiment, dataset).
    let mut items: BTreeMap<(String, String), Items> = BTreeMap::new();
    // Where the answers read end: the percentiles' passes read no further.
    let mut answers_end = 0;
    for name in [ANSWERS, ERRORS, JUDGEMENTS] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        record::read_complete_lines(&path, |offset, line_no, bytes| {
            if name == ANSWERS {
                answers_end = offset + bytes.len() as u64;
            }
            let Some((line, runs)) = scored_line(&info, &path, line_no, bytes)? else {
                return Ok(());
            };
            let key = (
                line.cell.experiment.to_string(),
                line.cell.dataset.to_string(),
                line.cell.model.to_string(),
            );
            let group = groups.entry(key).or_default();
            let usage = line.volley.as_ref().map(|v| v.usage).unwrap_or_default();
            match (name, line.stage) {
                (ANSWERS, _) => {
                    group.answered += 1;
                    group.spend.add(&usage);
                    if let Some(v) = &line.volley {
                        group.latencies.add(v.latency_ms);
                    }
                }
                (ERRORS, Stage::Answer) => {
                    group.answer_failed += 1;
                    group.spend.add(&usage);
                }
                (ERRORS, Stage::Postprocess) => group.postprocess_failed += 1,
                (_, Stage::Judge) => {
                    let judged = group
                        .judged
                        .entry(line.judge.clone().unwrap_or_default())
                        .or_default();
                    judged.spend.add(&usage);
                    match line.value.filter(|_| name == JUDGEMENTS) {
                        Some(value) => {
                            let item = items
                                .entry((
                                    line.cell.experiment.to_string(),
                                    line.cell.dataset.to_string(),
                                ))
                                .or_default()
                                .number(&line.cell.item);
                            judged
                                .values
                                .set(item, line.cell.run as usize, runs as usize, value);
                        }
                        None => judged.failed += 1,
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    percentiles(dir, &info, answers_end, &mut groups)?;
    let items = items
        .iter()
        .map(|(k, v)| (k.clone(), v.in_order()))
        .collect();
    Ok(assemble(&info, &mut groups, &items))
}

/// `bytes` read as a line of the scores, with its experiment's runs; `None` for a line
/// of a run the plan no longer has (its `runs` lowered since), not part of the scores.
fn scored_line(
    info: &RunInfo,
    path: &Path,
    line_no: u64,
    bytes: &[u8],
) -> Result<Option<(Line, u32)>, RecordError> {
    let line: Line = serde_json::from_slice(bytes).map_err(|e| RecordError::Foreign {
        path: path.display().to_string(),
        line: line_no,
        reason: e.to_string(),
    })?;
    let runs = info
        .experiments
        .iter()
        .find(|e| *e.name == *line.cell.experiment)
        .map_or(0, |e| e.runs);
    Ok((line.cell.run < runs).then_some((line, runs)))
}

/// Finds the groups' latency percentiles by reading the answers again, up to `end`
/// (what the first reading saw), until every one is found: two more readings for
/// latencies spread over a few powers of two, at most five.
fn percentiles(
    dir: &Path,
    info: &RunInfo,
    end: u64,
    groups: &mut BTreeMap<GroupKey, Group>,
) -> Result<(), RecordError> {
    let path = dir.join(ANSWERS);
    let changed = |_: Changed| RecordError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other("the file changed while the scores were computed"),
    };
    for group in groups.values_mut() {
        group.latencies.start().map_err(changed)?;
    }
    loop {
        let mut pending: Vec<(&GroupKey, &mut [Select; 2])> = groups
            .iter_mut()
            .filter(|(_, g)| g.latencies.pending())
            .filter_map(|(key, g)| Some((key, g.latencies.percentiles.as_mut()?)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        record::read_complete_lines_upto(&path, end, |_, line_no, bytes| {
            // Read already as a whole `Line` by the first reading: only what the
            // percentiles need now.
            let line: LatencyLine =
                serde_json::from_slice(bytes).map_err(|e| RecordError::Foreign {
                    path: path.display().to_string(),
                    line: line_no,
                    reason: e.to_string(),
                })?;
            let Some(volley) = line.volley else {
                return Ok(());
            };
            let runs = info
                .experiments
                .iter()
                .find(|e| e.name == line.experiment)
                .map_or(0, |e| e.runs);
            if line.run >= runs {
                return Ok(());
            }
            let group = pending.iter_mut().find(|((e, d, m), _)| {
                *e == line.experiment && *d == line.dataset && *m == line.model
            });
            if let Some((_, selects)) = group {
                for select in selects.iter_mut() {
                    select.feed(volley.latency_ms);
                }
            }
            Ok(())
        })?;
        for (_, selects) in pending {
            for select in selects {
                select.end_pass().map_err(changed)?;
            }
        }
    }
}

/// What the percentiles' passes read of an answer's line.
#[derive(Deserialize)]
struct LatencyLine<'a> {
    #[serde(borrow)]
    experiment: Cow<'a, str>,
    #[serde(borrow)]
    dataset: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    run: u32,
    volley: Option<LineLatency>,
}

#[derive(Deserialize)]
struct LineLatency {
    latency_ms: f64,
}

/// (experiment, dataset) → its items' numbers in the order of their ids.
type ItemOrder = BTreeMap<(String, String), Vec<u32>>;

fn assemble(info: &RunInfo, groups: &mut BTreeMap<GroupKey, Group>, items: &ItemOrder) -> Scores {
    let mut results = Vec::new();
    let mut comparisons = Vec::new();
    for experiment in &info.experiments {
        for dataset in &experiment.datasets {
            let cells = dataset.rows * u64::from(experiment.runs);
            let order = items
                .get(&(experiment.name.clone(), dataset.name.clone()))
                .map_or(&[][..], Vec::as_slice);
            let key = |model: &str| {
                (
                    experiment.name.clone(),
                    dataset.name.clone(),
                    model.to_owned(),
                )
            };
            // The judges that graded any model of this experiment on this dataset, in
            // the order they first graded here.
            let judges: Vec<&JudgeInfo> = info
                .judges
                .iter()
                .filter(|j| {
                    experiment.models.iter().any(|m| {
                        groups
                            .get(&key(&m.name))
                            .is_some_and(|g| g.judged.contains_key(&j.id))
                    })
                })
                .collect();
            for model in &experiment.models {
                let group = groups.remove(&key(&model.name)).unwrap_or_default();
                let base = base_row(
                    experiment.name.clone(),
                    dataset.name.clone(),
                    model.name.clone(),
                    cells,
                    &group,
                );
                if judges.is_empty() {
                    results.push(base);
                    continue;
                }
                for judge in &judges {
                    let empty = Judged::default();
                    let judged = group.judged.get(&judge.id).unwrap_or(&empty);
                    results.push(judged_row(base.clone(), judge, judged, &group, order));
                }
                // Kept for the comparisons below.
                groups.insert(key(&model.name), group);
            }
            for judge in &judges {
                for (i, a) in experiment.models.iter().enumerate() {
                    for b in &experiment.models[i + 1..] {
                        let values = |m: &str| {
                            groups
                                .get(&key(m))
                                .and_then(|g| g.judged.get(&judge.id))
                                .map(|j| &j.values)
                        };
                        // Each item's runs where both have a value, in run order.
                        let both = values(&a.name).zip(values(&b.name));
                        let pairs = both.into_iter().flat_map(|(va, vb)| {
                            order.iter().map(move |&item| {
                                (0..va.runs.min(vb.runs)).filter_map(move |run| {
                                    Some((va.get(item, run)?, vb.get(item, run)?))
                                })
                            })
                        });
                        let seed = seed_of(&[
                            &experiment.name,
                            &dataset.name,
                            &judge.id,
                            &a.name,
                            &b.name,
                        ]);
                        comparisons.push(Comparison {
                            experiment: experiment.name.clone(),
                            dataset: dataset.name.clone(),
                            judge: judge.id.clone(),
                            a: a.name.clone(),
                            b: b.name.clone(),
                            paired: stats::paired_of(pairs, Bootstrap::with_seed(seed)),
                        });
                    }
                }
            }
        }
    }
    Scores {
        bootstrap: BootstrapInfo {
            resamples: stats::DEFAULT_RESAMPLES,
            level: stats::CONFIDENCE_LEVEL,
            base_seed: BASE_SEED,
            clustered_by: "item",
        },
        judges: info.judges.clone(),
        results,
        comparisons,
    }
}

fn base_row(
    experiment: String,
    dataset: String,
    model: String,
    cells: u64,
    group: &Group,
) -> ScoreRow {
    let finished = group.answered + group.answer_failed;
    ScoreRow {
        experiment,
        dataset,
        model,
        judge: None,
        judge_model: None,
        metric: None,
        score: None,
        runs: None,
        counts: Counts {
            cells,
            answered: group.answered,
            answer_failed: group.answer_failed,
            postprocess_failed: group.postprocess_failed,
            judged: 0,
            judge_failed: 0,
            unjudged: group.answered.saturating_sub(group.postprocess_failed),
            missing: cells.saturating_sub(finished),
        },
        tokens: group.spend.tokens,
        cost_usd: group.spend.cost(),
        latency_ms: group.latencies.latency(),
        judge_tokens: Tokens::default(),
        judge_cost_usd: None,
    }
}

/// `order`: the items' numbers in the order of their ids.
fn judged_row(
    mut row: ScoreRow,
    judge: &JudgeInfo,
    judged: &Judged,
    group: &Group,
    order: &[u32],
) -> ScoreRow {
    let values = &judged.values;
    let n_judged = values.count();
    let seed = seed_of(&[&row.experiment, &row.dataset, &judge.id, &row.model]);
    row.score = stats::bootstrap_mean_of(
        order.iter().map(|&item| values.values(item)),
        Bootstrap::with_seed(seed),
    );
    // Rows as long as the longest run with a value, as the spread counts runs.
    row.runs = values.last_run.and_then(|last| {
        stats::run_spread_of(
            order
                .iter()
                .map(|&item| (0..=last).map(move |run| values.get(item, run))),
        )
    });
    row.metric = Some(match judge.verdict {
        VerdictKind::Correct => "accuracy",
        VerdictKind::Score => "mean_score",
    });
    row.judge = Some(judge.id.clone());
    row.judge_model = Some(judge.model.clone());
    row.counts.judged = n_judged;
    row.counts.judge_failed = judged.failed;
    row.counts.unjudged = group
        .answered
        .saturating_sub(group.postprocess_failed + n_judged + judged.failed);
    row.judge_tokens = judged.spend.tokens;
    row.judge_cost_usd = judged.spend.cost();
    row
}

/// A seed for the interval about `parts`: the same parts, the same interval.
fn seed_of(parts: &[&str]) -> u64 {
    let mut h = StableHash::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    BASE_SEED ^ h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_numbered_once_and_ordered_by_id() {
        let mut items = Items::default();
        let ids = ["q10", "q2", "q1", "q2", "", "q10", "é"];
        let numbers: Vec<u32> = ids.iter().map(|id| items.number(id)).collect();
        assert_eq!(numbers, [0, 1, 2, 1, 3, 0, 4]);
        let ordered: Vec<&str> = items.in_order().iter().map(|&n| items.id(n)).collect();
        assert_eq!(ordered, ["", "q1", "q10", "q2", "é"]);
    }

    #[test]
    fn an_id_whose_hash_another_id_has_is_still_its_own_item() {
        let mut items = Items::default();
        assert_eq!(items.number("a"), 0);
        // "b" finds the slot of its hash taken by item 0, as a collision would.
        items.by_hash.insert_new(id_hash("b"), 0);
        assert_eq!(items.number("b"), 1);
        assert_eq!(items.number("b"), 1);
        assert_eq!(items.number("a"), 0);
        assert_eq!(items.id(1), "b");
        assert_eq!(items.in_order(), [0, 1]);
    }

    #[test]
    fn run_values_keep_the_last_value_of_each_run_past_the_codes() {
        let mut values = RunValues::default();
        values.set(1, 2, 3, 1.0);
        values.set(0, 0, 3, 0.0);
        values.set(0, 0, 3, -0.0);
        assert!(matches!(values.cells, Cells::Coded { .. }));
        assert_eq!(
            values.get(0, 0).map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert_eq!(values.get(0, 1), None);
        assert_eq!(values.get(5, 0), None);
        // More distinct values than a byte codes: kept whole, the earlier ones too.
        for item in 2..400 {
            values.set(item, 1, 3, f64::from(item) / 7.0);
        }
        assert!(matches!(values.cells, Cells::Whole(_)));
        assert_eq!(values.get(1, 2), Some(1.0));
        assert_eq!(values.get(399, 1), Some(399.0 / 7.0));
        assert_eq!(values.values(1).collect::<Vec<_>>(), [1.0]);
        assert_eq!(values.count(), 2 + 398);
        assert_eq!(values.last_run, Some(2));
    }
}
