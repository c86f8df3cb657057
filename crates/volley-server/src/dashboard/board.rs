//! The dashboard's one snapshot: once a second the board reads its feed's rows (the
//! gateway's batches and proxy, a run, an experiment's stages), the engine's figures,
//! the lanes and the latest failures, draws the charts, and keeps the result as JSON
//! bytes. Every open page polls that same snapshot, so the cost of the
//! dashboard does not grow with the requests the gateway serves or with its viewers:
//! one aggregation a second, and at most one serialization per tenant per second.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use volley_charts::{Bar, Series, bars, lines};
use volley_core::limits::lane::LaneView;
use volley_core::observe::stats::{LatencyBuckets, Snapshot};

use crate::auth::DEFAULT_TENANT;
use crate::dashboard::failures::{self, Failure};
use crate::rows::{BatchRow, Status};

/// How often the snapshot is rebuilt.
pub const TICK: Duration = Duration::from_secs(1);
/// How far back the throughput chart reaches.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Finished batches shown per tenant (running ones are always shown).
pub const RECENT_PER_TENANT: usize = 50;
/// Models shown by name, those of the most tokens: the rest are one row and one bar,
/// so a tenant sending thousands of model names cannot swell every page.
pub const MODELS_SHOWN: usize = 20;
/// Lanes shown, the busiest first: the rest are one row.
pub const LANES_SHOWN: usize = 50;

/// Latency buckets' upper bounds, in seconds: where a chat's latency usually falls.
const LATENCY_BOUNDS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// One second of the throughput chart.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Instant,
    completed: f64,
    rate_limited: f64,
}

/// A sample as the page gets it: `ago` seconds before the snapshot.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SamplePoint {
    pub ago: f64,
    /// Requests finished per second (either way).
    pub completed: f64,
    /// Attempts answered 429 per second.
    pub rate_limited: f64,
}

/// Per-second rates over the last [`WINDOW`], from the engine's running counters: each
/// sample is the counters' growth since the one before, over the time between them.
#[derive(Debug, Default)]
pub struct Samples {
    points: VecDeque<Sample>,
    /// The counters at the last sample: (when, finished, rate limited).
    last: Option<(Instant, u64, u64)>,
}

impl Samples {
    /// Records the counters as they are `now`.
    pub fn record(&mut self, now: Instant, finished: u64, rate_limited: u64) {
        if let Some((then, f, r)) = self.last {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            if secs <= 0.0 {
                return;
            }
            self.points.push_back(Sample {
                at: now,
                completed: finished.saturating_sub(f) as f64 / secs,
                rate_limited: rate_limited.saturating_sub(r) as f64 / secs,
            });
        }
        self.last = Some((now, finished, rate_limited));
        while self
            .points
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.at) > WINDOW)
        {
            self.points.pop_front();
        }
    }

    /// The samples, oldest first, as seen from `now`.
    pub fn points(&self, now: Instant) -> Vec<SamplePoint> {
        self.points
            .iter()
            .map(|p| SamplePoint {
                ago: now.saturating_duration_since(p.at).as_secs_f64(),
                completed: p.completed,
                rate_limited: p.rate_limited,
            })
            .collect()
    }
}

/// A source's counts, in the Batch API's `request_counts` shape.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

/// One row of the sources table: a batch, a tenant's proxied calls, a `volley run`, or
/// an experiment's stage.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRow {
    pub id: String,
    /// `batch`, `proxy`, `run`, `answers` or `judge`.
    pub kind: &'static str,
    /// A batch's status; `serving` for the proxy; `in_progress`, then `completed` or
    /// `stopped`, for a run or a stage.
    pub status: &'static str,
    pub request_counts: Counts,
    /// Unix seconds (batches only).
    pub created_at: Option<i64>,
    /// Attempts on the wire now.
    pub in_flight: u64,
    /// Requests finished per second since the source (re)started, while it runs.
    pub per_second: Option<f64>,
    /// Seconds left at that pace, while a batch runs and has a pace.
    pub eta_seconds: Option<f64>,
    /// Whether `POST /v1/batches/{id}/cancel` would cancel it.
    pub cancellable: bool,
    /// Whose it is: the page of another tenant never shows it.
    #[serde(skip)]
    pub tenant: Arc<str>,
}

impl SourceRow {
    /// A row whose counts are the engine's own figures for it (a proxy, a run, a
    /// stage): finished of `total`, its pace, and an ETA while it is `in_progress`.
    pub fn live(
        id: String,
        kind: &'static str,
        status: &'static str,
        total: u64,
        figures: &Snapshot,
        tenant: Arc<str>,
    ) -> SourceRow {
        let per_second = figures.throughput();
        let left = total.saturating_sub(figures.finished()) as f64;
        SourceRow {
            id,
            kind,
            status,
            request_counts: Counts {
                total: total as i64,
                completed: figures.succeeded as i64,
                failed: figures.failed as i64,
            },
            created_at: None,
            in_flight: figures.in_flight,
            per_second: Some(per_second),
            eta_seconds: (per_second > 0.0 && status == "in_progress")
                .then(|| (left / per_second).round()),
            cancellable: false,
            tenant,
        }
    }

    /// A tenant's proxied calls: every request it was handed so far is its total.
    pub fn proxy(tenant: Arc<str>, figures: &Snapshot) -> SourceRow {
        let total = figures.finished() + figures.pending;
        SourceRow::live(
            proxy_name(&tenant),
            "proxy",
            "serving",
            total,
            figures,
            tenant,
        )
    }
}

/// The engine as a whole, since it started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub in_flight: u64,
    /// The concurrency limit in force (the adaptive one once it moved).
    pub concurrency: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub attempts: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub tokens: u64,
    /// USD; `None` while no cost is known.
    pub cost: Option<f64>,
}

/// Tokens and cost of one model, since the gateway started.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost: Option<f64>,
}

/// The charts, as volley-charts draws them (`<figure id=…>` with an SVG).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Charts {
    pub throughput: String,
    pub latency: String,
    pub tokens: String,
    pub cost: String,
}

/// The whole snapshot.
#[derive(Debug, Default)]
pub struct State {
    /// Unix milliseconds when it was built.
    pub at: i64,
    /// Counts snapshots: the page shows a fresh one arrived.
    pub seq: u64,
    pub sources: Vec<SourceRow>,
    pub totals: Totals,
    pub samples: Vec<SamplePoint>,
    pub lanes: Vec<LaneView>,
    pub models: Vec<ModelRow>,
    pub errors: Vec<Failure>,
    pub charts: Charts,
    /// What a tenant of a gateway with tenants sees instead of `lanes`, `models` and
    /// `charts`: no model name (see [`State::names_models_for`]).
    pub unnamed: Unnamed,
}

/// The parts of the snapshot that would name models, without the names: the engine
/// counts models for every tenant together, so they would show one tenant another's.
#[derive(Debug, Default)]
pub struct Unnamed {
    /// The lanes labelled by their key alone (`key#1`, not `key#1/MODEL`).
    pub lanes: Vec<LaneView>,
    /// One row for all models together.
    pub models: Vec<ModelRow>,
    pub charts: Charts,
}

/// What one tenant's page gets: the snapshot with only that tenant's sources and
/// their failures.
#[derive(Serialize)]
struct View<'a> {
    at: i64,
    seq: u64,
    sources: Vec<&'a SourceRow>,
    totals: &'a Totals,
    samples: &'a [SamplePoint],
    lanes: &'a [LaneView],
    models: &'a [ModelRow],
    errors: Vec<&'a Failure>,
    charts: &'a Charts,
}

impl State {
    /// The snapshot as `tenant` may see it, as JSON.
    pub fn view_json(&self, tenant: &str) -> Vec<u8> {
        self.view(Some(tenant))
    }

    /// The whole snapshot, as JSON: the dashboard of a run, which has no tenants.
    pub fn all_json(&self) -> Vec<u8> {
        self.view(None)
    }

    /// Whether `tenant`'s page may name models (in the models table and charts, and in
    /// lane labels): only on a gateway of one tenant (no tokens file, or one token),
    /// where every model is its own. A tokens file's tenant other than `default` never
    /// sees them; its `default` tenant only while no other tenant has a source listed
    /// (a batch in the store, a proxy), so before any other tenant sent anything.
    pub fn names_models_for(&self, tenant: &str) -> bool {
        tenant == DEFAULT_TENANT && self.sources.iter().all(|s| &*s.tenant == tenant)
    }

    /// `tenant`'s sources and their failures, or everything.
    fn view(&self, tenant: Option<&str>) -> Vec<u8> {
        let sources: Vec<&SourceRow> = self
            .sources
            .iter()
            .filter(|s| tenant.is_none_or(|t| &*s.tenant == t))
            .collect();
        let visible: HashSet<&str> = sources.iter().map(|s| s.id.as_str()).collect();
        let named = tenant.is_none_or(|t| self.names_models_for(t));
        let (lanes, models, charts) = if named {
            (&self.lanes, &self.models, &self.charts)
        } else {
            let u = &self.unnamed;
            (&u.lanes, &u.models, &u.charts)
        };
        let view = View {
            at: self.at,
            seq: self.seq,
            totals: &self.totals,
            samples: &self.samples,
            lanes,
            models,
            errors: self
                .errors
                .iter()
                .filter(|e| {
                    tenant.is_none() || e.source.as_deref().is_some_and(|s| visible.contains(s))
                })
                .take(failures::KEPT)
                .collect(),
            charts,
            sources,
        };
        // Plain data: serializing it cannot fail.
        serde_json::to_vec(&view).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// A built snapshot and its JSON per tenant, made the first time a tenant asks.
#[derive(Debug, Default)]
pub struct Published {
    pub state: State,
    views: Mutex<HashMap<Arc<str>, Bytes>>,
    all: OnceLock<Bytes>,
}

impl Published {
    pub fn new(state: State) -> Published {
        Published {
            state,
            views: Mutex::default(),
            all: OnceLock::new(),
        }
    }

    /// The whole snapshot's JSON (a run's dashboard: no tenants).
    pub fn for_all(&self) -> Bytes {
        self.all
            .get_or_init(|| Bytes::from(self.state.all_json()))
            .clone()
    }

    /// The snapshot's JSON for `tenant`.
    pub fn for_tenant(&self, tenant: &Arc<str>) -> Bytes {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .entry(tenant.clone())
            .or_insert_with(|| Bytes::from(self.state.view_json(tenant)))
            .clone()
    }
}

/// The proxy's source name for a tenant, as the proxy opens it.
pub fn proxy_name(tenant: &str) -> String {
    format!("proxy:{tenant}")
}

/// Everything a snapshot is made of, read by the board's task.
pub struct Inputs {
    pub at: i64,
    pub seq: u64,
    /// The feed's rows, in the order shown.
    pub sources: Vec<SourceRow>,
    pub total: Snapshot,
    /// The configured concurrency limit.
    pub concurrency: Option<u64>,
    pub lanes: Vec<LaneView>,
    pub errors: Vec<Failure>,
    pub samples: Vec<SamplePoint>,
    pub latency: LatencyBuckets,
}

/// Merges the inputs into one snapshot and draws its charts.
pub fn build(inputs: Inputs) -> State {
    let Inputs {
        at,
        seq,
        sources,
        total,
        concurrency,
        lanes,
        errors,
        samples,
        latency,
    } = inputs;
    let mut models: Vec<ModelRow> = total
        .models
        .iter()
        .map(|(model, m)| ModelRow {
            model: model.clone(),
            requests: m.requests,
            tokens: m.usage.total_tokens,
            cost: m.usage.cost,
        })
        .collect();
    models.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(a.model.cmp(&b.model)));
    let all_models = (!models.is_empty())
        .then(|| summed("all models".into(), &models))
        .into_iter()
        .collect::<Vec<_>>();
    if models.len() > MODELS_SHOWN {
        let rest = models.split_off(MODELS_SHOWN);
        models.push(summed(format!("({} other models)", rest.len()), &rest));
    }
    let lanes = capped_lanes(lanes);
    let throughput = throughput_chart(&samples);
    let latency = latency_chart(&latency);
    let unnamed = Unnamed {
        lanes: lanes
            .iter()
            .map(|l| LaneView {
                label: match l.label.split_once('/') {
                    Some((key, _model)) => Arc::from(key),
                    None => l.label.clone(),
                },
                ..l.clone()
            })
            .collect(),
        charts: Charts {
            throughput: throughput.clone(),
            latency: latency.clone(),
            tokens: tokens_chart(&all_models),
            cost: cost_chart(&all_models),
        },
        models: all_models,
    };
    let charts = Charts {
        throughput,
        latency,
        tokens: tokens_chart(&models),
        cost: cost_chart(&models),
    };
    State {
        at,
        seq,
        totals: Totals {
            in_flight: total.in_flight,
            concurrency: total.concurrency.or(concurrency),
            succeeded: total.succeeded,
            failed: total.failed,
            attempts: total.attempts,
            rate_limited: total.rate_limited,
            retries: total.retries,
            tokens: total.usage.total_tokens,
            cost: total.usage.cost,
        },
        sources,
        samples,
        lanes,
        models,
        errors,
        charts,
        unnamed,
    }
}

/// `rows` as one: their requests and tokens summed, their cost too if each is known.
fn summed(model: String, rows: &[ModelRow]) -> ModelRow {
    ModelRow {
        model,
        requests: rows.iter().map(|m| m.requests).sum(),
        tokens: rows.iter().map(|m| m.tokens).sum(),
        cost: rows.iter().map(|m| m.cost).sum(),
    }
}

/// At most [`LANES_SHOWN`] lanes, in their order, and one row counting the rest (their
/// requests in flight summed). Those kept are the busiest, then those cooling down,
/// then the ready ones, the retired last.
fn capped_lanes(lanes: Vec<LaneView>) -> Vec<LaneView> {
    if lanes.len() <= LANES_SHOWN {
        return lanes;
    }
    let mut order: Vec<usize> = (0..lanes.len()).collect();
    order.sort_by_key(|&i| {
        let l = &lanes[i];
        (
            std::cmp::Reverse(l.in_flight),
            l.retired.is_some(),
            !l.paused,
            i,
        )
    });
    let mut kept = vec![false; lanes.len()];
    for &i in &order[..LANES_SHOWN] {
        kept[i] = true;
    }
    let mut shown = Vec::with_capacity(LANES_SHOWN + 1);
    let (mut others, mut in_flight) = (0, 0);
    for (lane, kept) in lanes.into_iter().zip(kept) {
        if kept {
            shown.push(lane);
        } else {
            others += 1;
            in_flight += lane.in_flight;
        }
    }
    shown.push(LaneView {
        label: Arc::from(format!("({others} other lanes)")),
        requests_per_minute: None,
        tokens_per_minute: None,
        remaining_requests: None,
        remaining_tokens: None,
        paused: false,
        retired: None,
        in_flight,
    });
    shown
}

fn tokens_chart(models: &[ModelRow]) -> String {
    bars(
        "tokens",
        "Tokens per model",
        &models
            .iter()
            .map(|m| Bar::new(&m.model, m.tokens as f64, grouped(m.tokens)))
            .collect::<Vec<_>>(),
    )
}

fn cost_chart(models: &[ModelRow]) -> String {
    bars(
        "cost",
        "Cost per model (USD)",
        &models
            .iter()
            .map(|m| match m.cost {
                Some(cost) => Bar::new(&m.model, cost, format!("${cost:.4}")),
                // Said, rather than left out: a model missing from the chart
                // would look free.
                None => Bar::new(&m.model, 0.0, "unknown"),
            })
            .collect::<Vec<_>>(),
    )
}

/// A batch's row: its counts from the store (exact, and all there is once it ended),
/// its pace and requests in flight from its live figures while it runs.
pub fn batch_row(row: BatchRow, live: &HashMap<Arc<str>, Snapshot>) -> SourceRow {
    let running = !row.status.is_terminal();
    let figures = live.get(row.id.as_str()).filter(|_| running);
    let per_second = figures.map(Snapshot::throughput);
    let left = row.total.saturating_sub(row.completed + row.failed).max(0) as f64;
    let eta_seconds = per_second
        .filter(|r| *r > 0.0 && matches!(row.status, Status::InProgress))
        .map(|r| (left / r).round());
    SourceRow {
        kind: "batch",
        status: row.status.as_str(),
        request_counts: Counts {
            total: row.total,
            completed: row.completed,
            failed: row.failed,
        },
        created_at: Some(row.created_at),
        in_flight: figures.map_or(0, |s| s.in_flight),
        per_second,
        eta_seconds,
        cancellable: matches!(row.status, Status::Validating | Status::InProgress),
        tenant: Arc::from(row.tenant.as_str()),
        id: row.id,
    }
}

fn throughput_chart(samples: &[SamplePoint]) -> String {
    let oldest = samples.first().map_or(0.0, |s| s.ago);
    let series = |f: fn(&SamplePoint) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (oldest - s.ago, f(s))).collect()
    };
    lines(
        "throughput",
        "Requests finished and 429s per second, last 5 minutes",
        &[
            Series {
                name: "finished",
                class: "line",
                points: series(|s| s.completed),
            },
            Series {
                name: "429s",
                class: "line-failed",
                points: series(|s| s.rate_limited),
            },
        ],
        "seconds",
        "per second",
    )
}

/// Request latencies by bucket (not cumulative), since the gateway started.
fn latency_chart(buckets: &LatencyBuckets) -> String {
    let mut below = 0;
    let mut items: Vec<Bar> = Vec::new();
    for (bound, cumulative) in &buckets.cumulative {
        let n = cumulative.saturating_sub(below);
        below = *cumulative;
        items.push(Bar::new(
            format!("≤ {}", seconds_label(*bound)),
            n as f64,
            grouped(n),
        ));
    }
    let last = LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1];
    let over = buckets.count.saturating_sub(below);
    items.push(Bar::new(
        format!("> {}", seconds_label(last)),
        over as f64,
        grouped(over),
    ));
    // Empty buckets below the fastest request and above the slowest say nothing.
    let first = items
        .iter()
        .position(|b| b.value > 0.0)
        .unwrap_or(items.len());
    let last = items
        .iter()
        .rposition(|b| b.value > 0.0)
        .map_or(0, |i| i + 1);
    let shown = items.get(first..last).unwrap_or_default();
    bars("latency", "Request latency (retries included)", shown)
}

/// The bounds the latency chart counts by.
pub fn latency_bounds() -> &'static [f64] {
    &LATENCY_BOUNDS
}

fn seconds_label(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s} s")
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_core::observe::stats::RunStats;

    #[tokio::test(start_paused = true)]
    async fn samples_are_rates_per_second_over_the_last_five_minutes() {
        let mut samples = Samples::default();
        let start = Instant::now();
        samples.record(start, 0, 0);
        assert!(samples.points(start).is_empty(), "one reading is no rate");
        tokio::time::advance(Duration::from_secs(2)).await;
        samples.record(Instant::now(), 10, 4);
        let points = samples.points(Instant::now());
        assert_eq!(
            points,
            vec![SamplePoint {
                ago: 0.0,
                completed: 5.0,
                rate_limited: 2.0
            }]
        );
        // The same instant again adds nothing (no division by zero).
        samples.record(Instant::now(), 20, 4);
        assert_eq!(samples.points(Instant::now()).len(), 1);
        for i in 1..=400u64 {
            tokio::time::advance(TICK).await;
            samples.record(Instant::now(), 10 + i, 4);
        }
        let points = samples.points(Instant::now());
        assert_eq!(points.len(), WINDOW.as_secs() as usize + 1);
        assert!(points.iter().all(|p| p.ago <= WINDOW.as_secs_f64()));
        assert!(
            points
                .iter()
                .all(|p| p.completed == 1.0 && p.rate_limited == 0.0)
        );
        // Counters that go back (a restarted source) give zero, not a huge rate.
        tokio::time::advance(TICK).await;
        samples.record(Instant::now(), 0, 0);
        assert_eq!(
            samples.points(Instant::now()).last().unwrap().completed,
            0.0
        );
    }

    fn batch(id: &str, tenant: &str, status: Status, counts: (i64, i64, i64)) -> BatchRow {
        BatchRow {
            id: id.into(),
            tenant: tenant.into(),
            input_file_id: "file-x".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            status,
            ending: None,
            created_at: 1,
            expires_at: 2,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            output_file_id: None,
            error_file_id: None,
            errors: vec![],
            metadata: None,
            model: None,
            max_cost: None,
            total: counts.0,
            completed: counts.1,
            failed: counts.2,
            input_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            cost: 0.0,
            cost_known: true,
        }
    }

    fn inputs(rows: Vec<BatchRow>, errors: Vec<Failure>) -> Inputs {
        let stats = RunStats::new();
        let mut sources: Vec<SourceRow> = rows
            .into_iter()
            .map(|row| batch_row(row, &HashMap::new()))
            .collect();
        sources.push(SourceRow::proxy(Arc::from("alice"), &stats.snapshot()));
        Inputs {
            at: 5,
            seq: 1,
            sources,
            latency: stats.latency_buckets(latency_bounds()),
            total: stats.snapshot(),
            concurrency: Some(16),
            lanes: vec![],
            errors,
            samples: vec![],
        }
    }

    fn failure(source: &str) -> Failure {
        Failure {
            at: 0,
            source: Some(Arc::from(source)),
            custom_id: "c".into(),
            code: "server_error",
            model: None,
            message: "m".into(),
        }
    }

    #[test]
    fn a_tenant_sees_its_own_sources_and_their_failures_only() {
        let state = build(inputs(
            vec![
                batch("batch_a", "alice", Status::InProgress, (10, 3, 1)),
                batch("batch_b", "bob", Status::Completed, (5, 5, 0)),
            ],
            vec![
                failure("batch_a"),
                failure("batch_b"),
                failure("proxy:alice"),
            ],
        ));
        let view =
            |t: &str| -> serde_json::Value { serde_json::from_slice(&state.view_json(t)).unwrap() };
        let alice = view("alice");
        let ids: Vec<&str> = alice["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["batch_a", "proxy:alice"]);
        assert_eq!(alice["errors"].as_array().unwrap().len(), 2);
        assert_eq!(
            alice["sources"][0]["request_counts"],
            serde_json::json!({"total": 10, "completed": 3, "failed": 1})
        );
        assert_eq!(alice["sources"][0]["cancellable"], true);
        assert!(alice["sources"][0].get("tenant").is_none());
        let bob = view("bob");
        assert_eq!(bob["sources"].as_array().unwrap().len(), 1);
        assert_eq!(bob["sources"][0]["cancellable"], false);
        assert_eq!(bob["errors"].as_array().unwrap().len(), 1);
        assert_eq!(view("carol")["sources"], serde_json::json!([]));
        assert_eq!(alice["totals"]["concurrency"], 16);
        for chart in ["throughput", "latency", "tokens", "cost"] {
            let svg = alice["charts"][chart].as_str().unwrap();
            assert!(svg.starts_with(&format!("<figure id=\"{chart}\"")), "{svg}");
        }
    }

    #[test]
    fn a_running_batch_has_a_pace_and_an_eta() {
        let stats = RunStats::new();
        let live = HashMap::from([(Arc::from("batch_a"), stats.snapshot())]);
        let row = batch_row(
            batch("batch_a", "t", Status::InProgress, (100, 40, 0)),
            &live,
        );
        // Nothing finished in this process yet: no pace, so no ETA.
        assert_eq!((row.per_second, row.eta_seconds), (Some(0.0), None));
    }

    fn finished(stats: &RunStats, ok: bool) {
        use volley_core::observe::events::{Event, Observer};
        stats.on_event(
            None,
            &Event::RequestFinished {
                custom_id: Arc::from("x"),
                ok,
                attempts: 1,
                error: (!ok).then_some("server_error"),
                latency: Duration::from_millis(5),
                usage: Default::default(),
                model: None,
            },
        );
    }

    #[test]
    fn a_run_row_counts_the_engines_figures_against_its_total() {
        let stats = RunStats::new();
        for ok in [true, true, true, false] {
            finished(&stats, ok);
        }
        let figures = stats.snapshot();
        let row = SourceRow::live("run".into(), "run", "in_progress", 10, &figures, "".into());
        assert_eq!(
            row.request_counts,
            Counts {
                total: 10,
                completed: 3,
                failed: 1
            }
        );
        assert!(!row.cancellable);
        // A pace, if any time passed, gives an ETA while it runs and none once ended.
        if row.per_second.is_some_and(|r| r > 0.0) {
            assert!(row.eta_seconds.is_some());
        }
        let ended = SourceRow::live("run".into(), "run", "completed", 4, &figures, "".into());
        assert_eq!(ended.eta_seconds, None);
    }

    #[test]
    fn a_run_dashboard_shows_every_row_and_every_failure() {
        let stats = RunStats::new();
        let mut i = inputs(vec![], vec![failure("batch.jsonl"), failure("x/judge")]);
        i.sources = vec![
            SourceRow::live(
                "x".into(),
                "answers",
                "in_progress",
                5,
                &stats.snapshot(),
                "".into(),
            ),
            SourceRow::live(
                "x/judge".into(),
                "judge",
                "stopped",
                0,
                &stats.snapshot(),
                "".into(),
            ),
        ];
        let all: serde_json::Value =
            serde_json::from_slice(&Published::new(build(i)).for_all()).unwrap();
        let ids: Vec<&str> = all["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["x", "x/judge"]);
        assert_eq!(all["sources"][1]["kind"], "judge");
        assert_eq!(all["sources"][1]["status"], "stopped");
        // A run's failures are named by its input, not by the row: all are shown.
        assert_eq!(all["errors"].as_array().unwrap().len(), 2);
        assert_eq!(all["totals"]["concurrency"], 16);
    }

    #[tokio::test]
    async fn the_store_lists_each_tenants_latest_batches_and_every_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.sqlite")).unwrap();
        let mut rows = vec![batch(
            "batch_old_running",
            "alice",
            Status::InProgress,
            (1, 0, 0),
        )];
        rows.extend((0..RECENT_PER_TENANT + 10).map(|i| {
            batch(
                &format!("batch_a{i:03}"),
                "alice",
                Status::Completed,
                (1, 1, 0),
            )
        }));
        rows.push(batch("batch_b", "bob", Status::Failed, (1, 0, 1)));
        db.write(move |c| rows.iter().try_for_each(|r| r.insert(c)))
            .await
            .unwrap();
        let listed = db
            .read(|c| BatchRow::recent(c, RECENT_PER_TENANT))
            .await
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), RECENT_PER_TENANT + 2, "{ids:?}");
        assert_eq!(ids[0], "batch_b", "newest first");
        assert_eq!(ids[1], format!("batch_a{:03}", RECENT_PER_TENANT + 9));
        assert_eq!(ids[RECENT_PER_TENANT], "batch_a010");
        assert_eq!(ids[RECENT_PER_TENANT + 1], "batch_old_running");
    }

    fn used(stats: &RunStats, model: &str, tokens: u64) {
        use volley_core::observe::events::{Event, Observer};
        stats.on_event(
            None,
            &Event::RequestFinished {
                custom_id: Arc::from("x"),
                ok: true,
                attempts: 1,
                error: None,
                latency: Duration::from_millis(5),
                usage: volley_core::accounting::usage::Usage {
                    total_tokens: tokens,
                    cost: Some(0.001),
                    ..Default::default()
                },
                model: Some(Arc::from(model)),
            },
        );
    }

    fn lane(label: String, in_flight: usize) -> LaneView {
        LaneView {
            label: Arc::from(label),
            requests_per_minute: Some(100),
            tokens_per_minute: None,
            remaining_requests: None,
            remaining_tokens: None,
            paused: false,
            retired: None,
            in_flight,
        }
    }

    #[test]
    fn models_and_lanes_are_capped_and_a_tenant_sees_no_model_name() {
        let stats = RunStats::new();
        // Alice's secret model, the busiest, and 3,000 names someone sent.
        used(&stats, "ft:gpt-4o:alice-corp:secret", 1_000_000);
        for i in 0..3000u64 {
            used(&stats, &format!("junk-{i:04}"), 10 + i);
        }
        let mut i = inputs(
            vec![
                batch("batch_a", "alice", Status::InProgress, (10, 3, 1)),
                batch("batch_b", "bob", Status::Completed, (5, 5, 0)),
            ],
            vec![],
        );
        i.total = stats.snapshot();
        // 120 lanes of key and model; the busiest ones last.
        i.lanes = (0..120)
            .map(|n| {
                let model = if n == 119 {
                    "ft:gpt-4o:alice-corp:secret".to_string()
                } else {
                    format!("junk-{n:04}")
                };
                lane(format!("key#{}/{model}", n % 3 + 1), usize::from(n >= 100))
            })
            .collect();
        let started = std::time::Instant::now();
        let published = Published::new(build(i));
        let built = started.elapsed();
        let all: serde_json::Value = serde_json::from_slice(&published.for_all()).unwrap();
        let models = all["models"].as_array().unwrap();
        assert_eq!(models.len(), MODELS_SHOWN + 1);
        assert_eq!(models[0]["model"], "ft:gpt-4o:alice-corp:secret");
        assert_eq!(models[MODELS_SHOWN]["model"], "(2981 other models)");
        assert_eq!(models[MODELS_SHOWN]["requests"], 2981);
        let lanes = all["lanes"].as_array().unwrap();
        assert_eq!(lanes.len(), LANES_SHOWN + 1);
        // The 20 busy ones are kept, in their order; the rest counted.
        assert_eq!(
            lanes[LANES_SHOWN - 1]["label"],
            "key#3/ft:gpt-4o:alice-corp:secret"
        );
        assert_eq!(lanes[0]["label"], "key#1/junk-0000");
        assert_eq!(lanes[LANES_SHOWN]["label"], "(70 other lanes)");
        let tokens_bars = all["charts"]["tokens"].as_str().unwrap();
        assert!(!tokens_bars.contains("junk-2999"), "capped chart");
        let all_bytes = published.for_all().len();
        assert!(all_bytes < 100_000, "{all_bytes} bytes");
        assert!(built < Duration::from_secs(2), "{built:?}");

        // Tenants see no model name anywhere: not in models, charts or lane labels.
        for tenant in ["alice", "bob", "default"] {
            let view = published.for_tenant(&Arc::from(tenant));
            let text = std::str::from_utf8(&view).unwrap();
            assert!(
                !text.contains("alice-corp") && !text.contains("junk-"),
                "{tenant}: {text}"
            );
            let v: serde_json::Value = serde_json::from_slice(&view).unwrap();
            assert_eq!(v["models"].as_array().unwrap().len(), 1);
            assert_eq!(v["models"][0]["model"], "all models");
            assert_eq!(v["models"][0]["requests"], 3001);
            assert_eq!(v["lanes"][0]["label"], "key#1");
            assert_eq!(v["lanes"].as_array().unwrap().len(), LANES_SHOWN + 1);
        }
        // A gateway of one tenant (no tokens file, or one token) names them as before.
        let mut one = inputs(
            vec![batch(
                "batch_d",
                DEFAULT_TENANT,
                Status::Completed,
                (1, 1, 0),
            )],
            vec![],
        );
        one.sources.retain(|s| &*s.tenant == DEFAULT_TENANT);
        one.total = stats.snapshot();
        one.lanes = vec![lane("key#1/m".into(), 0)];
        let state = build(one);
        let v: serde_json::Value =
            serde_json::from_slice(&state.view_json(DEFAULT_TENANT)).unwrap();
        assert_eq!(v["models"][0]["model"], "ft:gpt-4o:alice-corp:secret");
        assert_eq!(v["lanes"][0]["label"], "key#1/m");
    }

    #[test]
    fn a_tenant_sees_at_most_its_latest_failures() {
        let failures: Vec<Failure> = (0..failures::KEPT + 5)
            .map(|_| failure("batch_a"))
            .collect();
        let state = build(inputs(
            vec![batch("batch_a", "alice", Status::InProgress, (10, 3, 1))],
            failures,
        ));
        let v: serde_json::Value = serde_json::from_slice(&state.view_json("alice")).unwrap();
        assert_eq!(v["errors"].as_array().unwrap().len(), failures::KEPT);
    }

    #[test]
    fn latency_buckets_are_not_cumulative() {
        let chart = latency_chart(&LatencyBuckets {
            cumulative: LATENCY_BOUNDS
                .iter()
                .map(|b| (*b, if *b >= 1.0 { 3 } else { 1 }))
                .collect(),
            count: 4,
            sum_seconds: 1.0,
        });
        assert!(chart.contains("≤ 100 ms: 1"), "{chart}");
        assert!(chart.contains("≤ 1 s: 2"), "{chart}");
        assert!(chart.contains("&gt; 300 s: 1"), "{chart}");
        let fast = latency_chart(&LatencyBuckets {
            cumulative: LATENCY_BOUNDS
                .iter()
                .map(|b| (*b, u64::from(*b >= 0.5)))
                .collect(),
            count: 1,
            sum_seconds: 0.3,
        });
        assert!(fast.contains("≤ 500 ms: 1"), "{fast}");
        assert!(
            !fast.contains("≤ 250 ms") && !fast.contains("≤ 1 s"),
            "{fast}"
        );
        let none = latency_chart(&LatencyBuckets {
            cumulative: LATENCY_BOUNDS.iter().map(|b| (*b, 0)).collect(),
            count: 0,
            sum_seconds: 0.0,
        });
        assert!(none.contains("nothing to show"), "{none}");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }
}
