//! Experiments on the volley engine (SPEC §12): each row of a dataset is asked of
//! each model, `runs` times; each answer may go through a `postprocess` command and a
//! judge model; the verdicts become scores with confidence intervals and paired
//! comparisons between models.
//!
//! Everything here is a source on one [`volley_core::engine::Engine`]: answers and
//! judgements share its keys, limits, ledger and event stream.

pub mod dataset;
pub mod pipeline;
pub mod plan;
pub mod postprocess;
pub mod prompt;
pub mod record;
pub mod run_info;
pub mod scores;
