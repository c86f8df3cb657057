//! How fast each key may go: the rate-limit headers providers send ([`headers`]), the
//! pace and announced allowance that follow from them ([`limiter`]), and the pool of
//! keys whose lanes book every attempt ([`keys`]).

pub mod headers;
pub mod keys;
pub mod limiter;
