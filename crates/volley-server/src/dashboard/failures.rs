//! The latest failed requests, for the dashboard's errors table: an [`Observer`] of the
//! engine's events that keeps short rings, so the page can say *why* requests fail
//! without anyone reading logs.
//!
//! One ring per tenant: a busy tenant's failures never push another's off its page.
//! A failure is put in its tenant's ring when its source is known to be the tenant's
//! (the board tells, each second, whose each listed source is: [`Failures::learn`]);
//! a failure of a source not known yet (a batch begun within the last second, a run's
//! input) waits in a ring of its own source, moved to its tenant's once the board
//! names it. The tenants are those of the tokens file, so the rings are few; the
//! sources waiting are at most [`WAITING`].
//!
//! It keeps only what the events carry: the reason code volley classified, the model,
//! the attempts and the time taken. No reply body or header is kept, so no key or
//! token can reach the page through it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use volley_core::engine::SourceId;
use volley_core::observe::events::{Event, Observer};
use volley_core::observe::sources::StatsBySource;

/// Failures kept per tenant (and per source not yet known): the page shows the latest
/// few, not a log.
pub const KEPT: usize = 20;

/// Sources whose tenant is not known yet kept at most: past it, the one whose latest
/// failure is oldest is forgotten.
pub const WAITING: usize = 256;

/// A custom_id is the client's text: only its start is kept.
const MAX_CUSTOM_ID: usize = 80;

/// One failed request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// Unix milliseconds.
    pub at: i64,
    /// Its source's name (a batch id, `proxy:{tenant}`), when it had one.
    pub source: Option<Arc<str>>,
    pub custom_id: String,
    /// volley's reason code (`rate_limited`, `server_error`, `invalid_request`, …).
    pub code: &'static str,
    pub model: Option<Arc<str>>,
    pub message: String,
}

/// Failures, oldest first, each with its place among all (`at` may tie).
type Ring = VecDeque<(u64, Failure)>;

#[derive(Debug, Default)]
struct Rings {
    /// Each tenant's latest failures, oldest first.
    tenants: HashMap<Arc<str>, Ring>,
    /// Failures of sources not known yet, by source name (`None`: no source).
    waiting: HashMap<Option<Arc<str>>, Ring>,
    /// Whose each source the board listed last is.
    owners: HashMap<Arc<str>, Arc<str>>,
    /// Failures seen so far: orders them.
    seen: u64,
}

/// The rings of the latest failures.
#[derive(Debug)]
pub struct Failures {
    /// Names a failure's source: the source is still open when its requests finish.
    stats: Arc<StatsBySource>,
    rings: Mutex<Rings>,
}

fn push(ring: &mut Ring, failure: (u64, Failure)) {
    if ring.len() == KEPT {
        ring.pop_front();
    }
    ring.push_back(failure);
}

impl Failures {
    /// `stats` must observe the same engine, ahead of this observer: a source is
    /// named from it.
    pub fn new(stats: Arc<StatsBySource>) -> Failures {
        Failures {
            stats,
            rings: Mutex::default(),
        }
    }

    /// Every ring's failures, newest first: each tenant's latest [`KEPT`], and those
    /// of sources not known yet.
    pub fn latest(&self) -> Vec<Failure> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&(u64, Failure)> = rings
            .tenants
            .values()
            .chain(rings.waiting.values())
            .flatten()
            .collect();
        all.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        all.into_iter().map(|(_, f)| f.clone()).collect()
    }

    /// Whose each source is, as the board lists them now (source name, tenant): a
    /// source's failures go to its tenant's ring from now on, those that waited too.
    pub fn learn(&self, owners: impl IntoIterator<Item = (Arc<str>, Arc<str>)>) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let rings = &mut *rings;
        rings.owners = owners.into_iter().collect();
        let known: Vec<Option<Arc<str>>> = rings
            .waiting
            .keys()
            .filter(|s| s.as_ref().is_some_and(|s| rings.owners.contains_key(s)))
            .cloned()
            .collect();
        for source in known {
            let (Some(name), Some(waited)) = (source.clone(), rings.waiting.remove(&source)) else {
                continue;
            };
            let tenant = rings.owners[&name].clone();
            let ring = rings.tenants.entry(tenant).or_default();
            let mut merged: Vec<(u64, Failure)> = ring.drain(..).chain(waited).collect();
            merged.sort_by_key(|(n, _)| *n);
            let skip = merged.len().saturating_sub(KEPT);
            ring.extend(merged.into_iter().skip(skip));
        }
    }

    fn push(&self, failure: Failure) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let rings = &mut *rings;
        rings.seen += 1;
        let tenant = failure
            .source
            .as_ref()
            .and_then(|s| rings.owners.get(s))
            .cloned();
        if let Some(tenant) = tenant {
            push(
                rings.tenants.entry(tenant).or_default(),
                (rings.seen, failure),
            );
            return;
        }
        let source = failure.source.clone();
        if !rings.waiting.contains_key(&source) && rings.waiting.len() >= WAITING {
            let stalest = rings
                .waiting
                .iter()
                .min_by_key(|(_, ring)| ring.back().map_or(0, |(n, _)| *n))
                .map(|(s, _)| s.clone());
            if let Some(stalest) = stalest {
                rings.waiting.remove(&stalest);
            }
        }
        let n = rings.seen;
        push(rings.waiting.entry(source).or_default(), (n, failure));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Observer for Failures {
    fn on_event(&self, source: Option<SourceId>, event: &Event) {
        let Event::RequestFinished {
            custom_id,
            ok: false,
            attempts,
            error,
            latency,
            model,
            ..
        } = event
        else {
            return;
        };
        let code = error.unwrap_or("failed");
        let plural = if *attempts == 1 { "" } else { "s" };
        self.push(Failure {
            at: now_ms(),
            source: source
                .and_then(|id| self.stats.source(id))
                .map(|s| s.name.clone()),
            custom_id: custom_id.chars().take(MAX_CUSTOM_ID).collect(),
            code,
            model: model.clone(),
            message: format!(
                "{code} after {attempts} attempt{plural} in {:.1} s",
                latency.as_secs_f64()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use volley_core::accounting::usage::Usage;

    fn finished(id: &str, ok: bool) -> Event {
        Event::RequestFinished {
            custom_id: Arc::from(id),
            ok,
            attempts: 3,
            error: (!ok).then_some("server_error"),
            latency: Duration::from_millis(1500),
            usage: Usage::default(),
            model: Some(Arc::from("m")),
        }
    }

    #[test]
    fn keeps_the_latest_failures_newest_first_with_their_source() {
        let stats = Arc::new(StatsBySource::new());
        let failures = Failures::new(stats.clone());
        let source = SourceId(7);
        let opened = Event::SourceOpened {
            name: Arc::from("batch_x"),
            priority: 0,
        };
        stats.on_event(Some(source), &opened);
        failures.on_event(Some(source), &finished("ok", true));
        for i in 0..KEPT + 5 {
            failures.on_event(Some(source), &finished(&format!("c{i}"), false));
        }
        let latest = failures.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest[0].custom_id, format!("c{}", KEPT + 4));
        assert_eq!(latest[KEPT - 1].custom_id, "c5");
        assert_eq!(latest[0].source.as_deref(), Some("batch_x"));
        assert_eq!(latest[0].code, "server_error");
        assert_eq!(latest[0].message, "server_error after 3 attempts in 1.5 s");
        failures.on_event(None, &finished(&"x".repeat(10_000), false));
        let long = &failures.latest()[0];
        assert_eq!((long.custom_id.len(), long.source.is_none()), (80, true));
    }

    #[test]
    fn a_busy_tenant_does_not_push_anothers_failures_off_its_ring() {
        let stats = Arc::new(StatsBySource::new());
        let failures = Failures::new(stats.clone());
        let open = |id: u64, name: &str| {
            stats.on_event(
                Some(SourceId(id)),
                &Event::SourceOpened {
                    name: Arc::from(name),
                    priority: 0,
                },
            );
        };
        open(1, "batch_bob");
        open(2, "batch_alice");
        open(3, "batch_new");
        // Bob's failures come before the board listed his batch: they wait, then move.
        for i in 0..3 {
            failures.on_event(Some(SourceId(1)), &finished(&format!("bob{i}"), false));
        }
        failures.learn([
            (Arc::from("batch_bob"), Arc::from("bob")),
            (Arc::from("batch_alice"), Arc::from("alice")),
        ]);
        for i in 0..1000 {
            failures.on_event(Some(SourceId(2)), &finished(&format!("alice{i}"), false));
        }
        // A batch the board has not listed yet: its own ring until it is.
        failures.on_event(Some(SourceId(3)), &finished("new0", false));
        let latest = failures.latest();
        let of = |name: &str| -> Vec<&str> {
            latest
                .iter()
                .filter(|f| f.source.as_deref() == Some(name))
                .map(|f| f.custom_id.as_str())
                .collect()
        };
        assert_eq!(of("batch_bob"), ["bob2", "bob1", "bob0"]);
        assert_eq!(of("batch_alice").len(), KEPT);
        assert_eq!(of("batch_alice")[0], "alice999");
        assert_eq!(latest[0].custom_id, "new0", "newest first");
        failures.learn([(Arc::from("batch_new"), Arc::from("bob"))]);
        let latest = failures.latest();
        assert_eq!(latest.len(), KEPT + 4);
        // Sources waiting are bounded: the stalest is forgotten.
        for i in 0..WAITING as u64 + 10 {
            open(100 + i, &format!("run{i}"));
            failures.on_event(Some(SourceId(100 + i)), &finished("x", false));
        }
        assert_eq!(failures.latest().len(), KEPT + 4 + WAITING);
    }
}
