//! Loading a configuration file: read, parse (TOML or YAML, by the name), deserialize
//! its tables, then check every value and every name one table gives another, each
//! error at its line and key.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::de;
use crate::error::{ConfigError, Located};
use crate::flags::FlagDefault;
use crate::path::KeyPath;
use crate::raw::{
    Named, RawDataset, RawExperiment, RawFile, RawJudge, RawModel, RawPostprocess, RawPrompt,
    RawProvider,
};
use crate::tree::{self, Node};
use crate::types::{
    DEFAULT_POSTPROCESS_TIMEOUT, DEFAULT_POSTPROCESS_WORKERS, Dataset, DatasetFormat, Experiment,
    Judge, Model, Postprocess, Prompt, Provider, Verdict,
};

/// A configuration file larger than this is refused unread: a real one is a few
/// kilobytes, and a huge file named by mistake should not be parsed into memory.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// How many times an experiment may repeat each row: more is a typo, not a study.
const MAX_RUNS: i64 = 1000;

/// The same ceilings as the `--concurrency` flag.
const MAX_CONCURRENCY: i64 = 100_000;

/// Postprocess commands at once: beyond this a machine thrashes.
const MAX_WORKERS: i64 = 1024;

/// The longest span in seconds any setting takes, as the flags' (about 31 years).
const MAX_SECONDS: f64 = 1e9;

/// The format of a configuration file, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.yaml` or `.yml`
    Yaml,
}

impl Format {
    /// The format a file's name says; `None` for any other name.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// A loaded, valid configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file as it was named (errors name it so).
    pub path: PathBuf,
    /// Its folder, absolute: relative paths in the file are relative to it.
    pub dir: PathBuf,
    /// `[run]`: defaults for `volley run`'s flags, in file order.
    pub run: Vec<FlagDefault>,
    /// `[serve]`: defaults for `volley serve`'s flags, in file order.
    pub serve: Vec<FlagDefault>,
    /// `[experiment]`: defaults for the flags of `volley experiment run` (whose CONFIG
    /// the file is), in file order.
    pub experiment: Vec<FlagDefault>,
    /// `[providers]`, in file order: the engine has one upstream per provider, in this
    /// order, and the first is the default upstream (lines naming no configured model
    /// go there).
    pub providers: Vec<Provider>,
    /// `[models]`, in file order.
    pub models: Vec<Model>,
    /// `[datasets]`, in file order.
    pub datasets: Vec<Dataset>,
    /// `[prompts]`, in file order.
    pub prompts: Vec<Prompt>,
    /// `[experiments]`, in file order.
    pub experiments: Vec<Experiment>,
    /// The parsed file, kept to find the line of any key for later errors.
    tree: Node,
}

impl ConfigFile {
    /// Reads and checks the file at `path`: TOML for `.toml`, YAML for `.yaml`/`.yml`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let label = path.display().to_string();
        let format = Format::of(path).ok_or_else(|| ConfigError::Format {
            path: label.clone(),
        })?;
        let read_error = |source| ConfigError::Read {
            path: label.clone(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if bytes > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: label,
                bytes,
                max: MAX_FILE_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        ConfigFile::parse(&text, format, path)
    }

    /// Checks `text` as the contents of a file at `path` (which need not exist: it
    /// names the file in errors, and its folder is where relative paths start).
    pub fn parse(text: &str, format: Format, path: &Path) -> Result<ConfigFile, ConfigError> {
        let file = path.display().to_string();
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let parsed = match format {
            Format::Toml => tree::parse_toml(text),
            Format::Yaml => tree::parse_yaml(text),
        };
        let tree = parsed.map_err(|e| {
            ConfigError::Invalid(Located {
                file: file.clone(),
                line: e.line,
                key: String::new(),
                message: e.message,
            })
        })?;
        let raw: RawFile = de::from_node(&tree).map_err(|e| {
            ConfigError::Invalid(Located {
                file: file.clone(),
                line: e.line.unwrap_or(tree.line),
                key: e.path().to_string(),
                message: e.message.clone(),
            })
        })?;
        let dir = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let mut config = ConfigFile {
            path: path.to_path_buf(),
            dir,
            run: Vec::new(),
            serve: Vec::new(),
            experiment: Vec::new(),
            providers: Vec::new(),
            models: Vec::new(),
            datasets: Vec::new(),
            prompts: Vec::new(),
            experiments: Vec::new(),
            tree,
        };
        config.resolve(raw)?;
        Ok(config)
    }

    /// An error about the value at `path` of this file, at its line: for what is found
    /// wrong with a value after loading (an environment variable a provider names is
    /// not set, a flag's default its parser refuses).
    pub fn error_at(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Located {
            file: self.path.display().to_string(),
            line: self.tree.line_of(path),
            key: path.to_string(),
            message: message.into(),
        })
    }

    /// The flag defaults of the command `command` (`"run"`, `"serve"`, `"experiment"`);
    /// `None` for a command the file has no section for.
    pub fn flag_defaults(&self, command: &str) -> Option<&[FlagDefault]> {
        match command {
            "run" => Some(&self.run),
            "serve" => Some(&self.serve),
            "experiment" => Some(&self.experiment),
            _ => None,
        }
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The dataset named `name`.
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The prompt named `name`.
    pub fn prompt(&self, name: &str) -> Option<&Prompt> {
        self.prompts.iter().find(|p| p.name == name)
    }

    /// The experiment named `name`.
    pub fn experiment(&self, name: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// Checks the raw tables in dependency order (a model's provider before the model)
    /// and fills in the resolved ones.
    fn resolve(&mut self, raw: RawFile) -> Result<(), ConfigError> {
        let top = KeyPath::root();
        for (section, flags) in [
            ("run", raw.run),
            ("serve", raw.serve),
            ("experiment", raw.experiment),
        ] {
            let at = top.key(section);
            let resolved = flags
                .unwrap_or_default()
                .0
                .into_iter()
                .map(|(key, value)| {
                    let path = at.key(&key);
                    FlagDefault {
                        line: self.tree.line_of(&path),
                        key,
                        value,
                        path,
                    }
                })
                .collect();
            match section {
                "run" => self.run = resolved,
                "serve" => self.serve = resolved,
                _ => self.experiment = resolved,
            }
        }
        self.providers = self.section("providers", raw.providers, Self::provider_from)?;
        self.models = self.section("models", raw.models, Self::model_from)?;
        self.datasets = self.section("datasets", raw.datasets, Self::dataset_from)?;
        self.prompts = self.section("prompts", raw.prompts, Self::prompt_from)?;
        self.experiments = self.section("experiments", raw.experiments, Self::experiment_from)?;
        Ok(())
    }

    /// The tables of the section `key`, each resolved by `resolve`, in file order.
    fn section<R, T>(
        &self,
        key: &str,
        table: Option<Named<R>>,
        resolve: impl Fn(&Self, &str, &KeyPath, R) -> Result<T, ConfigError>,
    ) -> Result<Vec<T>, ConfigError> {
        let at = KeyPath::root().key(key);
        table
            .unwrap_or_default()
            .0
            .into_iter()
            .map(|(name, raw)| {
                let path = at.key(&name);
                if name.trim().is_empty() {
                    return Err(self.error_at(&path, "a name must not be empty"));
                }
                resolve(self, &name, &path, raw)
            })
            .collect()
    }

    fn prompt_from(&self, name: &str, at: &KeyPath, p: RawPrompt) -> Result<Prompt, ConfigError> {
        if p.user.trim().is_empty() {
            return Err(self.error_at(&at.key("user"), "must not be empty"));
        }
        Ok(Prompt {
            name: name.to_string(),
            system: p.system,
            user: p.user,
        })
    }

    fn provider_from(
        &self,
        name: &str,
        at: &KeyPath,
        p: RawProvider,
    ) -> Result<Provider, ConfigError> {
        let url = p.base_url.trim();
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let scheme = &url[..scheme_end];
        if !(scheme.eq_ignore_ascii_case("http://") || scheme.eq_ignore_ascii_case("https://"))
            || url.len() == scheme_end
        {
            return Err(self.error_at(
                &at.key("base_url"),
                format!(
                    "must be an http:// or https:// URL such as https://openrouter.ai/api/v1, found {:?}",
                    p.base_url
                ),
            ));
        }
        let envs = p.api_key_env.0;
        if envs.is_empty() {
            return Err(self.error_at(
                &at.key("api_key_env"),
                "must name at least one environment variable holding a key",
            ));
        }
        for (i, env) in envs.iter().enumerate() {
            if env.is_empty() || env.contains(['=', '\0']) {
                return Err(self.error_at(
                    &at.key("api_key_env").index(i),
                    format!(
                        "must be the name of an environment variable (the key itself never goes in the file), found {env:?}"
                    ),
                ));
            }
        }
        let limit = |value: Option<i64>, key: &str, what: &str| {
            value
                .map(|n| {
                    self.whole(
                        n,
                        &at.key(key),
                        1..=i64::MAX,
                        &format!(
                            "must be at least 1: a limit of 0 {what} per minute would never send a request (leave {key} out to learn the limit from the provider)"
                        ),
                    )
                })
                .transpose()
        };
        let rpm = limit(p.rpm, "rpm", "requests")?;
        let tpm = limit(p.tpm, "tpm", "tokens")?;
        let mut headers = Vec::new();
        for (header, value) in p.headers.unwrap_or_default().0 {
            let path = at.key("headers").key(&header);
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(self.error_at(&path, "is not a valid HTTP header name"));
            }
            if header.eq_ignore_ascii_case("authorization") {
                return Err(self.error_at(
                    &path,
                    "is set by volley from the provider's keys (api_key_env); it cannot be given here",
                ));
            }
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(self.error_at(
                    &path,
                    "is not a valid HTTP header value (printable ASCII, no line breaks)",
                ));
            }
            headers.push((header, value));
        }
        Ok(Provider {
            name: name.to_string(),
            base_url: url.to_string(),
            api_key_env: envs,
            rpm: rpm.map(as_u64),
            tpm: tpm.map(as_u64),
            lanes: p.lanes,
            headers,
        })
    }

    fn model_from(&self, name: &str, at: &KeyPath, m: RawModel) -> Result<Model, ConfigError> {
        let (provider, upstream) = match &m.provider {
            Some(p) => {
                let known: Vec<&str> = self.providers.iter().map(|p| p.name.as_str()).collect();
                let index = self.reference(&at.key("provider"), "provider", p, &known)?;
                (Some(p.clone()), index)
            }
            None => match self.providers.as_slice() {
                [] => (None, 0),
                [only] => (Some(only.name.clone()), 0),
                several => {
                    let names: Vec<&str> = several.iter().map(|p| p.name.as_str()).collect();
                    return Err(self.error_at(
                        at,
                        format!(
                            "several providers are configured: say which serves this model with provider = \"…\" (configured: {})",
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        let id = m.model.unwrap_or_else(|| name.to_string());
        if id.is_empty() {
            return Err(self.error_at(&at.key("model"), "must not be empty"));
        }
        let max_tokens = m
            .max_tokens
            .map(|n| self.whole(n, &at.key("max_tokens"), 1..=i64::MAX, "must be at least 1"))
            .transpose()?
            .map(as_u64);
        if let Some(t) = m.temperature
            && t < 0.0
        {
            return Err(self.error_at(
                &at.key("temperature"),
                format!("must be 0 or more, found {t}"),
            ));
        }
        let body = m.body.unwrap_or_default();
        for key in body.keys() {
            let path = at.key("body").key(key);
            let set = match key.as_str() {
                "max_tokens" => m.max_tokens.is_some(),
                "temperature" => m.temperature.is_some(),
                "reasoning" => m.reasoning.is_some(),
                _ => false,
            };
            let why = match key.as_str() {
                "model" => "the model id is set with model = \"…\" beside body, not in it",
                "messages" | "prompt" | "input" => {
                    "the request itself comes from each input line (or an experiment's prompt), not from the model"
                }
                _ if set => "is set twice: here and as the model's own key; keep one",
                _ => continue,
            };
            return Err(self.error_at(&path, why));
        }
        Ok(Model {
            name: name.to_string(),
            provider,
            upstream,
            id,
            max_tokens,
            temperature: m.temperature,
            reasoning: m.reasoning,
            body,
        })
    }

    fn dataset_from(
        &self,
        name: &str,
        at: &KeyPath,
        d: RawDataset,
    ) -> Result<Dataset, ConfigError> {
        let path = self.existing_file(&at.key("path"), &d.path)?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let format = match ext.as_deref() {
            Some("jsonl") => DatasetFormat::Jsonl,
            Some("csv") => DatasetFormat::Csv,
            _ => {
                return Err(self.error_at(
                    &at.key("path"),
                    format!(
                        "a dataset is a .jsonl or .csv file, found {}",
                        path.display()
                    ),
                ));
            }
        };
        let id_field = d.id.unwrap_or_else(|| "id".to_string());
        if id_field.is_empty() {
            return Err(self.error_at(&at.key("id"), "must not be empty"));
        }
        Ok(Dataset {
            name: name.to_string(),
            path,
            format,
            id_field,
        })
    }

    fn experiment_from(
        &self,
        name: &str,
        at: &KeyPath,
        e: RawExperiment,
    ) -> Result<Experiment, ConfigError> {
        // `NAME/judge` is the judge stage's name (its source, its dashboard row): an
        // experiment called `a/judge` would be taken for the judge of `a`.
        if name.contains('/') {
            return Err(self.error_at(
                at,
                "an experiment's name may not hold '/' (NAME/judge names its judge stage)",
            ));
        }
        let datasets: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
        self.references(&at.key("datasets"), "dataset", &e.datasets, &datasets)?;
        let models: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        self.references(&at.key("models"), "model", &e.models, &models)?;
        let prompts: Vec<&str> = self.prompts.iter().map(|p| p.name.as_str()).collect();
        self.reference(&at.key("prompt"), "prompt", &e.prompt, &prompts)?;
        let runs = self.whole(
            e.runs.unwrap_or(1),
            &at.key("runs"),
            1..=MAX_RUNS,
            "must be 1 to 1000 runs of each row",
        )?;
        let json_schema = e
            .json_schema
            .map(|p| self.existing_file(&at.key("json_schema"), &p))
            .transpose()?;
        let concurrency = e
            .concurrency
            .map(|n| {
                self.whole(
                    n,
                    &at.key("concurrency"),
                    1..=MAX_CONCURRENCY,
                    "must be 1 to 100000 requests in flight at once",
                )
            })
            .transpose()?;
        if let Some(usd) = e.max_cost_usd
            && usd < 0.0
        {
            return Err(self.error_at(
                &at.key("max_cost_usd"),
                format!("must be 0 or more US dollars, found {usd}"),
            ));
        }
        let postprocess = e
            .postprocess
            .map(|p| self.postprocess_from(&at.key("postprocess"), p))
            .transpose()?;
        let judge = e
            .judge
            .map(|j| self.judge_from(&at.key("judge"), j, &models, &prompts))
            .transpose()?;
        Ok(Experiment {
            name: name.to_string(),
            datasets: e.datasets,
            models: e.models,
            runs: u32::try_from(runs).unwrap_or(1),
            prompt: e.prompt,
            expect: e.expect,
            json_schema,
            concurrency: concurrency.map(|n| usize::try_from(n).unwrap_or(1)),
            max_cost_usd: e.max_cost_usd,
            postprocess,
            judge,
        })
    }

    fn postprocess_from(
        &self,
        at: &KeyPath,
        p: RawPostprocess,
    ) -> Result<Postprocess, ConfigError> {
        match p.command.first() {
            None => {
                return Err(self.error_at(
                    &at.key("command"),
                    "must hold at least the program to run, e.g. [\"python3\", \"check.py\"]",
                ));
            }
            Some(program) if program.is_empty() => {
                return Err(self.error_at(
                    &at.key("command").index(0),
                    "the program's name must not be empty",
                ));
            }
            Some(_) => {}
        }
        let timeout = match p.timeout_secs {
            None => DEFAULT_POSTPROCESS_TIMEOUT,
            Some(secs) if secs > 0.0 && secs <= MAX_SECONDS => Duration::from_secs_f64(secs),
            Some(secs) => {
                return Err(self.error_at(
                    &at.key("timeout_secs"),
                    format!("must be more than 0 and at most 1e9 seconds, found {secs}"),
                ));
            }
        };
        let workers = match p.workers {
            None => DEFAULT_POSTPROCESS_WORKERS,
            Some(n) => {
                let n = self.whole(
                    n,
                    &at.key("workers"),
                    1..=MAX_WORKERS,
                    "must be 1 to 1024 commands at once",
                )?;
                usize::try_from(n).unwrap_or(1)
            }
        };
        Ok(Postprocess {
            command: p.command,
            timeout,
            workers,
        })
    }

    fn judge_from(
        &self,
        at: &KeyPath,
        j: RawJudge,
        models: &[&str],
        prompts: &[&str],
    ) -> Result<Judge, ConfigError> {
        self.reference(&at.key("model"), "model", &j.model, models)?;
        self.reference(&at.key("prompt"), "prompt", &j.prompt, prompts)?;
        Ok(Judge {
            model: j.model,
            prompt: j.prompt,
            verdict: j.verdict.unwrap_or(Verdict::Correct),
        })
    }

    /// `n` if it is within `range`, else an error at `path` saying the rule.
    fn whole(
        &self,
        n: i64,
        path: &KeyPath,
        range: RangeInclusive<i64>,
        rule: &str,
    ) -> Result<i64, ConfigError> {
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.error_at(path, format!("{rule}, found {n}")))
        }
    }

    /// The position of `name` among `known`, or an error naming what is configured.
    fn reference(
        &self,
        path: &KeyPath,
        kind: &str,
        name: &str,
        known: &[&str],
    ) -> Result<usize, ConfigError> {
        known.iter().position(|k| *k == name).ok_or_else(|| {
            let configured = if known.is_empty() {
                "none is configured".to_string()
            } else {
                format!("configured: {}", known.join(", "))
            };
            self.error_at(path, format!("no {kind} named {name:?} ({configured})"))
        })
    }

    /// A non-empty list of names, each known, none twice.
    fn references(
        &self,
        path: &KeyPath,
        kind: &str,
        names: &[String],
        known: &[&str],
    ) -> Result<(), ConfigError> {
        if names.is_empty() {
            return Err(self.error_at(path, format!("must name at least one {kind}")));
        }
        let mut seen = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            self.reference(&path.index(i), kind, name, known)?;
            if !seen.insert(name.as_str()) {
                return Err(self.error_at(&path.index(i), format!("{name:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// `path` (relative to the file's folder) as an absolute path to a file that exists.
    fn existing_file(&self, at: &KeyPath, path: &str) -> Result<PathBuf, ConfigError> {
        if path.is_empty() {
            return Err(self.error_at(at, "must not be empty"));
        }
        let full = self.dir.join(path);
        match std::fs::metadata(&full) {
            Ok(meta) if meta.is_file() => Ok(full),
            Ok(_) => Err(self.error_at(at, format!("{} is not a file", full.display()))),
            Err(e) => Err(self.error_at(at, format!("cannot read {}: {e}", full.display()))),
        }
    }
}

/// A whole number already checked to be at least 1.
fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(1)
}
