//! One module per subcommand.

pub mod mock;
pub mod report;
pub mod run;
pub mod sort;
