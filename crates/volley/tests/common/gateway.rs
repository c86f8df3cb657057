//! Test helpers for `volley serve`: the real binary on a free port over a data
//! directory, and a small HTTP/1.1 client that shows everything on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{KEY_ENV, TEST_KEY, volley};

/// A `volley serve` process; killed on drop. Its stderr goes to a file in its folder.
pub struct ServeProc {
    pub child: Child,
    pub base_url: String,
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// The bearer token requests send, if any.
    pub token: Option<String>,
}

/// The gateway token tests give `--auth-token-env`.
pub const GATEWAY_TOKEN: &str = "gw-token-0123456789abcdef";

impl ServeProc {
    /// Starts `volley serve` on `data_dir` against `upstream` with the test key.
    pub fn start(data_dir: &Path, upstream: &str, args: &[&str]) -> ServeProc {
        let mut all = vec!["--base-url", upstream, "--api-key-env", KEY_ENV];
        all.extend_from_slice(args);
        ServeProc::start_with(data_dir, &all, &[])
    }

    /// Starts `volley serve` on `data_dir` with `args` alone (a `--config` naming its
    /// upstreams) and `env` added to its environment.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServeProc {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = data_dir.with_extension(format!(
            "log{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut child = volley()
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("GATEWAY_TOKEN", GATEWAY_TOKEN)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start volley serve");
        let stdout = child.stdout.take().expect("serve stdout");
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).ok();
        let base_url = first.trim().to_string();
        assert!(
            base_url.starts_with("http://127.0.0.1:"),
            "serve printed {base_url:?}; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let addr = base_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_string();
        let token = args
            .contains(&"--auth-token-env")
            .then(|| GATEWAY_TOKEN.to_string());
        ServeProc {
            child,
            base_url,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            token,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request with the gateway token (if it has one).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut headers = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        let body = body.map(|b| {
            headers.push(("content-type".into(), "application/json".into()));
            b.to_string().into_bytes()
        });
        http(&self.addr, method, path, &headers, body.as_deref())
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(body))
    }

    /// Uploads `content` as a batch input file.
    pub fn upload(&self, filename: &str, content: &[u8]) -> Reply {
        upload_as(
            &self.addr,
            self.token.as_deref(),
            filename,
            content,
            "batch",
        )
    }

    /// Uploads, expecting a file, and returns its id.
    pub fn upload_ok(&self, filename: &str, content: &[u8]) -> String {
        let r = self.upload(filename, content);
        r.expect(200, "upload");
        r.json()["id"].as_str().expect("file id").to_string()
    }

    /// Creates a batch of `file_id` on /v1/chat/completions and returns it.
    pub fn create_batch(&self, file_id: &str) -> Value {
        let r = self.post(
            "/v1/batches",
            &serde_json::json!({
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }),
        );
        r.expect(200, "create batch");
        r.json()
    }

    /// Polls a batch until its status is one of `statuses` (panics after `within`).
    pub fn wait_for(&self, batch_id: &str, statuses: &[&str], within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/v1/batches/{batch_id}"));
            r.expect(200, "retrieve batch");
            let batch = r.json();
            let status = batch["status"].as_str().unwrap_or_default();
            if statuses.contains(&status) {
                return batch;
            }
            assert!(
                start.elapsed() < within,
                "batch {batch_id} still {status} after {within:?}: {batch}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lines of a file's content, parsed.
    pub fn file_lines(&self, file_id: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/files/{file_id}/content"));
        r.expect(200, "file content");
        r.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The value of the sample `name` whose labels include `labels`, from `/metrics`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.get("/metrics").text();
        super::assert_no_key("/metrics", &text);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        self.child.wait().expect("wait for serve")
    }

    /// Its peak resident memory so far, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Panics if the test key is in its log, its store or any file it keeps.
    pub fn assert_no_key_anywhere(&self) {
        super::assert_no_key("the server's log", &self.log());
        for entry in walk(&self.data_dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            super::assert_no_key(&entry.display().to_string(), &text);
        }
        assert!(!TEST_KEY.is_empty());
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An HTTP reply, whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Panics, showing the reply, unless its status is `status`.
    pub fn expect(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
    }

    /// An OpenAI-shaped error: all four keys, and the message.
    pub fn error_message(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        for key in ["message", "type", "param", "code"] {
            assert!(e.get(key).is_some(), "error without {key}: {v}");
        }
        e["message"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request on a new connection, read to its end.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    read_reply(&mut s)
}

/// Reads a whole reply from a connection the server closes after it.
pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk_bytes(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk_bytes(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..end]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let rest = &body[end + 2..];
        out.extend_from_slice(&rest[..n.min(rest.len())]);
        body = rest.get(n + 2..).unwrap_or_default();
    }
    out
}

/// The boundary of the multipart bodies tests build.
pub const BOUNDARY: &str = "volley-test-boundary-7MA4YWxkTrZu0gW";

/// The multipart head before a file's content and the tail after it.
pub fn multipart_parts(filename: &str, purpose: &str) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/jsonl\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    (head.into_bytes(), tail.into_bytes())
}

/// Uploads `content` as a file with `purpose`, with the token if any.
pub fn upload_as(
    addr: &str,
    token: Option<&str>,
    filename: &str,
    content: &[u8],
    purpose: &str,
) -> Reply {
    let (head, tail) = multipart_parts(filename, purpose);
    let mut body = head;
    body.extend_from_slice(content);
    body.extend_from_slice(&tail);
    let mut headers = vec![(
        "content-type".to_string(),
        format!("multipart/form-data; boundary={BOUNDARY}"),
    )];
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    http(addr, "POST", "/v1/files", &headers, Some(&body))
}

/// `n` OpenAI Batch lines `req-0`… for /v1/chat/completions.
pub fn batch_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "custom_id": format!("req-{i}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": format!("question {i}")}]},
            })
            .to_string()
                + "\n"
        })
        .collect()
}
