//! The `volley` command: parses flags and wires the engine, the mock and the observers.
//! Policy lives in `volley-core`; this crate only translates between people and it.

/// `println!` that never panics: output piped into `head` that has closed must not
/// turn finished work into a crash with a backtrace.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics: a closed stderr (`volley run … 2>&1 | (exec 0<&-)`)
/// must not turn a finished run into exit 101.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod commands;
mod config;
mod dashboard;
mod exit;
mod html;
mod linger;
mod logging;
mod metrics_endpoint;
mod progress;
mod summary;

use crate::cli::Command;
use crate::config::ArgsError;
use crate::exit::Exit;

fn main() -> std::process::ExitCode {
    let (cli, file) = match config::parse_args(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ArgsError::Clap(e)) => e.exit(),
        Err(ArgsError::Config(e)) => {
            errln!("error: {e}");
            return Exit::Usage.into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return Exit::Usage.into();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run::run(*args, file).await,
            Command::Serve(args) => commands::serve::serve(*args, file).await,
            Command::Mock(args) => commands::mock::mock(args).await,
            Command::Sort(args) => commands::sort::sort(args),
            Command::Report(args) => commands::report::report(args),
            Command::Experiment(command) => commands::experiment::experiment(command, file).await,
        }
    });
    // In-flight work that outlived the grace period must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            errln!("error: {}", describe(&e));
            Exit::Usage.into()
        }
    }
}

/// The error and its causes, each said once: the library's errors name their cause in
/// their own message ("cannot read input x.jsonl: No such file…"), so a cause already
/// said is not repeated after it.
fn describe(e: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if said.contains(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // As a library error that names its source in its message reads.
        let e = anyhow::Error::new(io)
            .context("cannot read x.jsonl: no such file")
            .context("while starting");
        assert_eq!(
            describe(&e),
            "while starting: cannot read x.jsonl: no such file"
        );
    }
}
