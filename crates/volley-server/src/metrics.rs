//! `GET /metrics`: the engine's figures (every source together, as `volley run`
//! exposes them), then the gateway's own: each unfinished batch's progress, and per
//! tenant its batches by status and the requests, tokens and cost of its batches and
//! its proxied requests.
//!
//! Batch figures come from the store (they survive restarts and are exact); proxied
//! figures from the proxy's sources, since the gateway started.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use volley_core::observe::metrics::{self, CONTENT_TYPE, Exposition};

use crate::App;
use crate::error::ApiError;
use crate::rows::{BatchRow, TenantBatches};

/// What one tenant did, summed.
#[derive(Default)]
struct Totals {
    succeeded: f64,
    failed: f64,
    prompt_tokens: f64,
    completion_tokens: f64,
    cost: f64,
}

pub async fn scrape(State(app): State<App>) -> Result<impl IntoResponse, ApiError> {
    let (running, tenants) = app
        .db
        .read(|c| Ok((BatchRow::unfinished(c)?, TenantBatches::all(c)?)))
        .await?;
    let mut out = Exposition::after(metrics::render(app.stats.total(), false));

    out.family(
        "volley_batch_requests",
        "gauge",
        "Requests of each unfinished batch: its total, and those completed or failed so far.",
    );
    for b in &running {
        for (state, n) in [
            ("total", b.total),
            ("completed", b.completed),
            ("failed", b.failed),
        ] {
            out.sample(
                "volley_batch_requests",
                &[("batch", &b.id), ("tenant", &b.tenant), ("state", state)],
                n as f64,
            );
        }
    }
    out.family(
        "volley_tenant_batches",
        "gauge",
        "Batches of each tenant, by status.",
    );
    let mut by_tenant: BTreeMap<(String, &'static str), Totals> = BTreeMap::new();
    for t in &tenants {
        out.sample(
            "volley_tenant_batches",
            &[("tenant", &t.tenant), ("status", &t.status)],
            t.batches as f64,
        );
        let sum = by_tenant.entry((t.tenant.clone(), "batch")).or_default();
        sum.succeeded += t.completed as f64;
        sum.failed += t.failed as f64;
        sum.prompt_tokens += t.input_tokens as f64;
        sum.completion_tokens += t.output_tokens as f64;
        sum.cost += t.cost;
    }
    for (tenant, source) in app.proxy.sources() {
        let Some(stats) = app.stats.source(source.id()) else {
            continue;
        };
        let s = stats.stats.snapshot();
        let sum = by_tenant.entry((tenant.to_string(), "proxy")).or_default();
        sum.succeeded += s.succeeded as f64;
        sum.failed += s.failed as f64;
        sum.prompt_tokens += s.usage.prompt_tokens as f64;
        sum.completion_tokens += s.usage.completion_tokens as f64;
        sum.cost += s.usage.cost.unwrap_or(0.0);
    }
    type Figure = fn(&Totals) -> Vec<(&'static str, f64)>;
    let families: [(&str, &str, &str, Figure); 3] = [
        (
            "volley_tenant_requests_total",
            "Requests each tenant's batches (via=batch) and proxied calls (via=proxy) finished, by outcome.",
            "outcome",
            |t| vec![("succeeded", t.succeeded), ("failed", t.failed)],
        ),
        (
            "volley_tenant_tokens_total",
            "Tokens billed to each tenant's requests, failed attempts included.",
            "kind",
            |t| {
                vec![
                    ("prompt", t.prompt_tokens),
                    ("completion", t.completion_tokens),
                ]
            },
        ),
        (
            "volley_tenant_cost_usd_total",
            "USD reported for each tenant's requests (where the provider or --pricing said).",
            "",
            |t| vec![("", t.cost)],
        ),
    ];
    for (name, help, label, figures) in families {
        out.family(name, "counter", help);
        for ((tenant, via), totals) in &by_tenant {
            for (value_label, value) in figures(totals) {
                let mut labels = vec![("tenant", tenant.as_str()), ("via", *via)];
                if !label.is_empty() {
                    labels.push((label, value_label));
                }
                out.sample(name, &labels, value);
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], out.into_string()))
}
