//! An OpenAI-compatible simulator for tests, benchmarks and dry runs.
//!
//! It answers `POST /v1/chat/completions` and `POST /v1/embeddings` with deterministic
//! replies and real `usage` counts, enforces per-key requests- and tokens-per-minute
//! limits over a sliding 60 s window (429 with `retry-after` and `x-ratelimit-*`
//! headers, as OpenAI sends them), injects faults at configured rates, and keeps a
//! ledger of what it billed (`GET /mock/stats`). It must never be the bottleneck of a
//! benchmark: one short lock per request, no per-request logging.

mod config;
mod faults;
mod ledger;
mod reply;
mod server;

pub use config::MockConfig;
pub use server::{MockError, MockServer, app};
