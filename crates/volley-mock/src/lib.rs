//! An OpenAI-compatible simulator for tests, benchmarks and dry runs.
//!
//! It answers `POST /v1/chat/completions` and `POST /v1/embeddings` with deterministic
//! replies and real `usage` counts, enforces per-key requests and tokens limits as a
//! sliding window or as token buckets over a configurable window (60 s by default; 429
//! with `retry-after` and `x-ratelimit-*` headers, as OpenAI sends them), injects
//! faults at configured rates, and keeps a ledger of what it billed (`GET /mock/stats`),
//! in all, per key and per chat model. Told a model's accuracy, it answers correctly
//! that often (each reply ends in [`CORRECT_MARKER`] or [`WRONG_MARKER`]), and a judge
//! model grades the last marked answer it is sent, so experiments' scores can be
//! tested against known numbers. It must never be the bottleneck of a benchmark: a few
//! short locks per request, none held across an await, no per-request logging.

mod config;
mod faults;
mod grading;
mod ledger;
mod reply;
mod server;

pub use config::{ANY_MODEL, DEFAULT_WINDOW, LimitShape, MAX_WINDOW, MockConfig};
pub use grading::{CORRECT_MARKER, JUDGED_CORRECT, JUDGED_WRONG, WRONG_MARKER};
pub use ledger::{MAX_MODEL_NAME, MAX_MODELS, OTHER_MODELS};
pub use server::{MockError, MockServer, app};
