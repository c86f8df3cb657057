//! Two sources on one engine: a big batch and a small one share one key's limit fairly,
//! then a request a client waits on goes ahead of both. Runs against an in-process
//! `volley mock`, so it needs no key:
//!
//!     cargo run -p volley-core --example two_sources

use std::time::Duration;

use tokio::time::Instant;
use volley_core::engine::{Engine, EngineConfig, INTERACTIVE_PRIORITY, SourceSpec};
use volley_core::input::batch::{LineDefaults, parse_line};
use volley_core::input::job::Job;
use volley_core::observe::events::EventBus;
use volley_core::provider::transport::ApiKey;
use volley_core::provider::upstream::{Upstream, UpstreamSpec};
use volley_mock::{MockConfig, MockServer};

fn job(id: &str) -> Job {
    let line = format!(r#"{{"custom_id":"{id}","prompt":"say hi","model":"m"}}"#);
    parse_line(&line, 1, &LineDefaults::default()).expect("a valid line")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockServer::start(MockConfig::default(), "127.0.0.1:0".parse()?).await?;
    // One key, paced at 600 requests a minute.
    let key = ApiKey::new("sk-example-key-0001".into()).ok_or("a key fit for a header")?;
    let upstream = Upstream::new(
        UpstreamSpec {
            rpm: Some(600),
            ..UpstreamSpec::new(&mock.base_url(), vec![key])
        },
        64,
    )?;
    let engine = Engine::new(EngineConfig::default(), vec![upstream], EventBus::default());

    let big = engine.open(SourceSpec::new("big batch"));
    let small = engine.open(SourceSpec::new("small batch"));
    let started = Instant::now();
    let feeder = {
        let (engine, big) = (engine.clone(), big.clone());
        tokio::spawn(async move {
            for i in 0..1_000 {
                if engine.submit(&big, job(&format!("big-{i}"))).await.is_err() {
                    break; // the source stopped
                }
            }
        })
    };
    let mut tickets = Vec::new();
    for i in 0..30 {
        tickets.push(engine.submit(&small, job(&format!("small-{i}"))).await?);
    }
    for ticket in tickets {
        let outcome = ticket.await?;
        assert!(outcome.error.is_none());
    }
    println!(
        "small batch: 30 requests in {:.1} s beside a 1,000-request one ({} of it done)",
        started.elapsed().as_secs_f64(),
        big.counts().succeeded
    );

    // A request a client waits on: admitted ahead of the big batch's queue.
    let proxy = engine.open(SourceSpec {
        priority: INTERACTIVE_PRIORITY,
        ..SourceSpec::new("proxy")
    });
    let asked = Instant::now();
    let outcome = engine.submit(&proxy, job("interactive")).await?.await?;
    println!(
        "interactive request: HTTP {} after {:.2} s, {} attempt(s)",
        outcome.response.map_or(0, |r| r.status),
        asked.elapsed().as_secs_f64(),
        outcome.attempts
    );

    big.cancel();
    println!("big batch: {:?}, {:?}", big.finish().await, big.counts());
    engine.shutdown(Duration::from_secs(1)).await;
    feeder.abort();
    Ok(())
}
