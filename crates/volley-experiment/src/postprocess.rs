//! The `postprocess` stage: a command that gets an answer as JSON on its standard input
//! and writes JSON on its standard output ("program execution": run the program the
//! model wrote, and judge what it printed). A command that hangs is killed at its
//! timeout, one that crashes or prints no JSON is recorded; neither stops the run.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::plan::PostprocessSpec;

/// The most a command may print: an answer's output is a verdict's input, not a file.
const MAX_OUTPUT: u64 = 1 << 20;
/// How much of a failing command's standard error is kept in its error line.
const MAX_STDERR: u64 = 2048;

/// Why a command's run gave no output.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `postprocess_timeout`, `postprocess_failed` or `postprocess_invalid_output`.
    pub code: &'static str,
    pub message: String,
}

/// Runs the command, at most `workers` at once.
pub struct Postprocessor {
    spec: PostprocessSpec,
    workers: Arc<Semaphore>,
    /// Environment variables the command does not inherit: the API keys.
    hidden: Vec<String>,
}

impl Postprocessor {
    /// A pool for `spec`; `hidden` names the variables (API keys) the command must not
    /// see: it runs code a model wrote.
    pub fn new(spec: PostprocessSpec, hidden: Vec<String>) -> Postprocessor {
        let workers = Arc::new(Semaphore::new(spec.workers.max(1)));
        Postprocessor {
            spec,
            workers,
            hidden,
        }
    }

    /// Runs the command on `input`; the output, or why there is none, and how long
    /// it took.
    pub async fn run(&self, input: &Value) -> (Result<Value, Failure>, Duration) {
        // The semaphore is never closed.
        let _worker = self.workers.acquire().await;
        let started = Instant::now();
        let result = match tokio::time::timeout(self.spec.timeout, self.run_once(input)).await {
            Ok(result) => result,
            // Dropping the child kills it (`kill_on_drop`).
            Err(_) => Err(Failure {
                code: "postprocess_timeout",
                message: format!(
                    "the command ran longer than {:?} and was killed",
                    self.spec.timeout
                ),
            }),
        };
        (result, started.elapsed())
    }

    async fn run_once(&self, input: &Value) -> Result<Value, Failure> {
        let failed = |message: String| Failure {
            code: "postprocess_failed",
            message,
        };
        let (program, args) = self
            .spec
            .command
            .split_first()
            .ok_or_else(|| failed("the command is empty".into()))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that what it started dies with it.
            .process_group(0);
        for name in &self.hidden {
            command.env_remove(name);
        }
        let mut child = command
            .spawn()
            .map_err(|e| failed(format!("cannot start {program}: {e}")))?;
        let _group = child.id().map(ProcessGroup);
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let bytes = serde_json::to_vec(input).unwrap_or_default();
        // Write, read and wait at once: a command that prints before it has read all
        // of its input must not deadlock against us.
        let write = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A command that exits without reading its input is not an error here;
                // its exit status says how it went.
                let _ = stdin.write_all(&bytes).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let read = async move {
            let mut out = Vec::new();
            if let Some(stdout) = stdout {
                let _ = stdout.take(MAX_OUTPUT + 1).read_to_end(&mut out).await;
            }
            out
        };
        let read_err = async move {
            let mut err = Vec::new();
            if let Some(stderr) = stderr {
                let mut limited = stderr.take(MAX_STDERR);
                let _ = limited.read_to_end(&mut err).await;
                // Drain the rest so the command never blocks on a full pipe.
                let _ = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await;
            }
            err
        };
        let ((), out, err, status) = tokio::join!(write, read, read_err, child.wait());
        let status = status.map_err(|e| failed(format!("cannot wait for {program}: {e}")))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err);
            let stderr = stderr.trim();
            return Err(failed(match stderr.is_empty() {
                true => format!("{program} exited with {status}"),
                false => format!("{program} exited with {status}: {stderr}"),
            }));
        }
        if out.len() as u64 > MAX_OUTPUT {
            return Err(Failure {
                code: "postprocess_invalid_output",
                message: format!("{program} printed more than {MAX_OUTPUT} bytes"),
            });
        }
        serde_json::from_slice(&out).map_err(|e| Failure {
            code: "postprocess_invalid_output",
            message: format!("{program} did not print one JSON value: {e}"),
        })
    }
}

/// A command's process group, killed when this is dropped: at its timeout (the run's
/// future is dropped) and after it ends, so that nothing a model's program started
/// (a subprocess stuck in a loop, one holding its output open) outlives its cell.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            // SAFETY: kill(2) with a negative pid signals that process group; it reads
            // and writes no memory of ours. A group already gone gives ESRCH, ignored.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(script: &str, timeout_ms: u64) -> Postprocessor {
        Postprocessor::new(
            PostprocessSpec {
                command: vec!["sh".into(), "-c".into(), script.into()],
                timeout: Duration::from_millis(timeout_ms),
                workers: 2,
            },
            Vec::new(),
        )
    }

    #[tokio::test]
    async fn output_crash_hang_and_garbage() {
        let input = serde_json::json!({"answer": "42"});
        let (ok, _) = pool("cat", 5_000).run(&input).await;
        assert_eq!(ok.unwrap(), input);

        let (crash, _) = pool("echo boom >&2; exit 3", 5_000).run(&input).await;
        let crash = crash.unwrap_err();
        assert_eq!(crash.code, "postprocess_failed");
        assert!(crash.message.contains("boom"), "{}", crash.message);

        let (hang, took) = pool("sleep 30", 300).run(&input).await;
        assert_eq!(hang.unwrap_err().code, "postprocess_timeout");
        assert!(took < Duration::from_secs(10), "{took:?}");

        let (garbage, _) = pool("echo not json", 5_000).run(&input).await;
        assert_eq!(garbage.unwrap_err().code, "postprocess_invalid_output");

        let (missing, _) = Postprocessor::new(
            PostprocessSpec {
                command: vec!["/nonexistent/volley-test".into()],
                timeout: Duration::from_secs(5),
                workers: 1,
            },
            Vec::new(),
        )
        .run(&input)
        .await;
        assert!(missing.unwrap_err().message.contains("cannot start"));
    }

    #[tokio::test]
    async fn what_a_command_started_dies_with_it_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let (out, _) = pool(&script, 500).run(&Value::Null).await;
        assert_eq!(out.unwrap_err().code, "postprocess_timeout");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = format!("/proc/{}", pid.trim());
        // The grandchild is killed, then reaped by init: give it a moment.
        for _ in 0..100 {
            let state = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the command's child {} outlived its timeout", pid.trim());
    }

    #[tokio::test]
    async fn hidden_variables_are_not_inherited() {
        // HOME is set wherever tests run; hiding it stands for hiding a key's variable.
        assert!(std::env::var_os("HOME").is_some());
        let hiding = Postprocessor::new(
            PostprocessSpec {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    r#"printf '"%s"' "${HOME:-hidden}""#.into(),
                ],
                timeout: Duration::from_secs(5),
                workers: 1,
            },
            vec!["HOME".into()],
        );
        let (out, _) = hiding.run(&Value::Null).await;
        assert_eq!(out.unwrap(), "hidden");
    }
}
