//! What comes in: the JSONL batch formats, the jobs they become, compact sets of their
//! custom_ids, and the one JSONL line reader every file goes through.

pub mod batch;
pub mod ids;
pub mod job;
pub mod lines;
