//! What requests cost: token usage summed over attempts ([`usage`]), prices
//! ([`pricing`]), and the `--max-cost` cap ([`cost_cap`]).

pub mod cost_cap;
pub mod pricing;
pub mod usage;
