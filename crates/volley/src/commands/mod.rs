//! One module per subcommand.

pub mod mock;
pub mod run;
pub mod sort;
