//! The engine as a service: sources ([`source`]) submit jobs and are admitted fairly
//! ([`admission`]); each admitted request lives in [`request`]: given its turn
//! ([`turnstile`]) and a connection slot ([`concurrency`]), attempted, classified,
//! retried under the retry policy ([`retry`]) or recorded in its source's store. A
//! request a client waits on (the gateway's proxy) carries what [`waiting`] knows.
//! [`service`] is the handle that holds it all together.

pub mod admission;
pub mod concurrency;
pub mod handoff;
pub mod request;
pub mod retry;
pub mod service;
pub mod source;
pub mod turnstile;
pub mod waiting;

pub use service::{Engine, EngineConfig};
pub use source::{
    BATCH_PRIORITY, INTERACTIVE_PRIORITY, NoStore, NotAdmitted, Source, SourceCounts, SourceId,
    SourceSpec, StopReason, Ticket, Unfinished,
};
