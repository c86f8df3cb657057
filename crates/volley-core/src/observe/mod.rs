//! What a run says about itself: the event stream ([`events`]) and its observers'
//! figures ([`stats`], per source in [`sources`], [`metrics`], [`report`]).

pub mod events;
pub mod metrics;
pub mod report;
pub mod sources;
pub mod stats;
