//! Scores computed from a run directory's files alone, so that `report` recomputes
//! exactly what the run wrote: every map is ordered and every sum taken in file order,
//! and each interval's seed is derived from what it is about.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use volley_core::accounting::usage::Usage;
use volley_core::input::ids::StableHash;

use super::stats::{self, Bootstrap, Estimate, Paired, RunSpread};
use crate::plan::VerdictKind;
use crate::record::{self, ANSWERS, Cell, ERRORS, JUDGEMENTS, RecordError, Stage};
use crate::run_info::{self, JudgeInfo, RunInfo};

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
    latencies: Vec<f64>,
    /// By judge: item → value per run, and the judge's spend and failures.
    judged: BTreeMap<String, Judged>,
}

#[derive(Default)]
struct Judged {
    items: BTreeMap<String, Vec<Option<f64>>>,
    failed: u64,
    spend: Spend,
}

/// Computes the scores of the run directory `dir` from its files.
pub fn compute(dir: &Path) -> Result<Scores, RecordError> {
    let info = run_info::read(dir)?.ok_or_else(|| RecordError::Io {
        path: dir.join(run_info::RUN_INFO).display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a run directory"),
    })?;
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for name in [ANSWERS, ERRORS, JUDGEMENTS] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        record::read_complete_lines(&path, |_, line_no, bytes| {
            let line: Line = serde_json::from_slice(bytes).map_err(|e| RecordError::Foreign {
                path: path.display().to_string(),
                line: line_no,
                reason: e.to_string(),
            })?;
            // Lines of runs the plan no longer has (its `runs` lowered since) are not
            // part of the scores.
            let runs = info
                .experiments
                .iter()
                .find(|e| *e.name == *line.cell.experiment)
                .map_or(0, |e| e.runs);
            if line.cell.run >= runs {
                return Ok(());
            }
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
                        group.latencies.push(v.latency_ms);
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
                            let runs = judged.items.entry(line.cell.item.to_string()).or_default();
                            let run = line.cell.run as usize;
                            if runs.len() <= run {
                                runs.resize(run + 1, None);
                            }
                            runs[run] = Some(value);
                        }
                        None => judged.failed += 1,
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(assemble(&info, &mut groups))
}

fn assemble(info: &RunInfo, groups: &mut BTreeMap<GroupKey, Group>) -> Scores {
    let mut results = Vec::new();
    let mut comparisons = Vec::new();
    for experiment in &info.experiments {
        for dataset in &experiment.datasets {
            let cells = dataset.rows * u64::from(experiment.runs);
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
                    results.push(judged_row(base.clone(), judge, judged, &group));
                }
                // Kept for the comparisons below.
                groups.insert(key(&model.name), group);
            }
            for judge in &judges {
                for (i, a) in experiment.models.iter().enumerate() {
                    for b in &experiment.models[i + 1..] {
                        let items = |m: &str| {
                            groups
                                .get(&key(m))
                                .and_then(|g| g.judged.get(&judge.id))
                                .map(|j| &j.items)
                        };
                        let pairs: Vec<Vec<(f64, f64)>> = match (items(&a.name), items(&b.name)) {
                            (Some(ia), Some(ib)) => ia
                                .iter()
                                .filter_map(|(item, ra)| {
                                    ib.get(item).map(|rb| stats::pair_by_run(ra, rb))
                                })
                                .collect(),
                            _ => Vec::new(),
                        };
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
                            paired: stats::paired(&pairs, Bootstrap::with_seed(seed)),
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
        latency_ms: latency(&group.latencies),
        judge_tokens: Tokens::default(),
        judge_cost_usd: None,
    }
}

fn judged_row(mut row: ScoreRow, judge: &JudgeInfo, judged: &Judged, group: &Group) -> ScoreRow {
    let values: Vec<Vec<f64>> = judged
        .items
        .values()
        .map(|runs| runs.iter().flatten().copied().collect())
        .collect();
    let n_judged: u64 = values.iter().map(|v| v.len() as u64).sum();
    let seed = seed_of(&[&row.experiment, &row.dataset, &judge.id, &row.model]);
    let runs: Vec<&Vec<Option<f64>>> = judged.items.values().collect();
    row.score = stats::bootstrap_mean(&values, Bootstrap::with_seed(seed));
    row.runs = stats::run_spread(&runs);
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

fn latency(values: &[f64]) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Some(Latency {
        mean: values.iter().sum::<f64>() / values.len() as f64,
        p50: at(0.5),
        p95: at(0.95),
        max: sorted[sorted.len() - 1],
    })
}
