//! Headless Chromium for the tests that look at a page as a person would: the system's
//! `chromium`, its own profile per call, killed with its helpers if it hangs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a browser may take before the test gives up on it.
pub const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// The first of `names` found on PATH.
pub fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

pub fn chromium() -> PathBuf {
    on_path(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
        panic!(
            "`chromium` is not on PATH. This test renders the HTML report in headless \
             Chromium: CI must install chromium (e.g. `apt-get install chromium`) before \
             running the tests."
        )
    })
}

/// Runs headless Chromium on `url` with `extra` flags, stdout and stderr to files;
/// kills its whole process group if it takes longer than [`BROWSER_LIMIT`].
pub fn headless(
    browser: &Path,
    work: &Path,
    name: &str,
    extra: &[String],
    url: &str,
) -> ExitStatus {
    let profile = work.join(format!("{name}-profile"));
    std::fs::create_dir_all(&profile).expect("profile dir");
    let stdout = std::fs::File::create(work.join(format!("{name}.stdout"))).expect("stdout");
    let stderr = std::fs::File::create(work.join(format!("{name}.stderr"))).expect("stderr");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(stderr);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a hung browser is killed with its helpers.
        cmd.process_group(0);
    }
    let child = cmd.spawn().expect("start chromium");
    wait_or_kill(child, BROWSER_LIMIT).unwrap_or_else(|| {
        let log = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap_or_default();
        panic!("chromium ({name}) did not finish within {BROWSER_LIMIT:?}; killed it\n{log}")
    })
}

/// Waits for `child` (started in its own process group) to end; after `limit`, kills
/// the whole group (a browser's helpers with it) and returns `None`.
fn wait_or_kill(mut child: std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            #[cfg(unix)]
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The DOM headless Chromium builds from the page at `path`.
pub fn rendered_dom(path: &Path) -> String {
    let work = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", path.canonicalize().unwrap().display());
    let status = headless(
        &chromium(),
        work.path(),
        "dom",
        &["--dump-dom".into()],
        &url,
    );
    let log = std::fs::read_to_string(work.path().join("dom.stderr")).unwrap_or_default();
    assert!(status.success(), "chromium: {status}\n{log}");
    std::fs::read_to_string(work.path().join("dom.stdout")).unwrap()
}

/// The part of `html` from `<figure id="{id}"` to its `</figure>`.
pub fn figure<'a>(html: &'a str, id: &str) -> &'a str {
    let open = format!("<figure id=\"{id}\"");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no figure {id:?} in the page"));
    let end = html[start..]
        .find("</figure>")
        .unwrap_or_else(|| panic!("figure {id:?} is not closed"));
    &html[start..start + end]
}

/// Values of every `src`/`href`/`xlink:href`/`action` attribute and `url(...)` in `html`.
pub fn references(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for attr in [" src=", " href=", ":href=", " action=", " srcset="] {
        for (at, _) in lower.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
                _ => rest.split([' ', '>']).next().unwrap_or(""),
            };
            found.push(value.to_string());
        }
    }
    for (at, _) in lower.match_indices("url(") {
        found.push(html[at..].split(')').next().unwrap_or("").to_string());
    }
    found
}

/// Panics unless `html` is self-contained: no script, stylesheet or image from
/// anywhere, no network URL at all.
pub fn assert_self_contained(html: &str) {
    for r in references(html) {
        let r = r.to_ascii_lowercase();
        assert!(
            !(r.contains("http:") || r.contains("https:") || r.trim_start().starts_with("//")),
            "the page references a network resource: {r}"
        );
    }
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script src"), "the page loads a script");
    assert!(!lower.contains("<link"), "the page links a resource");
}

/// How long the dashboard driver may take before the test gives up on it.
pub const DRIVER_LIMIT: Duration = Duration::from_secs(120);

/// Runs `tests/browser/dashboard.mjs` (playwright-core driving the system's Chromium)
/// with `plan` and returns what it printed; panics with the page it saw if it failed.
pub fn drive_dashboard(plan: &serde_json::Value) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: scripts/test installs it (npm ci --prefix {})",
        dir.display(),
        dir.display()
    );
    let browser = chromium();
    let out_path = std::env::temp_dir().join(format!(
        "volley-driver-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("dashboard.mjs"))
        .arg(plan.to_string())
        .env("VOLLEY_CHROMIUM", &browser)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("driver output"))
        .stderr(Stdio::inherit());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): scripts/test installs nodejs"));
    let status = wait_or_kill(child, DRIVER_LIMIT).unwrap_or_else(|| {
        panic!("the dashboard driver did not finish within {DRIVER_LIMIT:?}; killed it")
    });
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}, {status}):\n{text}"));
    assert!(
        status.success() && value.get("error").is_none(),
        "the dashboard driver failed ({status}): {}\n--- the page ---\n{}",
        value["error"],
        value["page"].as_str().unwrap_or("")
    );
    value
}
