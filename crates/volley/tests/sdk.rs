//! The official `openai` Python SDK against `volley serve`, unchanged but for its
//! `base_url`: files, batches, polling, output, paging, cancel, idempotency and auth
//! (the checks are in `tests/sdk/batch_flow.py`; `scripts/test` installs the SDK).

use std::process::Command;

#[test]
fn the_official_python_sdk_runs_a_batch_through_volley_serve() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/batch_flow.py");
    let out = Command::new("python3")
        .arg(script)
        .env("VOLLEY_BIN", env!("CARGO_BIN_EXE_volley"))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("python3 runs (scripts/test installs what this test needs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK test failed ({:?}); run scripts/test to install the openai package\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
}
