//! Scores: what the verdicts of a run say about each model, with how sure it is.

pub mod stats;
