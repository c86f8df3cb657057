//! What comes in: the JSONL batch formats, the jobs they become, and compact sets of
//! their custom_ids.

pub mod batch;
pub mod ids;
pub mod job;
