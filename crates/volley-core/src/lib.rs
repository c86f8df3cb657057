//! The volley engine.
//!
//! Data flows one way: **source → engine (admit → lane → attempt → classify → retry | record) → store**.
//! Every step emits an [`observe::events::Event`]; progress bars, log summaries, event files and the
//! final report are [`observe::events::Observer`]s of that one stream. This crate never prints and
//! knows nothing about command lines or servers: the `volley` binary wires it up.

pub mod accounting;
pub mod defaults;
pub mod engine;
pub mod input;
pub mod limits;
pub mod observe;
pub mod provider;
pub mod runner;
pub mod store;
