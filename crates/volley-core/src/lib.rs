//! The volley engine.
//!
//! Data flows one way: **source → scheduler → attempt → classify → (retry | record) → sink**.
//! Every step emits an [`events::Event`]; progress bars, log summaries, event files and the
//! final report are [`events::Observer`]s of that one stream. This crate never prints and
//! knows nothing about command lines or servers: the `volley` binary wires it up.

pub mod batch;
pub mod budget;
pub mod claim;
pub mod classify;
pub mod concurrency;
pub mod defaults;
pub mod events;
pub mod ids;
pub mod job;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod openrouter;
pub mod pricing;
pub mod ratelimit;
pub mod report;
pub mod retry;
pub mod runner;
pub mod scheduler;
pub mod sort;
pub mod stats;
pub mod store;
pub mod tokens;
pub mod transport;
pub mod turnstile;
pub mod usage;
pub mod validate;
