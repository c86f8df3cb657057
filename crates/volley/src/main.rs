//! The `volley` command: parses flags and wires the engine, the mock and the observers.
//! Policy lives in `volley-core`; this crate only translates between people and it.

mod cli;
mod commands;
mod exit;
mod html;
mod logging;
mod metrics_endpoint;
mod progress;
mod summary;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Usage.into();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run::run(*args).await,
            Command::Mock(args) => commands::mock::mock(args).await,
            Command::Sort(args) => commands::sort::sort(args),
            Command::Report(args) => commands::report::report(args),
        }
    });
    // In-flight work that outlived the grace period must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Usage.into()
        }
    }
}
