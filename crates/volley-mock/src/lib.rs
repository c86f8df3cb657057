//! An OpenAI-compatible simulator for tests, benchmarks and dry runs.
//!
//! It answers `POST /v1/chat/completions` and `POST /v1/embeddings` with deterministic
//! replies and real `usage` counts, enforces per-key requests and tokens limits as a
//! sliding window or as token buckets over a configurable window (60 s by default; 429
//! with `retry-after` and `x-ratelimit-*` headers, as OpenAI sends them), injects
//! faults at configured rates, and keeps a ledger of what it billed (`GET /mock/stats`). It must never be the bottleneck of a
//! benchmark: one short lock per request, no per-request logging.

mod config;
mod faults;
mod ledger;
mod reply;
mod server;

pub use config::{DEFAULT_WINDOW, LimitShape, MAX_WINDOW, MockConfig};
pub use server::{MockError, MockServer, app};
