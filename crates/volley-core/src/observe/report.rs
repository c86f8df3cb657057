//! The final report of a run (`--report FILE.json`, `volley report`), one schema for
//! both: built from the event stream while running, or recomputed from RESULTS and
//! ERRORS alone for any past run. The schema is documented in `docs/report.md`.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::accounting::usage::Usage;
use crate::input::ids::{IdMap, id_hash};
use crate::input::lines::Lines;
use crate::observe::stats::{ModelStats, NO_MODEL, Percentiles, Snapshot};

/// The error code of a line that was not a valid request (counted apart from failures).
const INVALID_INPUT: &str = "invalid_input";

/// Bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Request counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests this run set out to send (for a report from files: lines found).
    pub total: u64,
    pub succeeded: u64,
    /// Failed for good (in ERRORS), invalid input excluded.
    pub failed: u64,
    pub invalid_input: u64,
    /// Skipped because an earlier run had finished them.
    pub already_done: u64,
    /// Left for a re-run (interrupted, cost cap, no key left).
    pub not_finished: u64,
}

/// A key that left the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredKey {
    pub key: String,
    pub reason: String,
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// `run` (from the live event stream) or `files` (recomputed by `volley report`).
    pub source: String,
    pub wall_seconds: f64,
    pub requests: Counts,
    /// Finished requests per second of wall time.
    pub throughput_per_second: f64,
    pub attempts: u64,
    pub retries: u64,
    /// Retries by reason (empty for a report from files: they do not record it).
    pub retries_by_reason: BTreeMap<String, u64>,
    /// Attempts answered 429 (run only).
    pub rate_limited: u64,
    /// Request-seconds spent waiting for a rate limit or a key's pause (run only).
    pub throttled_seconds: f64,
    /// Number of attempts → requests that took that many.
    pub attempts_histogram: BTreeMap<u32, u64>,
    /// Per request, first send to result.
    pub latency_ms: Percentiles,
    /// Tokens and cost over every attempt; `usage.cost` is null when unknown.
    pub usage: Usage,
    pub models: BTreeMap<String, ModelStats>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub keys_retired: Vec<RetiredKey>,
    pub stop_reason: Option<String>,
}

impl Report {
    /// The report of a live run.
    pub fn from_snapshot(s: &Snapshot) -> Report {
        let finished = s.finished() - s.invalid;
        Report {
            schema_version: SCHEMA_VERSION,
            source: "run".into(),
            wall_seconds: s.elapsed.as_secs_f64(),
            requests: Counts {
                total: s.total,
                succeeded: s.succeeded,
                failed: s.failed - s.invalid,
                invalid_input: s.invalid,
                already_done: s.already_done,
                not_finished: s.total.saturating_sub(finished),
            },
            throughput_per_second: s.throughput(),
            attempts: s.attempts,
            retries: s.retries,
            retries_by_reason: s
                .retries_by_reason
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            rate_limited: s.rate_limited,
            throttled_seconds: s.throttled.as_secs_f64(),
            attempts_histogram: s.attempts_histogram.clone(),
            latency_ms: s.latency_ms,
            usage: s.usage,
            models: s.models.clone(),
            errors_by_code: s
                .errors_by_code
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            keys_retired: s
                .keys_retired
                .iter()
                .map(|(key, reason)| RetiredKey {
                    key: key.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            stop_reason: s.stop_reason.clone(),
        }
    }
}

/// Why a report could not be recomputed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not an output line of volley: {reason}")]
    Line {
        path: String,
        line: u64,
        reason: String,
    },
}

/// One finished request, as the output files record it: only what the report needs,
/// with model names and error codes shared, so that a file of a million lines fits in
/// a few hundred bytes a line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finished {
    pub ok: bool,
    /// Unix seconds.
    pub finished_at: f64,
    pub latency_ms: f64,
    pub attempts: u32,
    pub model: Arc<str>,
    pub usage: Usage,
    pub error_code: Option<Arc<str>>,
}

/// One shared copy of each distinct string (model names, error codes).
#[derive(Debug, Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.0.insert(shared.clone());
        shared
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    /// Required, so that a line of some other JSONL is refused; only its hash is kept.
    #[serde(borrow)]
    custom_id: Cow<'a, str>,
    /// The record's own id: for an `invalid_input` record, `vol-input-N` names its line.
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    response: Option<ResponsePart>,
    #[serde(default)]
    error: Option<ErrorPart>,
    volley: VolleyPart,
}

#[derive(Deserialize)]
struct ResponsePart {
    #[serde(default)]
    body: serde_json::Value,
}

#[derive(Deserialize)]
struct ErrorPart {
    code: String,
}

#[derive(Deserialize)]
struct VolleyPart {
    attempts: u32,
    latency_ms: f64,
    usage: Usage,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    finished_at: Option<f64>,
}

/// What the output files hold.
#[derive(Debug, Default)]
pub struct FinishedFiles {
    /// Every finished request, in the order they finished.
    pub finished: Vec<Finished>,
    /// `file:line` of each last line torn by a crash mid-write (no newline, not
    /// JSON), left out: the next `volley run` repairs it and sends that request again.
    pub torn: Vec<String>,
}

/// Hashes (see [`id_hash`]) of what names a request → its place in
/// [`FinishedFiles::finished`].
type IdIndex = IdMap<usize>;

/// Which requests were already counted, so that each counts once, as a live run counts
/// it, with only a hash kept per request. Files can hold an id twice: a crash during
/// `--retry-failed` leaves an old error beside its new success, and a file appended to
/// by hand (or by two runs before runs were locked) repeats lines.
#[derive(Default)]
struct Seen {
    /// RESULTS by custom_id; the last line of an id wins.
    succeeded: IdIndex,
    /// ERRORS failures by custom_id; the last line wins, and an id in RESULTS is left
    /// out: it succeeded after failing.
    failed: IdIndex,
    /// ERRORS `invalid_input` records by record id (`vol-input-N`): they are per input
    /// line, not per custom_id, so RESULTS never hides one (a line's fallback id `line-N`
    /// can be another line's real custom_id).
    invalid: IdIndex,
}

impl Seen {
    /// Files `finished` unless its request was counted already, then it replaces that.
    fn place(&mut self, line: &Line<'_>, finished: Finished, out: &mut Vec<Finished>) {
        let invalid = !finished.ok && finished.error_code.as_deref() == Some(INVALID_INPUT);
        let (index, key) = if invalid {
            match &line.id {
                Some(record) => (&mut self.invalid, id_hash(record)),
                // A record with no id of its own cannot be told from another: count it.
                None => return out.push(finished),
            }
        } else {
            let request = id_hash(&line.custom_id);
            if finished.ok {
                (&mut self.succeeded, request)
            } else if self.succeeded.contains_key(&request) {
                return;
            } else {
                (&mut self.failed, request)
            }
        };
        match index.entry(key) {
            Entry::Occupied(at) => out[*at.get()] = finished,
            Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(finished);
            }
        }
    }
}

/// Reads the finished requests of RESULTS (and ERRORS, if given), each request once:
/// RESULTS wins over ERRORS, and within a file an id's last line wins.
pub fn read_finished(results: &Path, errors: Option<&Path>) -> Result<FinishedFiles, ReportError> {
    let mut out = FinishedFiles::default();
    let mut strings = Interner::default();
    let mut seen = Seen::default();
    // RESULTS first, so that an error of an id that later succeeded is known as such.
    read_file(results, true, &mut out, &mut strings, &mut seen)?;
    if let Some(errors) = errors {
        read_file(errors, false, &mut out, &mut strings, &mut seen)?;
    }
    out.finished
        .sort_by(|a, b| a.finished_at.total_cmp(&b.finished_at));
    Ok(out)
}

fn read_file(
    path: &Path,
    ok: bool,
    out: &mut FinishedFiles,
    strings: &mut Interner,
    seen: &mut Seen,
) -> Result<(), ReportError> {
    let shown = || path.display().to_string();
    let io = |source| ReportError::Io {
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut lines = Lines::new(file);
    while let Some(read) = lines.next_line().map_err(io)? {
        let number = read.number;
        if read.is_blank() {
            continue;
        }
        let parsed: Line = match serde_json::from_slice(read.bytes) {
            Ok(parsed) => parsed,
            // Only the very last line can be torn, and a torn line has no newline and
            // is not JSON (a complete JSON line of the wrong shape is someone else's).
            Err(_)
                if !read.terminated
                    && serde_json::from_slice::<serde::de::IgnoredAny>(read.bytes).is_err() =>
            {
                out.torn.push(format!("{}:{number}", shown()));
                return Ok(());
            }
            Err(e) => {
                return Err(ReportError::Line {
                    path: shown(),
                    line: number,
                    reason: e.to_string(),
                });
            }
        };
        // The model asked for, as a live run files it (and as pricing looks it up);
        // the model that answered only when the line names none.
        let served = || {
            parsed
                .response
                .as_ref()
                .and_then(|r| r.body.get("model"))
                .and_then(|m| m.as_str())
        };
        let model = parsed
            .volley
            .model
            .as_deref()
            .or_else(served)
            .unwrap_or(NO_MODEL);
        let finished = Finished {
            ok,
            finished_at: parsed.volley.finished_at.unwrap_or(0.0),
            latency_ms: parsed.volley.latency_ms,
            attempts: parsed.volley.attempts,
            model: strings.get(model),
            usage: parsed.volley.usage,
            error_code: parsed.error.as_ref().map(|e| strings.get(&e.code)),
        };
        seen.place(&parsed, finished, &mut out.finished);
    }
    Ok(())
}

/// Recomputes a report from finished requests (see [`read_finished`]).
pub fn from_finished(finished: &[Finished]) -> Report {
    let mut latency = Histogram::<u64>::new_with_bounds(1, super::stats::LATENCY_MAX_US, 3)
        .expect("static bounds");
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        source: "files".into(),
        wall_seconds: 0.0,
        requests: Counts::default(),
        throughput_per_second: 0.0,
        attempts: 0,
        retries: 0,
        retries_by_reason: BTreeMap::new(),
        rate_limited: 0,
        throttled_seconds: 0.0,
        attempts_histogram: BTreeMap::new(),
        latency_ms: Percentiles::default(),
        usage: Usage::default(),
        models: BTreeMap::new(),
        errors_by_code: BTreeMap::new(),
        keys_retired: Vec::new(),
        stop_reason: None,
    };
    for f in finished {
        let invalid = f.error_code.as_deref() == Some(INVALID_INPUT);
        report.requests.total += 1;
        match (f.ok, invalid) {
            (true, _) => report.requests.succeeded += 1,
            (false, true) => report.requests.invalid_input += 1,
            (false, false) => report.requests.failed += 1,
        }
        if let Some(code) = &f.error_code {
            *report.errors_by_code.entry(code.to_string()).or_default() += 1;
        }
        if invalid {
            continue;
        }
        report.attempts += u64::from(f.attempts);
        report.retries += u64::from(f.attempts.saturating_sub(1));
        *report.attempts_histogram.entry(f.attempts).or_default() += 1;
        let _ =
            latency.record(((f.latency_ms * 1000.0) as u64).clamp(1, super::stats::LATENCY_MAX_US));
        report.usage.add(&f.usage);
        let m = report.models.entry(f.model.to_string()).or_default();
        m.requests += 1;
        m.attempts += u64::from(f.attempts);
        if f.ok {
            m.succeeded += 1;
        } else {
            m.failed += 1;
        }
        m.usage.add(&f.usage);
    }
    let times: Vec<f64> = finished
        .iter()
        .map(|f| f.finished_at)
        .filter(|t| *t > 0.0)
        .collect();
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        // From the first request's start (its finish less its latency) to the last finish.
        let start = finished
            .iter()
            .filter(|f| f.finished_at > 0.0)
            .map(|f| f.finished_at - f.latency_ms / 1000.0)
            .fold(*first, f64::min);
        report.wall_seconds = (last - start).max(0.0);
    }
    let done = report.requests.succeeded + report.requests.failed;
    if report.wall_seconds > 0.0 {
        report.throughput_per_second = done as f64 / report.wall_seconds;
    }
    if !latency.is_empty() {
        let q = |p: f64| latency.value_at_quantile(p) as f64 / 1000.0;
        report.latency_ms = Percentiles {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: latency.max() as f64 / 1000.0,
        };
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recomputed_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        let errors = dir.path().join("e.jsonl");
        let line = |id: &str, at: f64, attempts: u32, tokens: u64, model: &str| {
            format!(
                "{{\"id\":\"v\",\"custom_id\":\"{id}\",\"response\":{{\"status_code\":200,\"request_id\":\"\",\"body\":{{\"model\":\"{model}\"}}}},\"error\":null,\"volley\":{{\"attempts\":{attempts},\"latency_ms\":100.0,\"usage\":{{\"prompt_tokens\":{tokens},\"completion_tokens\":0,\"total_tokens\":{tokens},\"cost\":0.5}},\"cost\":0.5,\"key\":\"key#1\",\"model\":\"asked\",\"finished_at\":{at}}}}}\n"
            )
        };
        std::fs::write(
            &results,
            line("a", 1000.0, 1, 10, "m1") + &line("b", 1002.0, 3, 30, "m2"),
        )
        .unwrap();
        std::fs::write(
            &errors,
            "{\"id\":\"v\",\"custom_id\":\"c\",\"response\":null,\"error\":{\"code\":\"invalid_input\",\"message\":\"x\"},\"volley\":{\"attempts\":0,\"latency_ms\":0,\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0},\"cost\":null,\"key\":null}}\n",
        )
        .unwrap();
        let files = read_finished(&results, Some(&errors)).unwrap();
        assert!(files.torn.is_empty());
        let r = from_finished(&files.finished);
        assert_eq!(
            (
                r.requests.total,
                r.requests.succeeded,
                r.requests.invalid_input
            ),
            (3, 2, 1)
        );
        assert_eq!((r.attempts, r.retries), (4, 2));
        assert_eq!(r.usage.total_tokens, 40);
        assert_eq!(r.usage.cost, Some(1.0));
        assert_eq!(
            r.models["asked"].usage.total_tokens, 40,
            "filed under the model asked for, as a live run files it"
        );
        assert!((r.wall_seconds - 2.1).abs() < 1e-9, "{}", r.wall_seconds);
        assert_eq!(r.attempts_histogram[&3], 1);
        assert_eq!(r.errors_by_code["invalid_input"], 1);
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        let good = "{\"custom_id\":\"a\",\"volley\":{\"attempts\":1,\"latency_ms\":5.0,\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}}\n";
        std::fs::write(&results, format!("{good}{{\"custom_id\":\"b\",\"vol")).unwrap();
        let files = read_finished(&results, None).unwrap();
        assert_eq!(files.finished.len(), 1);
        assert_eq!(files.torn.len(), 1);
        assert!(files.torn[0].ends_with("r.jsonl:2"), "{:?}", files.torn);
        // The same garbage with a newline is no crash's doing: an error.
        std::fs::write(
            &results,
            format!("{good}{{\"custom_id\":\"b\",\"vol\n{good}"),
        )
        .unwrap();
        let err = read_finished(&results, None).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:2"), "{err}");
    }

    /// An output line of `custom_id` with `attempts` (to tell lines apart), failed with
    /// `code` if given, recorded as `record`.
    fn output_line(record: &str, custom_id: &str, attempts: u32, code: Option<&str>) -> String {
        let error = code.map_or("null".to_string(), |c| {
            format!("{{\"code\":\"{c}\",\"message\":\"x\"}}")
        });
        format!(
            "{{\"id\":\"{record}\",\"custom_id\":\"{custom_id}\",\"response\":null,\"error\":{error},\"volley\":{{\"attempts\":{attempts},\"latency_ms\":1.0,\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":0,\"total_tokens\":1}}}}}}\n"
        )
    }

    #[test]
    fn each_request_counts_once_results_winning_and_the_last_line_within_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        let errors = dir.path().join("e.jsonl");
        std::fs::write(
            &results,
            [
                output_line("v1", "a", 1, None),
                output_line("v2", "b", 1, None),
                output_line("v3", "a", 3, None),
                output_line("v4", "line-2", 1, None),
            ]
            .concat(),
        )
        .unwrap();
        std::fs::write(
            &errors,
            [
                // Failed, then succeeded in a --retry-failed run that crashed before
                // ERRORS was compacted.
                output_line("v5", "b", 6, Some("server_error")),
                output_line("v6", "c", 2, Some("server_error")),
                output_line("v7", "c", 4, Some("server_error")),
                // Line 2 was invalid; its fallback id is also line 4's real custom_id.
                output_line("vol-input-2", "line-2", 0, Some("invalid_input")),
                // Two invalid lines that share a custom_id are two lines.
                output_line("vol-input-5", "d", 0, Some("invalid_input")),
                output_line("vol-input-6", "d", 0, Some("invalid_input")),
                output_line("vol-input-6", "d", 0, Some("invalid_input")),
            ]
            .concat(),
        )
        .unwrap();
        let files = read_finished(&results, Some(&errors)).unwrap();
        let r = from_finished(&files.finished);
        let c = &r.requests;
        assert_eq!(
            (c.total, c.succeeded, c.failed, c.invalid_input),
            (7, 3, 1, 3),
            "{c:?}"
        );
        // a's last line (3 attempts) and c's (4) are the ones counted.
        assert_eq!(r.attempts, 3 + 1 + 1 + 4);
        assert_eq!(r.errors_by_code["server_error"], 1);
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        std::fs::write(&results, "{\"custom_id\":\"a\"}\n").unwrap();
        let err = read_finished(&results, None).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:1"), "{err}");
    }
}
