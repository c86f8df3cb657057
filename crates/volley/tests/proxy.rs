//! `volley serve`'s proxy: many clients, one shared limit, streams passed through,
//! clients that leave take their requests with them, and a queue with a patience.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{ServeProc, http};
use common::{MockProc, Workspace};
use serde_json::{Value, json};

fn chat(serve: &ServeProc, content: &str) -> common::gateway::Reply {
    serve.post(
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": content}]}),
    )
}

#[test]
fn four_client_processes_share_one_limit_without_failures() {
    let ws = Workspace::new();
    // 100 requests per 2 s window: the four clients together want far more. (The
    // mock's headers say 100 as OpenAI's say a per-minute limit, so the gateway paces
    // more slowly than the window allows: the test is of the 429s and failures.)
    let mock = MockProc::start(&["--rpm", "100", "--window", "2"]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &["--concurrency", "64"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/proxy_client.py");
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            Command::new("python3")
                .args([script, &serve.base_url, "60", "8", &format!("client{i}")])
                .env_remove("OPENAI_API_KEY")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3 runs (scripts/test installs the openai package)")
        })
        .collect();
    let mut ok = 0;
    for client in clients {
        let out = client.wait_with_output().expect("client ends");
        assert!(
            out.status.success(),
            "a client failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            serve.log()
        );
        let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
        assert_eq!(summary["failed"], 0, "{summary}");
        assert!(
            summary["stream"]["chunks"].as_u64().unwrap() >= 3,
            "{summary}"
        );
        assert!(
            summary["stream"]["text"]
                .as_str()
                .unwrap()
                .contains("stream for client"),
            "{summary}"
        );
        assert!(
            summary["stream"]["usage"].as_u64().unwrap() > 0,
            "{summary}"
        );
        ok += summary["ok"].as_u64().unwrap();
    }
    assert_eq!(ok, 240);
    let stats = mock.stats();
    let requests = stats["requests"].as_u64().unwrap();
    let limited = stats["by_status"]["429"].as_u64().unwrap_or(0);
    assert!(
        limited * 100 <= requests,
        "the mock answered {limited} of {requests} requests with 429: {stats}"
    );
    // 244 requests at 50 a second cannot take less than about 4 s.
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "faster than the limit allows: {:?}",
        started.elapsed()
    );
    serve.assert_no_key_anywhere();
}

#[test]
fn a_client_that_goes_away_takes_its_upstream_attempt_with_it() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "2000"]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &["--concurrency", "1"]);
    // A: sent upstream, then its client hangs up.
    let addr = serve.addr.clone();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "a"}]}).to_string();
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // B: with one connection slot, it starts only once A's attempt is given up.
    let started = Instant::now();
    let r = chat(&serve, "b");
    r.expect(200, "B");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500) && took >= Duration::from_millis(1900),
        "B took {took:?}: A's attempt was not dropped with its client"
    );
    // A's attempt ended too, as far as the figures go.
    assert_eq!(serve.metric("volley_requests_in_flight", &[]), Some(0.0));
}

#[test]
fn a_request_that_cannot_start_in_time_gets_a_429_with_retry_after() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "3000"]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--concurrency", "1", "--proxy-max-wait", "0.5"],
    );
    let addr = serve.addr.clone();
    let first = std::thread::spawn(move || {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "slow"}]});
        http(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[("content-type".into(), "application/json".into())],
            Some(body.to_string().as_bytes()),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = chat(&serve, "queued");
    r.expect(429, "a request past --proxy-max-wait");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(r.error_message().contains("--proxy-max-wait"));
    assert_eq!(r.header("retry-after"), Some("1"));
    first.join().unwrap().expect(200, "the first request");
}

#[test]
fn proxied_errors_pass_through_and_the_client_token_never_goes_upstream() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--auth-token-env", "GATEWAY_TOKEN"],
    );
    let r = chat(&serve, "hello");
    r.expect(200, "a proxied completion");
    assert_eq!(r.json()["object"], "chat.completion");
    assert!(r.header("x-request-id").is_some());
    // The mock saw the pool's key, not the gateway's token.
    let stats = mock.stats();
    let keys: Vec<&String> = stats["by_key"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 1, "{stats}");
    assert!(keys[0].ends_with("1234"), "{stats}");
    // A 400 from the upstream comes back as it was, not retried.
    let r = serve.post(
        "/v1/chat/completions",
        &json!({"model": "m", "messages": []}),
    );
    r.expect(400, "the upstream's 400");
    r.error_message();
    // Not JSON: the gateway's own 400.
    let r = http(
        &serve.addr,
        "POST",
        "/v1/chat/completions",
        &[(
            "authorization".into(),
            format!("Bearer {}", common::gateway::GATEWAY_TOKEN),
        )],
        Some(b"not json"),
    );
    r.expect(400, "a body that is not JSON");
    // The upstream's model list, through the gateway.
    let r = serve.get("/v1/models");
    r.expect(200, "models");
    assert_eq!(r.json()["object"], "list");
    // The proxied calls count for the tenant: one success, one failure (the 400).
    let figure = |outcome: &str| {
        serve.metric(
            "volley_tenant_requests_total",
            &[
                ("tenant", "default"),
                ("via", "proxy"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(figure("succeeded"), Some(1.0));
    assert_eq!(figure("failed"), Some(1.0));
    serve.assert_no_key_anywhere();
}

#[test]
fn a_proxied_call_repeated_with_its_idempotency_key_is_answered_from_the_first() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let call = |key: &str, body: &Value| {
        http(
            &serve.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type".into(), "application/json".into()),
                ("idempotency-key".into(), key.into()),
            ],
            Some(body.to_string().as_bytes()),
        )
    };
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "once"}]});
    let first = call("k-1", &body);
    first.expect(200, "the first call");
    let again = call("k-1", &body);
    again.expect(200, "the same call again");
    // The mock numbers its replies: the same id is the same reply, not a second call.
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(mock.stats()["requests"], 1);
    let other = json!({"model": "m", "messages": [{"role": "user", "content": "another"}]});
    let r = call("k-1", &other);
    r.expect(409, "the key with another body");
    assert!(r.error_message().contains("Idempotency-Key"));

    // A stream is kept as it passed, and replayed as one.
    let streamed =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "s"}]});
    let first = call("k-2", &streamed);
    first.expect(200, "a streamed call");
    assert!(first.text().contains("data: [DONE]"), "{}", first.text());
    std::thread::sleep(Duration::from_millis(200));
    let again = call("k-2", &streamed);
    again.expect(200, "the streamed call again");
    assert_eq!(again.header("content-type"), Some("text/event-stream"));
    assert_eq!(first.text(), again.text());
    assert_eq!(mock.stats()["requests"], 2);
    // Across a restart too: the replies are in the store.
    drop(serve);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let r = http(
        &serve.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type".into(), "application/json".into()),
            ("idempotency-key".into(), "k-1".into()),
        ],
        Some(body.to_string().as_bytes()),
    );
    r.expect(200, "after a restart");
    assert_eq!(mock.stats()["requests"], 2);
}

#[test]
fn a_stream_cut_off_upstream_is_cut_off_for_the_client_and_never_replayed() {
    use std::io::{Read, Write};
    // An upstream that streams one event (echoing the key, as a careless provider
    // might) and then drops the connection mid-body.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}/v1", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            common::read_request(&mut stream);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let event = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"key {}\"}}}}]}}\n\n",
                common::TEST_KEY
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            );
            std::thread::sleep(Duration::from_millis(200));
            // Dropped without the last chunk: a cut stream.
        }
    });
    let ws = Workspace::new();
    let serve = ServeProc::start(&ws.path("data"), &upstream, &[]);
    let call = || {
        let mut s = std::net::TcpStream::connect(&serve.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let body =
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]})
                .to_string();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: cut-1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    };
    let first = call();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("data: "), "{first}");
    assert!(
        !first.ends_with("0\r\n\r\n"),
        "a cut stream ended as a whole one: {first:?}"
    );
    common::assert_no_key("the streamed reply", &first);
    assert!(first.contains("key#1"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    // Not kept for its key: the same call runs again.
    let _ = call();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    serve.assert_no_key_anywhere();
}

#[test]
fn a_401_or_402_for_one_proxied_call_takes_no_key_out_of_the_pool() {
    let upstream = common::FnServer::start(|body| {
        let text = String::from_utf8_lossy(body);
        if text.contains("poison") {
            common::RawReply {
                status: 401,
                headers: Vec::new(),
                body: br#"{"error":{"code":401,"message":"not allowed on this route"}}"#.to_vec(),
            }
        } else {
            common::RawReply {
                status: 200,
                headers: Vec::new(),
                body: common::completion("fine").to_string().into_bytes(),
            }
        }
    });
    let ws = Workspace::new();
    let serve = ServeProc::start(&ws.path("data"), &upstream.base_url, &[]);
    chat(&serve, "poison").expect(401, "the upstream's 401, passed on");
    http(&serve.addr, "GET", "/healthz", &[], None).expect(200, "still healthy");
    chat(&serve, "hello").expect(200, "the next call");
    // Paths that are not plain, or the gateway's own, never reach the upstream.
    let before = upstream.requests();
    for path in [
        "/v1/../admin/x",
        "/v1/%2e%2e/admin",
        "/v1/files/",
        "/v1/batches/batch_x/cancel/",
    ] {
        let r = serve.post(path, &json!({"model": "m"}));
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    assert_eq!(upstream.requests(), before);
}

#[test]
fn a_passing_failure_is_never_replayed_for_its_key_and_other_endpoints_count_their_usage() {
    let upstream = common::FnServer::start(|body| {
        if String::from_utf8_lossy(body).contains("draw") {
            common::RawReply {
                status: 200,
                headers: Vec::new(),
                body: br#"{"data":[{"url":"https://x/1.png"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#.to_vec(),
            }
        } else {
            common::RawReply {
                status: 503,
                headers: Vec::new(),
                body: br#"{"error":{"message":"overloaded"}}"#.to_vec(),
            }
        }
    });
    let ws = Workspace::new();
    let serve = ServeProc::start(
        &ws.path("data"),
        &upstream.base_url,
        &["--max-retries", "0"],
    );
    let keyed = |key: &str| {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        http(
            &serve.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type".into(), "application/json".into()),
                ("idempotency-key".into(), key.into()),
            ],
            Some(body.to_string().as_bytes()),
        )
    };
    keyed("k-503").expect(503, "the upstream's 503");
    keyed("k-503").expect(503, "the same call again");
    assert_eq!(
        upstream.requests(),
        2,
        "a 503 was replayed instead of tried again"
    );

    let r = serve.post(
        "/v1/images/generations",
        &json!({"model": "img", "prompt": "draw"}),
    );
    r.expect(200, "an endpoint volley knows no shape of");
    let tokens = serve.metric(
        "volley_tenant_tokens_total",
        &[("tenant", "default"), ("via", "proxy"), ("kind", "prompt")],
    );
    assert_eq!(tokens, Some(7.0));
}
