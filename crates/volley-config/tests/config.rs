//! Loading whole files: what a valid one resolves to, and for each kind of mistake the
//! error's file, line, key path and message, in TOML and in YAML.

use std::path::{Path, PathBuf};
use std::time::Duration;

use volley_config::{
    ConfigError, ConfigFile, DatasetFormat, Expect, FlagValue, Format, Lanes, Verdict,
};

/// A folder holding the datasets and schema the example names.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("arith.jsonl"),
        "{\"id\": 1, \"q\": \"1+1\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("words.csv"), "id,q\n1,hi\n").unwrap();
    std::fs::write(dir.path().join("schema.json"), "{\"type\": \"object\"}").unwrap();
    dir
}

const EXAMPLE: &str = r#"# Flag defaults.
[run]
concurrency = 64
max_retries = 5
expect = "json"
api-key-env = ["A", "B"]
[serve]
addr = "127.0.0.1:8080"

[providers.openrouter]
base_url = "https://openrouter.ai/api/v1"
api_key_env = ["OPENROUTER_API_KEY"]
rpm = 600
tpm = 1_000_000
lanes = "account"
headers = { "HTTP-Referer" = "https://example.org", "X-Title" = "evals" }

[providers.local]
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "LOCAL_KEY"

[models.small]
provider = "openrouter"
model = "openai/gpt-4o-mini"
max_tokens = 512
temperature = 0.0
reasoning = { effort = "low" }
body = { provider = { order = ["openai"] }, top_p = 0.9 }

[models.large]
provider = "local"

[models.judge]
provider = "local"
model = "judge-1"

[datasets.arith]
path = "arith.jsonl"

[datasets.words]
path = "words.csv"
id = "key"

[prompts.qa]
system = "You answer briefly."
user = "Question: {{ question }}"

[prompts.grade]
user = "Grade: {{ answer }}"

[experiments.arith-eval]
datasets = ["arith", "words"]
models = ["small", "large"]
runs = 3
prompt = "qa"
expect = "json"
json_schema = "schema.json"
concurrency = 32
max_cost_usd = 5.0
postprocess = { command = ["python3", "run.py"], timeout_secs = 10, workers = 2 }
judge = { model = "judge", prompt = "grade", verdict = "score" }

[experiments.plain]
datasets = ["arith"]
models = ["small"]
prompt = "qa"
judge = { model = "judge", prompt = "grade" }
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The error of loading `text` as `name` in `dir`, as printed, with the folder's
/// path cut to `DIR` so expectations read plainly.
fn error_in(dir: &Path, name: &str, text: &str) -> String {
    let path = write(dir, name, text);
    let e = ConfigFile::load(&path).expect_err("an invalid file");
    e.to_string()
        .replace(&path.display().to_string(), name)
        .replace(&dir.display().to_string(), "DIR")
}

fn error(name: &str, text: &str) -> String {
    let dir = folder();
    error_in(dir.path(), name, text)
}

#[test]
fn the_example_resolves_in_full() {
    let dir = folder();
    let path = write(dir.path(), "volley.toml", EXAMPLE);
    let file = ConfigFile::load(&path).unwrap();

    let run: Vec<(&str, &FlagValue, u32, String)> = file
        .run
        .iter()
        .map(|f| (f.key.as_str(), &f.value, f.line, f.path.to_string()))
        .collect();
    assert_eq!(
        run[0],
        (
            "concurrency",
            &FlagValue::Integer(64),
            3,
            "run.concurrency".into()
        )
    );
    assert_eq!(run[2].1, &FlagValue::String("json".into()));
    assert_eq!(file.run[3].flag_name(), "api-key-env");
    assert_eq!(
        file.run[3].value,
        FlagValue::List(vec![
            FlagValue::String("A".into()),
            FlagValue::String("B".into())
        ])
    );
    assert_eq!(file.serve[0].key, "addr");
    assert_eq!(file.flag_defaults("serve").map(<[_]>::len), Some(1));
    assert!(file.flag_defaults("mock").is_none());

    // Providers in file order: the first is the default upstream.
    let names: Vec<&str> = file.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["openrouter", "local"]);
    let or = file.provider("openrouter").unwrap();
    assert_eq!(
        (or.rpm, or.tpm, or.lanes),
        (Some(600), Some(1_000_000), Some(Lanes::Account))
    );
    assert_eq!(
        or.headers,
        [
            (
                "HTTP-Referer".to_string(),
                "https://example.org".to_string()
            ),
            ("X-Title".to_string(), "evals".to_string())
        ]
    );
    assert_eq!(file.provider("local").unwrap().api_key_env, ["LOCAL_KEY"]);

    let small = file.model("small").unwrap();
    assert_eq!(
        (small.upstream, small.id.as_str()),
        (0, "openai/gpt-4o-mini")
    );
    let fields = small.request_fields();
    assert_eq!(fields["max_tokens"], 512);
    assert_eq!(fields["temperature"], 0.0);
    assert_eq!(fields["reasoning"]["effort"], "low");
    assert_eq!(fields["provider"]["order"][0], "openai");
    assert_eq!(fields["top_p"], 0.9);
    assert!(!fields.contains_key("model"));
    let large = file.model("large").unwrap();
    assert_eq!((large.upstream, large.id.as_str()), (1, "large"));
    assert_eq!(large.provider.as_deref(), Some("local"));

    let arith = file.dataset("arith").unwrap();
    assert_eq!(arith.path, dir.path().join("arith.jsonl"));
    assert!(arith.path.is_absolute());
    assert_eq!(
        (arith.format, arith.id_field.as_str()),
        (DatasetFormat::Jsonl, "id")
    );
    let words = file.dataset("words").unwrap();
    assert_eq!(
        (words.format, words.id_field.as_str()),
        (DatasetFormat::Csv, "key")
    );

    assert_eq!(
        file.prompt("qa").unwrap().system.as_deref(),
        Some("You answer briefly.")
    );

    let e = file.experiment("arith-eval").unwrap();
    assert_eq!(e.datasets, ["arith", "words"]);
    assert_eq!(e.models, ["small", "large"]);
    assert_eq!(
        (e.runs, e.expect, e.concurrency, e.max_cost_usd),
        (3, Some(Expect::Json), Some(32), Some(5.0))
    );
    assert_eq!(
        e.json_schema.as_deref(),
        Some(dir.path().join("schema.json").as_path())
    );
    let post = e.postprocess.as_ref().unwrap();
    assert_eq!((post.timeout, post.workers), (Duration::from_secs(10), 2));
    let judge = e.judge.as_ref().unwrap();
    assert_eq!(
        (judge.model.as_str(), judge.prompt.as_str(), judge.verdict),
        ("judge", "grade", Verdict::Score)
    );

    let plain = file.experiment("plain").unwrap();
    assert_eq!(plain.runs, 1);
    assert_eq!(plain.judge.as_ref().unwrap().verdict, Verdict::Correct);
}

#[test]
fn one_provider_serves_the_models_that_name_none() {
    let text = "[providers.only]\nbase_url = \"http://x/v1\"\napi_key_env = \"K\"\n[models.m]\n";
    let file = ConfigFile::parse(text, Format::Toml, Path::new("v.toml")).unwrap();
    let m = file.model("m").unwrap();
    assert_eq!(
        (m.provider.as_deref(), m.upstream, m.id.as_str()),
        (Some("only"), 0, "m")
    );
    // Without providers, a model goes to the command line's upstream.
    let file = ConfigFile::parse(
        "[models.m]\nmax_tokens = 5\n",
        Format::Toml,
        Path::new("v.toml"),
    )
    .unwrap();
    assert_eq!(
        (file.models[0].provider.as_deref(), file.models[0].upstream),
        (None, 0)
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let text = "[providers.openrouter]\nbase_url = \"https://openrouter.ai/api/v1\"\napi_key_env = \"K\"\nrpn = 600\n";
    assert_eq!(
        error("volley.toml", text),
        "volley.toml:4: providers.openrouter.rpn: unknown key (expected one of base_url, api_key_env, rpm, tpm, lanes, headers)"
    );
    assert_eq!(
        error("volley.toml", "[run]\nconcurrency = 4\n\n[model.small]\n"),
        "volley.toml:4: model: unknown key (expected one of run, serve, experiment, providers, models, datasets, prompts, experiments)"
    );
}

#[test]
fn names_that_would_be_taken_for_something_else_are_refused() {
    let text = "[models.small]\n[datasets.arith]\npath = \"arith.jsonl\"\n[prompts.qa]\nuser = \"q\"\n\n[experiments.\"a/judge\"]\ndatasets = [\"arith\"]\nmodels = [\"small\"]\nprompt = \"qa\"\n";
    let message = error("volley.toml", text);
    assert!(
        message.starts_with("volley.toml:7: ")
            && message.ends_with(
                "an experiment's name may not hold '/' (NAME/judge names its judge stage)"
            ),
        "{message}"
    );
    // `[experiment.NAME]` for `[experiments.NAME]`: the flags' section says which.
    let message = error("volley.toml", "[experiment.arith]\nruns = 1\n");
    assert!(
        message.starts_with("volley.toml:1: experiment.arith: ")
            && message.contains("an experiment is [experiments.NAME]"),
        "{message}"
    );
}

#[test]
fn bad_values_say_the_rule_and_the_value() {
    let provider = "[providers.p]\nbase_url = \"https://x/v1\"\napi_key_env = \"K\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{provider}rpm = -5\n"),
            "volley.toml:4: providers.p.rpm: must be at least 1: a limit of 0 requests per minute would never send a request (leave rpm out to learn the limit from the provider), found -5",
        ),
        (
            format!("{provider}tpm = \"lots\"\n"),
            "volley.toml:4: providers.p.tpm: expected a whole number, found the string \"lots\"",
        ),
        (
            format!("{provider}lanes = \"keys\"\n"),
            "volley.toml:4: providers.p.lanes: unknown value \"keys\" (expected one of \"key\", \"key-model\", \"account\")",
        ),
        (
            "[providers.p]\nbase_url = \"ftp://x\"\napi_key_env = \"K\"\n".into(),
            "volley.toml:2: providers.p.base_url: must be an http:// or https:// URL such as https://openrouter.ai/api/v1, found \"ftp://x\"",
        ),
        (
            "[providers.p]\nbase_url = \"https://x/v1\"\napi_key_env = []\n".into(),
            "volley.toml:3: providers.p.api_key_env: must name at least one environment variable holding a key",
        ),
        (
            format!("{provider}headers = {{ Authorization = \"Bearer x\" }}\n"),
            "volley.toml:4: providers.p.headers.Authorization: is set by volley from the provider's keys (api_key_env); it cannot be given here",
        ),
        (
            "[models.m]\ntemperature = -1\n".into(),
            "volley.toml:2: models.m.temperature: must be 0 or more, found -1",
        ),
        (
            "[models.m]\nbody = { model = \"x\" }\n".into(),
            "volley.toml:2: models.m.body.model: the model id is set with model = \"…\" beside body, not in it",
        ),
        (
            "[models.m]\nmax_tokens = 5\nbody = { max_tokens = 6 }\n".into(),
            "volley.toml:3: models.m.body.max_tokens: is set twice: here and as the model's own key; keep one",
        ),
        (
            "[models.m]\nbody = 3\n".into(),
            "volley.toml:2: models.m.body: expected a table, found 3",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error("volley.toml", &text), expected, "{text}");
    }
}

/// An experiment over the example's tables, with `lines` added to it.
fn experiment(lines: &str) -> String {
    format!(
        "[models.small]\n[models.large]\n[datasets.arith]\npath = \"arith.jsonl\"\n[prompts.qa]\nuser = \"Q\"\n[experiments.e]\ndatasets = [\"arith\"]\nprompt = \"qa\"\n{lines}"
    )
}

#[test]
fn experiments_are_checked() {
    let cases = [
        (
            "models = [\"small\"]\nruns = 0\n",
            "volley.toml:11: experiments.e.runs: must be 1 to 1000 runs of each row, found 0",
        ),
        (
            "models = [\"small\",\n  \"larg\"]\n",
            "volley.toml:11: experiments.e.models[1]: no model named \"larg\" (configured: small, large)",
        ),
        (
            "models = []\n",
            "volley.toml:10: experiments.e.models: must name at least one model",
        ),
        (
            "models = [\"small\", \"small\"]\n",
            "volley.toml:10: experiments.e.models[1]: \"small\" is listed twice",
        ),
        (
            "models = [\"small\"]\npostprocess = { command = [] }\n",
            "volley.toml:11: experiments.e.postprocess.command: must hold at least the program to run, e.g. [\"python3\", \"check.py\"]",
        ),
        (
            "models = [\"small\"]\npostprocess = { command = [\"x\"], timeout_secs = 0 }\n",
            "volley.toml:11: experiments.e.postprocess.timeout_secs: must be more than 0 and at most 1e9 seconds, found 0",
        ),
        (
            "models = [\"small\"]\njudge = { model = \"judge\", prompt = \"qa\" }\n",
            "volley.toml:11: experiments.e.judge.model: no model named \"judge\" (configured: small, large)",
        ),
        (
            "models = [\"small\"]\njudge = { model = \"small\", prompt = \"grade\" }\n",
            "volley.toml:11: experiments.e.judge.prompt: no prompt named \"grade\" (configured: qa)",
        ),
        (
            "models = [\"small\"]\njudge = { model = \"small\", prompt = \"qa\", verdict = \"yes\" }\n",
            "volley.toml:11: experiments.e.judge.verdict: unknown value \"yes\" (expected one of \"correct\", \"score\")",
        ),
        (
            "models = [\"small\"]\njson_schema = \"nope.json\"\n",
            "volley.toml:11: experiments.e.json_schema: cannot read DIR/nope.json: No such file or directory (os error 2)",
        ),
        (
            "models = [\"small\"]\nmax_cost_usd = -1\n",
            "volley.toml:11: experiments.e.max_cost_usd: must be 0 or more US dollars, found -1",
        ),
        ("models = [\"small\"]\n", ""),
    ];
    for (lines, expected) in cases {
        let dir = folder();
        let text = experiment(lines);
        let got = if expected.is_empty() {
            let path = write(dir.path(), "volley.toml", &text);
            ConfigFile::load(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        } else {
            error_in(dir.path(), "volley.toml", &text)
        };
        assert_eq!(got, expected, "{lines}");
    }
}

#[test]
fn a_missing_reference_names_what_is_configured() {
    let text = "[providers.a]\nbase_url = \"http://a/v1\"\napi_key_env = \"A\"\n[providers.b]\nbase_url = \"http://b/v1\"\napi_key_env = \"B\"\n\n[models.m]\nprovider = \"c\"\n";
    assert_eq!(
        error("volley.toml", text),
        "volley.toml:9: models.m.provider: no provider named \"c\" (configured: a, b)"
    );
    let text = "[providers.a]\nbase_url = \"http://a/v1\"\napi_key_env = \"A\"\n[providers.b]\nbase_url = \"http://b/v1\"\napi_key_env = \"B\"\n\n[models.m]\nmax_tokens = 1\n";
    assert_eq!(
        error("volley.toml", text),
        "volley.toml:8: models.m: several providers are configured: say which serves this model with provider = \"…\" (configured: a, b)"
    );
    assert_eq!(
        error("volley.toml", "[models.m]\nprovider = \"x\"\n"),
        "volley.toml:2: models.m.provider: no provider named \"x\" (none is configured)"
    );
}

#[test]
fn missing_keys_are_named_at_their_table() {
    assert_eq!(
        error(
            "volley.toml",
            "[prompts.qa]\nsystem = \"s\"\n\n[prompts.other]\nuser = \"u\"\n"
        ),
        "volley.toml:1: prompts.qa: missing key \"user\""
    );
}

#[test]
fn a_dataset_must_exist_and_be_jsonl_or_csv() {
    let dir = folder();
    let text = "[datasets.arith]\n\npath = \"missing.jsonl\"\n";
    assert_eq!(
        error_in(dir.path(), "volley.toml", text),
        "volley.toml:3: datasets.arith.path: cannot read DIR/missing.jsonl: No such file or directory (os error 2)"
    );
    write(dir.path(), "data.txt", "x");
    assert_eq!(
        error_in(
            dir.path(),
            "volley.toml",
            "[datasets.d]\npath = \"data.txt\"\n"
        ),
        "volley.toml:2: datasets.d.path: a dataset is a .jsonl or .csv file, found DIR/data.txt"
    );
    // Relative to the file's folder, not to where volley runs.
    let sub = dir.path().join("conf");
    std::fs::create_dir(&sub).unwrap();
    let path = write(&sub, "v.toml", "[datasets.d]\npath = \"../arith.jsonl\"\n");
    let file = ConfigFile::load(&path).unwrap();
    assert_eq!(file.datasets[0].path, sub.join("../arith.jsonl"));
}

#[test]
fn yaml_gives_the_same_errors_at_its_own_lines() {
    let text = "providers:\n  openrouter:\n    base_url: https://openrouter.ai/api/v1\n    api_key_env: K\n    rpn: 600\n";
    assert_eq!(
        error("volley.yaml", text),
        "volley.yaml:5: providers.openrouter.rpn: unknown key (expected one of base_url, api_key_env, rpm, tpm, lanes, headers)"
    );
    let text = "run:\n  concurrency: 4\nmodels:\n  m:\n    provider: nowhere\n";
    assert_eq!(
        error("volley.yml", text),
        "volley.yml:5: models.m.provider: no provider named \"nowhere\" (none is configured)"
    );
    let text = "models:\n  small: {}\n  large: {}\ndatasets:\n  arith: {path: arith.jsonl}\nprompts:\n  qa: {user: Q}\nexperiments:\n  arith-eval:\n    datasets: [arith]\n    prompt: qa\n    models:\n      - small\n      - larg\n";
    assert_eq!(
        error("volley.yaml", text),
        "volley.yaml:14: experiments.arith-eval.models[1]: no model named \"larg\" (configured: small, large)"
    );
    let text = "providers:\n  p:\n    base_url: https://x/v1\n    api_key_env: K\n    rpm: -3\n";
    assert!(
        error("volley.yaml", text)
            .starts_with("volley.yaml:5: providers.p.rpm: must be at least 1"),
    );
    assert_eq!(
        error("volley.yaml", "run:\n  a: 1\n  a: 2\n"),
        "volley.yaml:3: duplicate mapping key: a"
    );
    assert_eq!(
        error("volley.yaml", "- 1\n- 2\n"),
        "volley.yaml:1: expected a table, found a list"
    );
}

#[test]
fn the_yaml_example_equals_the_toml_one() {
    let dir = folder();
    let toml_path = write(dir.path(), "volley.toml", EXAMPLE);
    let yaml = r#"run:
  concurrency: 64
  max_retries: 5
  expect: json
  api-key-env: [A, B]
serve:
  addr: "127.0.0.1:8080"
providers:
  openrouter:
    base_url: https://openrouter.ai/api/v1
    api_key_env: [OPENROUTER_API_KEY]
    rpm: 600
    tpm: 1000000
    lanes: account
    headers: {HTTP-Referer: "https://example.org", X-Title: evals}
  local:
    base_url: http://127.0.0.1:9000/v1
    api_key_env: LOCAL_KEY
models:
  small:
    provider: openrouter
    model: openai/gpt-4o-mini
    max_tokens: 512
    temperature: 0.0
    reasoning: {effort: low}
    body: {provider: {order: [openai]}, top_p: 0.9}
  large: {provider: local}
  judge: {provider: local, model: judge-1}
datasets:
  arith: {path: arith.jsonl}
  words: {path: words.csv, id: key}
prompts:
  qa:
    system: You answer briefly.
    user: "Question: {{ question }}"
  grade: {user: "Grade: {{ answer }}"}
experiments:
  arith-eval:
    datasets: [arith, words]
    models: [small, large]
    runs: 3
    prompt: qa
    expect: json
    json_schema: schema.json
    concurrency: 32
    max_cost_usd: 5.0
    postprocess: {command: [python3, run.py], timeout_secs: 10, workers: 2}
    judge: {model: judge, prompt: grade, verdict: score}
  plain:
    datasets: [arith]
    models: [small]
    prompt: qa
    judge: {model: judge, prompt: grade}
"#;
    let yaml_path = write(dir.path(), "volley.yaml", yaml);
    let (t, y) = (
        ConfigFile::load(&toml_path).unwrap(),
        ConfigFile::load(&yaml_path).unwrap(),
    );
    assert_eq!(t.providers, y.providers);
    assert_eq!(t.models, y.models);
    assert_eq!(t.datasets, y.datasets);
    assert_eq!(t.prompts, y.prompts);
    assert_eq!(t.experiments, y.experiments);
    let values = |f: &ConfigFile| {
        f.run
            .iter()
            .map(|d| (d.key.clone(), d.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&t), values(&y));
}

#[test]
fn files_that_are_not_config_files() {
    let dir = folder();
    let path = write(dir.path(), "volley.json", "{}");
    let e = ConfigFile::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Format { .. }));
    assert!(e.to_string().ends_with(
        "volley.json: a configuration file is TOML (name ending in .toml) or YAML (.yaml or .yml)"
    ));
    let e = ConfigFile::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert_eq!(
        error("volley.toml", "[run]\nconcurrency = \n"),
        "volley.toml:2: string values must be quoted, expected literal string"
    );
    // Not UTF-8: said, not a crash.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, [0xff, 0xfe, b'a']).unwrap();
    assert!(matches!(
        ConfigFile::load(&bad),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn error_at_points_at_any_key() {
    let file = ConfigFile::parse(
        "[providers.p]\nbase_url = \"https://x/v1\"\napi_key_env = [\"A\",\n  \"B\"]\n",
        Format::Toml,
        Path::new("v.toml"),
    )
    .unwrap();
    let path = volley_config::KeyPath::root()
        .key("providers")
        .key("p")
        .key("api_key_env")
        .index(1);
    assert_eq!(
        file.error_at(&path, "the variable B is not set")
            .to_string(),
        "v.toml:4: providers.p.api_key_env[1]: the variable B is not set"
    );
}
