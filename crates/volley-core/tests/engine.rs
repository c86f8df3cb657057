//! The engine as a library (SPEC §13): several sources on one engine, against a real
//! `volley mock` on a loopback port. Rates are real time, so every bound is two-sided
//! and generous: each says what the engine must do and what it cannot beat.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use volley_core::engine::{
    Engine, EngineConfig, INTERACTIVE_PRIORITY, Source, SourceSpec, StopReason, Ticket,
};
use volley_core::input::batch::{LineDefaults, parse_line};
use volley_core::input::job::Job;
use volley_core::limits::lanes::LaneLayout;
use volley_core::observe::events::EventBus;
use volley_core::provider::transport::ApiKey;
use volley_core::provider::upstream::{Upstream, UpstreamSpec};
use volley_core::store::{Outcome, Store};
use volley_mock::{LimitShape, MockConfig, MockServer};

async fn mock(config: MockConfig) -> MockServer {
    MockServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the mock starts on a free port")
}

/// An engine on `mock` with `keys` keys, each paced at `rpm` per minute when given.
fn engine(mock: &MockServer, keys: usize, rpm: Option<u64>, concurrency: usize) -> Engine {
    let config = EngineConfig {
        concurrency,
        grace: Duration::from_millis(500),
        ..EngineConfig::default()
    };
    let keys = (0..keys)
        .map(|i| ApiKey::new(format!("sk-test-engine-key-{i:04}")).unwrap())
        .collect();
    let spec = UpstreamSpec {
        rpm,
        ..UpstreamSpec::new(&mock.base_url(), keys)
    };
    let upstream = Upstream::new(spec, concurrency).unwrap();
    Engine::new(config, vec![upstream], EventBus::default())
}

fn job(id: &str) -> Job {
    let line = format!(
        r#"{{"custom_id":"{id}","body":{{"model":"m","messages":[{{"role":"user","content":"hi {id}"}}],"max_tokens":8}}}}"#
    );
    parse_line(&line, 1, &LineDefaults::default()).unwrap()
}

/// Keeps what a source finished, to compare with its counts and tickets.
#[derive(Default)]
struct Kept(Mutex<Vec<Outcome>>);

impl Store for Kept {
    fn record(&self, outcome: &Outcome) -> bool {
        self.0.lock().unwrap().push(outcome.clone());
        true
    }
}

impl Kept {
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.custom_id.to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// Submits `n` jobs named `prefix-i` on a task of its own; returns their tickets.
fn feed(
    engine: &Engine,
    source: &Source,
    prefix: &str,
    n: usize,
) -> tokio::task::JoinHandle<Vec<Ticket>> {
    let (engine, source, prefix) = (engine.clone(), source.clone(), prefix.to_string());
    tokio::spawn(async move {
        let mut tickets = Vec::new();
        for i in 0..n {
            match engine
                .submit(&source, job(&format!("{prefix}-{i:05}")))
                .await
            {
                Ok(ticket) => tickets.push(ticket),
                Err(_) => break,
            }
        }
        tickets
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_share_the_keys_limits_and_both_finish() {
    // A bucket of 20 per key refilled at 10 a second (600 a minute), announced in no
    // header: volley knows only what it is told, 570 a minute, a little under. Were
    // each source paced on its own, the keys would see twice that.
    let server = mock(MockConfig {
        rpm: Some(20),
        window: Duration::from_secs(2),
        limit_shape: LimitShape::Bucket,
        hide_limits: true,
        ..MockConfig::default()
    })
    .await;
    let engine = engine(&server, 2, Some(570), 16);
    let (kept_a, kept_b) = (Arc::new(Kept::default()), Arc::new(Kept::default()));
    let a = engine.open(SourceSpec {
        store: kept_a.clone(),
        ..SourceSpec::new("a")
    });
    let b = engine.open(SourceSpec {
        store: kept_b.clone(),
        ..SourceSpec::new("b")
    });
    let started = Instant::now();
    let (fa, fb) = (feed(&engine, &a, "a", 60), feed(&engine, &b, "b", 60));
    let (ta, tb) = (fa.await.unwrap(), fb.await.unwrap());
    assert_eq!(
        (a.finish().await, b.finish().await),
        (StopReason::Completed, StopReason::Completed)
    );
    let elapsed = started.elapsed();
    for tickets in [ta, tb] {
        for ticket in tickets {
            let outcome = ticket.await.expect("every request ends");
            assert_eq!(outcome.response.unwrap().status, 200);
            assert!(outcome.error.is_none());
        }
    }
    assert_eq!(kept_a.ids().len(), 60);
    assert!(kept_b.ids().iter().all(|id| id.starts_with("b-")));
    assert_eq!(a.counts().succeeded, 60);
    assert_eq!(b.counts().succeeded, 60);
    // 120 requests on two keys at 9.5 a second each: about 6.3 s, never much less.
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(20),
        "{elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!(stats["requests"], 120, "{stats}");
    for key in stats["by_key"].as_object().unwrap().values() {
        assert_eq!(key["rate_limited"], 0, "the keys' limits held: {stats}");
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_source_is_not_starved_by_a_big_one() {
    let server = mock(MockConfig::default()).await;
    let engine = engine(&server, 1, Some(600), 64);
    let big = engine.open(SourceSpec::new("big"));
    let small = engine.open(SourceSpec::new("small"));
    let started = Instant::now();
    let _big_feed = feed(&engine, &big, "big", 10_000);
    let small_feed = feed(&engine, &small, "small", 100);
    let tickets = small_feed.await.unwrap();
    assert_eq!(small.finish().await, StopReason::Completed);
    let elapsed = started.elapsed();
    assert_eq!(tickets.len(), 100);
    assert_eq!(small.counts().succeeded, 100);
    // Half of 600 a minute: 100 requests in 20 s. All of it would be 10 s; behind the
    // big source, 1,000 s.
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(30),
        "{elapsed:?}"
    );
    // Places free at the start go to whoever asks first, so the small source may take
    // most of the first 128; from then on the two alternate. The big one went on.
    let big_done = big.counts().succeeded;
    assert!(
        (20..=160).contains(&big_done),
        "the big source kept going: {big_done} in {elapsed:?}"
    );
    big.cancel();
    assert_eq!(big.finish().await, StopReason::Interrupted);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_source_goes_ahead_of_queued_requests() {
    let server = mock(MockConfig::default()).await;
    let engine = engine(&server, 1, Some(600), 64);
    let batch = engine.open(SourceSpec::new("batch"));
    let _feed = feed(&engine, &batch, "batch", 10_000);
    // Let the batch fill every place: 128 admitted, queued at 10 a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(engine.in_flight() >= 100, "{}", engine.in_flight());
    let proxy = engine.open(SourceSpec {
        priority: INTERACTIVE_PRIORITY,
        ..SourceSpec::new("proxy")
    });
    let started = Instant::now();
    let tickets = feed(&engine, &proxy, "proxy", 5).await.unwrap();
    for ticket in tickets {
        assert_eq!(ticket.await.unwrap().response.unwrap().status, 200);
    }
    let elapsed = started.elapsed();
    // Five requests at 10 a second, the batch keeping a tenth: about half a second.
    // Behind the batch's queue they would take over 12 s.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_secs(4),
        "{elapsed:?}"
    );
    let before = batch.counts().succeeded;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(batch.counts().succeeded > before, "the batch goes on");
    engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(batch.finish().await, StopReason::Interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_source_leaves_the_other_to_finish() {
    let server = mock(MockConfig {
        latency_ms: 200,
        ..MockConfig::default()
    })
    .await;
    let engine = engine(&server, 1, None, 8);
    let kept_a = Arc::new(Kept::default());
    let a = engine.open(SourceSpec {
        store: kept_a.clone(),
        ..SourceSpec::new("a")
    });
    let b = engine.open(SourceSpec::new("b"));
    let fa = feed(&engine, &a, "a", 200);
    let fb = feed(&engine, &b, "b", 40);
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.cancel();
    assert_eq!(a.finish().await, StopReason::Interrupted);
    let (ta, tb) = (fa.await.unwrap(), fb.await.unwrap());
    assert_eq!(b.finish().await, StopReason::Completed);
    assert_eq!(b.counts().succeeded, 40);
    for ticket in tb {
        assert!(ticket.await.is_ok());
    }
    let counts = a.counts();
    assert!(counts.succeeded > 0 && counts.succeeded < 200, "{counts:?}");
    assert_eq!(
        counts.submitted,
        counts.succeeded + counts.failed + counts.abandoned,
        "every admitted request is accounted for: {counts:?}"
    );
    // Tickets resolve to what the store kept, and nothing else.
    let mut finished = Vec::new();
    for ticket in ta {
        if let Ok(outcome) = ticket.await {
            finished.push(outcome.custom_id.to_string());
        }
    }
    finished.sort();
    assert_eq!(finished, kept_a.ids());
    assert_eq!(finished.len() as u64, counts.succeeded);
    // A stopped source admits nothing more; the job comes back. Nor does a finished one.
    let refused = engine.submit(&a, job("late")).await.unwrap_err();
    assert_eq!(&*refused.0.custom_id, "late");
    assert!(engine.submit(&b, job("after-finish")).await.is_err());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_dropped_before_sending_is_given_back() {
    let server = mock(MockConfig::default()).await;
    // One request a second.
    let engine = engine(&server, 1, Some(60), 4);
    let a = engine.open(SourceSpec::new("a"));
    let b = engine.open(SourceSpec::new("b"));
    let started = Instant::now();
    let first = engine.submit(&a, job("a-1")).await.unwrap();
    first.await.unwrap();
    // Booked for the next second, and waiting for it.
    let second = engine.submit(&a, job("a-2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.cancel();
    assert!(second.await.is_err(), "cancelled before it was sent");
    let third = engine.submit(&b, job("b-1")).await.unwrap();
    third.await.unwrap();
    let elapsed = started.elapsed();
    // b-1 takes the second a-2 gave back; had it been kept, b-1 would wait for 2 s.
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(1700),
        "{elapsed:?}"
    );
    assert_eq!(server.stats()["requests"], 2);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_its_grace_then_leaves_the_rest_unfinished() {
    let server = mock(MockConfig {
        hang_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let engine = engine(&server, 1, None, 4);
    let source = engine.open(SourceSpec::new("hung"));
    let tickets = feed(&engine, &source, "hung", 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    engine.shutdown(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    for ticket in tickets {
        assert!(ticket.await.is_err());
    }
    assert_eq!(source.finish().await, StopReason::Interrupted);
    assert_eq!(source.counts().abandoned, 3);
    assert_eq!(engine.in_flight(), 0);
}

fn job_for(id: &str, model: &str, upstream: usize) -> Job {
    let line = format!(
        r#"{{"custom_id":"{id}","body":{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":8}}}}"#
    );
    let mut job = parse_line(&line, 1, &LineDefaults::default()).unwrap();
    job.upstream = upstream;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_in_one_engine_each_laid_out_as_it_limits() {
    // Both: a bucket of 20 refilled at 10 a second, announced in no header. The first
    // counts per key; the second per key and model.
    let limited = |per_model| MockConfig {
        rpm: Some(20),
        window: Duration::from_secs(2),
        limit_shape: LimitShape::Bucket,
        hide_limits: true,
        limit_per_model: per_model,
        ..MockConfig::default()
    };
    let (first, second) = (mock(limited(false)).await, mock(limited(true)).await);
    let key = |s: &str| vec![ApiKey::new(s.to_string()).unwrap()];
    let upstreams = vec![
        Upstream::new(
            UpstreamSpec {
                rpm: Some(570),
                lanes: LaneLayout::PerKey,
                ..UpstreamSpec::new(&first.base_url(), key("sk-first-provider-aaaa"))
            },
            16,
        )
        .unwrap(),
        Upstream::new(
            UpstreamSpec {
                name: "second".into(),
                rpm: Some(570),
                lanes: LaneLayout::PerKeyModel,
                ..UpstreamSpec::new(&second.base_url(), key("sk-second-provider-bbbb"))
            },
            16,
        )
        .unwrap(),
    ];
    let engine = Engine::new(EngineConfig::default(), upstreams, EventBus::default());
    let source = engine.open(SourceSpec::new("both"));
    let started = Instant::now();
    let mut tickets = Vec::new();
    for i in 0..60 {
        for (model, upstream) in [("m", 0), ("m1", 1), ("m2", 1)] {
            let job = job_for(&format!("{model}-{i}"), model, upstream);
            tickets.push(engine.submit(&source, job).await.unwrap());
        }
    }
    for ticket in tickets {
        assert_eq!(ticket.await.unwrap().response.unwrap().status, 200);
    }
    let elapsed = started.elapsed();
    assert_eq!(source.finish().await, StopReason::Completed);
    // Three lanes of 60 requests at 9.5 a second side by side: about 5.5 s. Had the
    // second provider's two models shared one lane, 120 on it would take 12 s.
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(9),
        "{elapsed:?}"
    );
    let mut labels: Vec<String> = engine.upstreams()[1]
        .lanes
        .lanes()
        .iter()
        .map(|l| l.label.to_string())
        .collect();
    // Lanes appear in the order requests first reach them.
    labels.sort();
    assert_eq!(labels, ["second:key#1/m1", "second:key#1/m2"]);
    let (a, b) = (first.stats(), second.stats());
    assert_eq!(
        (a["requests"].as_u64(), b["requests"].as_u64()),
        (Some(60), Some(120))
    );
    assert_eq!(a["by_key"]["aaaa"]["rate_limited"], 0, "{a}");
    for book in ["bbbb/m1", "bbbb/m2"] {
        assert_eq!(b["by_key"][book]["rate_limited"], 0, "{b}");
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_lane_rotates_its_keys_and_holds_one_limit() {
    // OpenRouter-like: extra keys add no capacity. Three keys in one account lane at
    // 600 a minute send at 600 a minute in all, each key taking its turn.
    let server = mock(MockConfig::default()).await;
    let keys = (0..3)
        .map(|i| ApiKey::new(format!("sk-account-key-{i:04}")).unwrap())
        .collect();
    let upstream = Upstream::new(
        UpstreamSpec {
            rpm: Some(600),
            lanes: LaneLayout::PerAccount,
            ..UpstreamSpec::new(&server.base_url(), keys)
        },
        16,
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::default(), vec![upstream], EventBus::default());
    let source = engine.open(SourceSpec::new("account"));
    let started = Instant::now();
    let tickets = feed(&engine, &source, "acct", 40).await.unwrap();
    for ticket in tickets {
        ticket.await.unwrap();
    }
    let elapsed = started.elapsed();
    // 40 at 10 a second after a burst of 10: about 3 s (three per-key lanes: 1 s).
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    let stats = server.stats();
    for key in ["0000", "0001", "0002"] {
        let sent = stats["by_key"][key]["requests"].as_u64().unwrap_or(0);
        assert!((12..=15).contains(&sent), "keys take turns: {stats}");
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_its_own_grace_even_when_longer_than_the_engines() {
    let server = mock(MockConfig {
        latency_ms: 800,
        ..MockConfig::default()
    })
    .await;
    // The engine's grace (after a source's own cancel) is 500 ms; shutdown gives 3 s.
    let engine = engine(&server, 1, None, 4);
    let source = engine.open(SourceSpec::new("slow"));
    let tickets = feed(&engine, &source, "slow", 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.shutdown(Duration::from_secs(3)).await;
    for ticket in tickets {
        assert_eq!(ticket.await.unwrap().response.unwrap().status, 200);
    }
    assert_eq!(source.counts().succeeded, 3);
}

#[test]
fn an_upstreams_extra_headers_are_secrets_too() {
    let mut headers = http::HeaderMap::new();
    headers.insert("api-key", "azure-secret-value-0123456789".parse().unwrap());
    let spec = UpstreamSpec {
        headers,
        ..UpstreamSpec::new(
            "http://127.0.0.1:9/v1",
            vec![ApiKey::new("sk-upstream-key-abcdefgh".into()).unwrap()],
        )
    };
    let upstream = Upstream::new(spec, 4).unwrap();
    assert!(!format!("{upstream:?}").contains("azure-secret-value"));
    let reply = volley_core::provider::transport::Reply {
        status: 401,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(
            b"{\"error\":\"bad api-key azure-secret-value-0123456789 for sk-upstream-key-abcdefgh\"}",
        ),
    };
    let body = String::from_utf8(upstream.redact(reply).body.to_vec()).unwrap();
    assert!(!body.contains("azure-secret-value"), "{body}");
    assert!(!body.contains("sk-upstream-key"), "{body}");
    assert!(
        body.contains("header:api-key") && body.contains("key#1"),
        "{body}"
    );
}
