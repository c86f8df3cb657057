//! `--config FILE` on the command line: the file's section for the command (`[run]`,
//! `[serve]`, and `[experiment]` for `volley experiment run CONFIG`) gives defaults for
//! any of the command's flags, by long name.
//!
//! Done generically, not flag by flag: the command line is parsed once; each key of
//! the section is matched to the command's flag of that long name and its value judged
//! by that flag's own parser (so the file's error says what `--flag value` would, plus
//! the file, line and key); flags the command line or their environment variable set
//! are left alone; the rest become `--flag=value` arguments and the command line is
//! parsed again. A new flag is configurable the day it is added.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use volley_config::{ConfigError, ConfigFile, FlagDefault, FlagValue, KeyPath};

use crate::cli::{Cli, EngineArgs};
use crate::commands::engine::Upstreams;

/// The flag that names the file: it cannot be set from the file.
const CONFIG_FLAG: &str = "config";

/// Why the command line could not be read.
pub enum ArgsError {
    /// clap's own error (usage, `--help`, `--version`): clap prints it and exits.
    Clap(clap::Error),
    /// The configuration file, at its line and key.
    Config(ConfigError),
}

impl From<clap::Error> for ArgsError {
    fn from(e: clap::Error) -> ArgsError {
        ArgsError::Clap(e)
    }
}

impl From<ConfigError> for ArgsError {
    fn from(e: ConfigError) -> ArgsError {
        ArgsError::Config(e)
    }
}

/// The command a configuration file gives defaults to: its subcommand names, its
/// matches and the file. `volley run|serve --config FILE` take the `[run]`/`[serve]`
/// section; `volley experiment run CONFIG` takes `[experiment]` from its CONFIG.
fn configured(matches: &ArgMatches) -> Option<(Vec<&str>, &ArgMatches, &std::path::PathBuf)> {
    let (name, sub) = matches.subcommand()?;
    if name == "experiment" {
        let (inner, m) = sub.subcommand()?;
        let path = (inner == "run")
            .then(|| m.try_get_one::<std::path::PathBuf>("config").ok().flatten())
            .flatten()?;
        return Some((vec![name, inner], m, path));
    }
    let path = sub
        .try_get_one::<std::path::PathBuf>(CONFIG_FLAG)
        .ok()
        .flatten()?;
    Some((vec![name], sub, path))
}

/// Parses the command line `argv` (the program's name first), with the defaults of the
/// file `--config` names, if any; returns the flags and the loaded file.
pub fn parse_args(mut argv: Vec<OsString>) -> Result<(Cli, Option<ConfigFile>), ArgsError> {
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let Some((names, sub, path)) = configured(&matches) else {
        return Ok((Cli::from_arg_matches(&matches)?, None));
    };
    let file = ConfigFile::load(path)?;
    let mut subcommand = &command;
    for name in &names {
        subcommand = subcommand.find_subcommand(name).ok_or_else(|| {
            command
                .clone()
                .error(clap::error::ErrorKind::InvalidSubcommand, name)
        })?;
    }
    let name = names[0];
    let defaults = file.flag_defaults(name).unwrap_or_default();
    let extra = flag_arguments(&file, &names.join(" "), subcommand, sub, defaults)?;
    if extra.is_empty() {
        return Ok((Cli::from_arg_matches(&matches)?, Some(file)));
    }
    // Right after the (last) subcommand's name: before any `--` that would make them
    // inputs.
    // From argv[1]: a program named `run` is not its subcommand.
    let mut at = 1;
    for n in &names {
        at = argv[at..]
            .iter()
            .position(|a| a.as_os_str() == OsStr::new(n))
            .map_or(argv.len(), |i| at + i + 1);
    }
    argv.splice(at..at, extra);
    // The file's values passed their parsers; what can still fail is how flags go
    // together (`--metrics-linger` needs `--metrics-addr`): said at the section.
    let section = KeyPath::root().key(name);
    let located = |e: clap::Error| {
        ArgsError::Config(file.error_at(
            &section,
            format!("{} (with the flags this section sets)", clap_message(&e)),
        ))
    };
    let matches = command.try_get_matches_from(&argv).map_err(located)?;
    let cli = Cli::from_arg_matches(&matches).map_err(located)?;
    Ok((cli, Some(file)))
}

/// The arguments that set the flags `defaults` gives and the command line does not:
/// each checked by its flag's parser, every error at its line and key.
pub fn flag_arguments(
    file: &ConfigFile,
    name: &str,
    command: &clap::Command,
    matches: &ArgMatches,
    defaults: &[FlagDefault],
) -> Result<Vec<OsString>, ConfigError> {
    let mut arguments = Vec::new();
    for default in defaults {
        let long = default.flag_name();
        if long == CONFIG_FLAG {
            let how = if name.starts_with("experiment") {
                "it is the command's CONFIG"
            } else {
                "give --config on the command line"
            };
            return Err(file.error_at(
                &default.path,
                format!("the configuration file cannot name another one: {how}"),
            ));
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|a| !matches!(a.get_long(), Some(CONFIG_FLAG | "help" | "version")));
        let Some(arg) = arg else {
            return Err(file.error_at(&default.path, unknown(name, command, &long)));
        };
        let values = match &default.value {
            FlagValue::List(items) if matches!(arg.get_action(), ArgAction::Append) => {
                items.iter().collect()
            }
            FlagValue::List(_) => {
                return Err(file.error_at(
                    &default.path,
                    format!("--{long} takes one value, found a list"),
                ));
            }
            one => vec![one],
        };
        let mut given = Vec::new();
        for value in values {
            if !arg.get_action().takes_values() {
                // A switch: true sets it, false leaves it off.
                match value {
                    FlagValue::Bool(true) => given.push(OsString::from(format!("--{long}"))),
                    FlagValue::Bool(false) => {}
                    _ => {
                        return Err(file.error_at(
                            &default.path,
                            format!("--{long} is a switch: expected true or false"),
                        ));
                    }
                }
                continue;
            }
            let text = value.as_arg().unwrap_or_default();
            if let Err(e) = check_value(arg, &text) {
                return Err(file.error_at(&default.path, clap_message(&e)));
            }
            given.push(OsString::from(format!("--{long}={text}")));
        }
        // The command line (or the flag's environment variable) wins over the file,
        // and so does a flag given there that this one cannot go with (the file's
        // `keep_changed` beside `--rerun-changed`); the file's value was still
        // checked, so a broken file is said at once.
        if !given_outside(matches, arg) && !conflicts_with_given(command, matches, arg) {
            arguments.extend(given);
        }
    }
    Ok(arguments)
}

/// Whether the command line or the flag's environment variable set `arg`.
fn given_outside(matches: &ArgMatches, arg: &clap::Arg) -> bool {
    matches!(
        matches.value_source(arg.get_id().as_str()),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Whether a flag set outside the file cannot be used with `arg` (either flag may be
/// the one that names the conflict).
fn conflicts_with_given(command: &clap::Command, matches: &ArgMatches, arg: &clap::Arg) -> bool {
    let id = arg.get_id();
    command.get_arguments().any(|other| {
        other.get_id() != id
            && given_outside(matches, other)
            && (command
                .get_arg_conflicts_with(arg)
                .iter()
                .any(|c| c.get_id() == other.get_id())
                || command
                    .get_arg_conflicts_with(other)
                    .iter()
                    .any(|c| c.get_id() == id))
    })
}

/// Parses `--flag=text` with the flag's own parser, alone: clap keeps its parsers to
/// itself, so the flag is put in a command of its own, stripped of what ties it to
/// the others (requirements, conflicts, its environment variable and default).
fn check_value(arg: &clap::Arg, text: &str) -> Result<(), clap::Error> {
    use clap::builder::Resettable::Reset;
    let alone = arg
        .clone()
        .required(false)
        .requires(Reset)
        .conflicts_with(Reset)
        .overrides_with(Reset)
        .required_unless_present(Reset)
        .group(Reset)
        .env(Reset)
        .default_value(Reset);
    let long = arg.get_long().unwrap_or_default();
    clap::Command::new("volley")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone)
        .try_get_matches_from([format!("--{long}={text}")])
        .map(|_| ())
}

/// What clap says of a value its parser refused, on one line, as it says it for the
/// flag (`invalid value '0' for '--concurrency <CONCURRENCY>': must be …`).
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An unknown key: `volley NAME` has no such flag; the closest one, if any is close.
fn unknown(name: &str, command: &clap::Command, long: &str) -> String {
    let mut message = format!(
        "unknown key: volley {name} has no flag --{long} (`volley {name} --help` lists them)"
    );
    let closest = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != CONFIG_FLAG)
        .map(|l| (edit_distance(long, l), l))
        .min();
    if let Some((distance, flag)) = closest
        && distance <= 2.max(long.len() / 4)
    {
        message.push_str(&format!("; did you mean {}?", flag.replace('-', "_")));
    }
    message
}

/// Levenshtein distance: how many one-character edits turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Loads the configuration file at `path` and what it describes for the engine: its
/// providers as targets (keys read from the environment; `args` are the engine flags,
/// which win over the file as they do for `volley run`), its models as routes. For a
/// command that takes the file as its argument (`volley experiment run CONFIG`).
pub fn load(path: &Path, args: &EngineArgs) -> anyhow::Result<(ConfigFile, Upstreams)> {
    let file = ConfigFile::load(path)?;
    let upstreams = Upstreams::resolve(args, Some(&file))?;
    Ok((file, upstreams))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    /// `volley run in.jsonl --config FILE extra…` with `text` as the file.
    fn run_args(text: &str, extra: &[&str]) -> Result<crate::cli::RunArgs, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv: Vec<OsString> = ["volley", "run", "in.jsonl", "--config"]
            .iter()
            .map(OsString::from)
            .collect();
        argv.push(path.clone().into_os_string());
        argv.extend(extra.iter().map(OsString::from));
        match parse_args(argv) {
            Ok((
                Cli {
                    command: Command::Run(args),
                },
                Some(_),
            )) => Ok(*args),
            Ok(_) => Err("not a run with a file".into()),
            Err(ArgsError::Clap(e)) => Err(clap_message(&e)),
            Err(ArgsError::Config(e)) => Err(e
                .to_string()
                .replace(&path.display().to_string(), "volley.toml")),
        }
    }

    #[test]
    fn the_section_sets_flags_of_every_kind() {
        let text = "[run]\nconcurrency = 3\nquiet = true\nskip-invalid = false\napi_key_env = [\"A\", \"B\"]\nmax_cost = 1.5\nexpect = \"json\"\n";
        let args = run_args(text, &["--max-retries", "2"]).unwrap();
        assert_eq!(args.engine.concurrency, 3);
        assert!(args.display.quiet && !args.skip_invalid);
        assert_eq!(args.engine.api_key_env, ["A", "B"]);
        assert_eq!(args.max_cost, Some(1.5));
        assert!(args.expect.is_some());
        assert_eq!(args.engine.max_retries, 2);
        // Given on the command line: the file's value is left out.
        let args = run_args(text, &["--concurrency", "7", "--api-key-env", "C"]).unwrap();
        assert_eq!(args.engine.concurrency, 7);
        assert_eq!(args.engine.api_key_env, ["C"]);
    }

    #[test]
    fn what_the_section_cannot_set() {
        for (text, error) in [
            (
                "[run]\nconcurrency = [1, 2]\n",
                "volley.toml:2: run.concurrency: --concurrency takes one value, found a list",
            ),
            (
                "[run]\nconfig = \"other.toml\"\n",
                "volley.toml:2: run.config: the configuration file cannot name another one: give --config on the command line",
            ),
            (
                "[run]\ninput = \"x.jsonl\"\n",
                "volley.toml:2: run.input: unknown key: volley run has no flag --input (`volley run --help` lists them)",
            ),
            (
                "[run]\nretry_failed = \"yes\"\n",
                "volley.toml:2: run.retry_failed: --retry-failed is a switch: expected true or false",
            ),
            (
                "[run]\n\ntimeout = 0.5\n",
                "volley.toml:3: run.timeout: invalid value '0.5' for '--timeout <SECS>': must be 1 to 1e9 seconds: a shorter timeout abandons requests the provider has already received and will bill",
            ),
        ] {
            assert_eq!(run_args(text, &[]).unwrap_err(), error, "{text}");
        }
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("concurency", "concurrency"), 1);
        assert_eq!(edit_distance("rpn", "rpm"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("max-retries", "max-retries"), 0);
    }
}
