//! Shared test helpers: run the real `volley` binary in a fresh directory, start the
//! real `volley mock` on a free port, or a scripted one-off HTTP server; failures print
//! everything needed to understand them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod gateway;

/// The env var tests put their fake key in.
pub const KEY_ENV: &str = "VOLLEY_TEST_KEY";

/// The fake key every test run gets: tests look for it in every output.
pub const TEST_KEY: &str = "sk-test-0000000000001234";

/// Panics if `text` (the contents of `what`) holds the test key, or its secret part.
pub fn assert_no_key(what: &str, text: &str) {
    for secret in [TEST_KEY, &TEST_KEY[8..]] {
        assert!(!text.contains(secret), "the key leaked into {what}");
    }
}

pub fn volley() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.env_remove("OPENROUTER_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("VOLLEY_BASE_URL");
    // Tests talk to 127.0.0.1 directly, whatever proxy the machine is set up with.
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(proxy).env_remove(proxy.to_lowercase());
    }
    cmd.env(KEY_ENV, TEST_KEY);
    cmd
}

/// A temporary directory holding a test's input and output.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write input");
        p
    }

    /// Writes `n` shorthand prompt lines with ids `r0..r{n-1}`.
    pub fn prompts(&self, name: &str, n: usize) -> PathBuf {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "{{\"id\":\"r{i}\",\"prompt\":\"question number {i}: {}\",\"max_tokens\":50}}\n",
                "words ".repeat(i % 7)
            ));
        }
        self.write(name, &text)
    }

    /// Runs volley with `args` in this directory.
    pub fn run(&self, args: &[&str]) -> Output {
        volley()
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run volley")
    }

    /// Lines of a JSONL file (missing file = none); every line must parse.
    pub fn jsonl(&self, name: &str) -> Vec<Value> {
        read_jsonl(&self.path(name))
    }

    pub fn listing(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.join(", ")
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} has a torn last line",
        path.display()
    );
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()))
        })
        .collect()
}

/// Explains a command's output when an assertion about it fails.
pub fn explain(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", explain(out));
}

/// A `volley mock` process on a free port, killed on drop.
pub struct MockProc {
    pub child: Child,
    pub base_url: String,
    pub addr: String,
}

impl MockProc {
    pub fn start(args: &[&str]) -> MockProc {
        let mut child = volley()
            .args(["mock", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start volley mock");
        let stdout = child.stdout.take().expect("mock stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("mock prints its address");
        let base_url = first.trim().to_string();
        assert!(
            base_url.starts_with("http://127.0.0.1:"),
            "mock printed {base_url:?}"
        );
        let addr = base_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_string();
        MockProc {
            child,
            base_url,
            addr,
        }
    }

    /// `GET /mock/stats`.
    pub fn stats(&self) -> Value {
        let body = http_get(&self.addr, "/mock/stats");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats not JSON: {e}: {body}"))
    }
}

impl Drop for MockProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET, enough for the mock's stats.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// One scripted reply: status, extra headers, body.
#[derive(Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Scripted {
    pub fn new(status: u16, body: Value) -> Scripted {
        Scripted {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Scripted {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A chat completion body with usage.
pub fn completion(content: &str) -> Value {
    serde_json::json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
}

/// A tiny HTTP server that answers requests from a script (the last reply repeats) and
/// records when each arrived. For one-off sequences the mock does not model.
pub struct ScriptServer {
    pub base_url: String,
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl ScriptServer {
    pub fn start(script: Vec<Scripted>) -> ScriptServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let n = {
                    let mut a = seen.lock().unwrap();
                    a.push(Instant::now());
                    a.len() - 1
                };
                let reply = script[n.min(script.len() - 1)].clone();
                std::thread::spawn(move || {
                    read_request(&mut stream);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(reply.body.as_bytes());
                });
            }
        });
        ScriptServer {
            base_url: format!("http://{addr}/v1"),
            arrivals,
        }
    }

    pub fn requests(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

/// A reply of a [`FnServer`]: status, headers and the body's raw bytes (which need not
/// be UTF-8, or JSON).
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A tiny HTTP server whose every reply a function decides from the request's body: for
/// hostile replies the mock will not send (absurd headers, broken bodies). One thread
/// per connection, `connection: close`; it lives as long as the test process.
pub struct FnServer {
    pub base_url: String,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl FnServer {
    pub fn start(reply: impl Fn(&[u8]) -> RawReply + Send + Sync + 'static) -> FnServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let reply = Arc::new(reply);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let reply = reply.clone();
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let body = read_request(&mut stream);
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let r = reply(&body);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        r.status,
                        r.body.len()
                    );
                    if !r
                        .headers
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    {
                        head.push_str("content-type: application/json\r\n");
                    }
                    for (k, v) in &r.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&r.body);
                });
            }
        });
        FnServer {
            base_url: format!("http://{addr}/v1"),
            requests,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The case number a request's prompt carries (`case 17`).
pub fn case_of(body: &[u8]) -> usize {
    let text = String::from_utf8_lossy(body);
    let at = text.find("case ").expect("a case number in the prompt") + 5;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a case number")
}

/// Counts attempts per case; returns this attempt's number (1-based).
pub fn attempt(counts: &Mutex<std::collections::HashMap<usize, u32>>, case: usize) -> u32 {
    let mut counts = counts.lock().unwrap();
    let n = counts.entry(case).or_default();
    *n += 1;
    *n
}

pub fn cases_file(ws: &Workspace, n: usize) {
    let text: String = (0..n)
        .map(|i| format!("{{\"id\":\"c{i}\",\"prompt\":\"case {i}\",\"max_tokens\":5}}\n"))
        .collect();
    ws.write("cases.jsonl", &text);
}

/// Reads one request's head and body (by content-length); returns the body.
pub fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut reader = BufReader::new(stream);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return Vec::new();
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    body
}

/// Arguments of `volley run INPUT` against `base_url` with the test key, model `m` for
/// lines that name none, and no progress display; `extra` flags follow.
pub fn run_args<'a>(input: &'a str, base_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        input,
        "--base-url",
        base_url,
        "--api-key-env",
        KEY_ENV,
        "--model",
        "m",
    ];
    if !extra.contains(&"--progress") {
        args.extend(["--progress", "off"]);
    }
    args.extend_from_slice(extra);
    args
}

/// The README's experiment (`examples/experiment/arith.toml` and its dataset), copied
/// into `ws` and pointed at `mock` with the test key; returns the configuration file.
pub fn arith_example(ws: &Workspace, mock: &MockProc) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/experiment");
    std::fs::copy(root.join("arith.jsonl"), ws.path("arith.jsonl")).expect("copy the dataset");
    let text = std::fs::read_to_string(root.join("arith.toml"))
        .expect("read the example")
        .replace("http://127.0.0.1:8089/v1", &mock.base_url)
        .replace("VOLLEY_MOCK_KEY", KEY_ENV);
    ws.write("arith.toml", &text)
}
