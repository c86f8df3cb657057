//! How fast each lane may go: the rate-limit headers providers send ([`headers`]), the
//! pace and announced allowance that follow from them ([`limiter`]), the rate-gate trait
//! every lane asks ([`gate`]) and its in-process implementation ([`local`]), and the
//! lanes of an upstream, which book every attempt ([`lanes`]).

pub mod gate;
pub mod headers;
pub mod lane;
pub mod lanes;
pub mod limiter;
pub mod local;
