//! What a run says about itself: the event stream ([`events`]) and its observers'
//! figures ([`stats`], [`metrics`], [`report`]).

pub mod events;
pub mod metrics;
pub mod report;
pub mod stats;
