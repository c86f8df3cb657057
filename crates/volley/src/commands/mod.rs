//! One module per subcommand.

pub mod engine;
pub mod experiment;
pub mod mock;
pub mod report;
pub mod run;
pub mod serve;
pub mod sort;
