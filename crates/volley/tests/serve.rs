//! `volley serve`: the Batch API end to end, with the real binary in front of the real
//! `volley mock`, driven over HTTP as a client would.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::gateway::{GATEWAY_TOKEN, ServeProc, batch_lines, http, upload_as};
use common::{MockProc, Workspace};
use serde_json::{Value, json};

/// Every custom_id of `lines`, counted.
fn counted(lines: &[Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for l in lines {
        *seen
            .entry(l["custom_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    seen
}

#[test]
fn a_batch_runs_to_completion_with_every_custom_id_once() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &["--concurrency", "16"]);
    let input = batch_lines(100);
    let file_id = serve.upload_ok("in.jsonl", input.as_bytes());
    let file = serve.get(&format!("/v1/files/{file_id}")).json();
    assert_eq!(file["bytes"], input.len());
    assert_eq!(file["status"], "processed");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(
        serve.get(&format!("/v1/files/{file_id}/content")).text(),
        input,
        "the input comes back byte for byte"
    );
    let created = serve.create_batch(&file_id);
    assert_eq!(created["object"], "batch");
    assert_eq!(created["request_counts"]["total"], 100);
    assert!(
        ["validating", "in_progress", "finalizing", "completed"]
            .contains(&created["status"].as_str().unwrap()),
        "{created}"
    );
    let id = created["id"].as_str().unwrap();
    let done = serve.wait_for(id, &["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 100, "completed": 100, "failed": 0})
    );
    for field in [
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expires_at",
    ] {
        assert!(
            done[field].as_i64().unwrap() >= done["created_at"].as_i64().unwrap(),
            "{field}: {done}"
        );
    }
    assert!(done["error_file_id"].is_null(), "{done}");
    let lines = serve.file_lines(done["output_file_id"].as_str().unwrap());
    let seen = counted(&lines);
    assert_eq!(seen.len(), 100);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let mut prompt_tokens = 0;
    for l in &lines {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"), "{l}");
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert!(l["error"].is_null(), "{l}");
        assert!(
            !l["response"]["request_id"].as_str().unwrap().is_empty(),
            "{l}"
        );
        assert!(l["response"]["body"]["choices"].is_array(), "{l}");
        prompt_tokens += l["response"]["body"]["usage"]["prompt_tokens"]
            .as_i64()
            .unwrap();
    }
    assert_eq!(done["usage"]["input_tokens"], prompt_tokens, "{done}");
    assert_eq!(mock.stats()["requests"], 100);

    // The lines finished so far, after the first N the client has.
    let partial = serve.get(&format!("/v1/batches/{id}/output?after=90"));
    partial.expect(200, "output");
    assert_eq!(partial.header("x-volley-next-after"), Some("100"));
    assert_eq!(partial.text().lines().count(), 10);
    let all = serve.get(&format!("/v1/batches/{id}/output"));
    let ids: Vec<String> = all
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(
        serve
            .get(&format!("/v1/batches/{id}/output?after=100"))
            .text(),
        ""
    );

    // Listed, newest first, with has_more; the output file too.
    let files = serve.get("/v1/files").json();
    assert_eq!(files["object"], "list");
    assert_eq!(files["has_more"], false);
    let purposes: Vec<&str> = files["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["batch_output", "batch"]);

    // The tenant's figures, from the store.
    let figure = |name: &str, labels: &[(&str, &str)]| {
        serve
            .metric(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let tenant = [("tenant", "default"), ("via", "batch")];
    assert_eq!(
        figure(
            "volley_tenant_requests_total",
            &[tenant[0], tenant[1], ("outcome", "succeeded")]
        ),
        100.0
    );
    assert_eq!(
        figure(
            "volley_tenant_tokens_total",
            &[tenant[0], tenant[1], ("kind", "prompt")]
        ),
        prompt_tokens as f64
    );
    assert_eq!(
        figure(
            "volley_tenant_batches",
            &[("tenant", "default"), ("status", "completed")]
        ),
        1.0
    );
    serve.assert_no_key_anywhere();
}

#[test]
fn bad_uploads_are_openai_shaped_400s_that_name_the_line() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let good = batch_lines(3);
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, "{\"custom_id\": \"x\", \"body\": ");
    let r = serve.upload("bad.jsonl", (lines.join("\n") + "\n").as_bytes());
    r.expect(400, "a line that is not JSON");
    let message = r.error_message();
    assert!(
        message.contains("bad.jsonl: line 3: not valid JSON"),
        "{message}"
    );

    let dup = batch_lines(2).replace("req-1", "req-0");
    let r = serve.upload("dup.jsonl", dup.as_bytes());
    r.expect(400, "a custom_id twice");
    assert!(
        r.error_message().contains("line 2: custom_id \"req-0\""),
        "{}",
        r.text()
    );

    let r = upload_as(&serve.addr, None, "in.jsonl", good.as_bytes(), "fine-tune");
    r.expect(400, "another purpose");
    assert_eq!(r.json()["error"]["param"], "purpose");

    let r = serve.upload("empty.jsonl", b"\n\n");
    r.expect(400, "no requests");
    assert!(r.error_message().contains("holds no requests"));

    let r = serve.post("/v1/files", &json!({"purpose": "batch"}));
    r.expect(400, "not multipart");
    r.error_message();
    // Nothing refused was kept.
    assert_eq!(serve.get("/v1/files").json()["data"], json!([]));
}

#[test]
fn a_line_whose_url_is_not_the_batch_endpoint_fails_the_batch_at_validation() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let mut input = batch_lines(3);
    input.push_str(
        &(json!({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": "x"}})
            .to_string()
            + "\n"),
    );
    let file_id = serve.upload_ok("mixed.jsonl", input.as_bytes());
    let batch = serve.create_batch(&file_id);
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].is_i64());
    // Nothing ran: counted as OpenAI counts a batch refused at validation.
    assert_eq!(
        batch["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    let errors = &batch["errors"];
    assert_eq!(errors["object"], "list");
    assert_eq!(errors["data"][0]["line"], 4, "{batch}");
    assert_eq!(errors["data"][0]["param"], "url");
    assert!(
        errors["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings")
    );
    assert_eq!(mock.stats()["requests"], 0);

    let r = serve.post(
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": "/v1/images/generations", "completion_window": "24h"}),
    );
    r.expect(400, "an endpoint batches cannot target");
    assert_eq!(r.json()["error"]["param"], "endpoint");
    let r = serve.post(
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
    );
    r.expect(400, "a window other than 24h");
    assert_eq!(r.json()["error"]["param"], "completion_window");
}

#[test]
fn tenants_see_only_their_own_files_and_batches_and_ids_cannot_escape() {
    let ws = Workspace::new();
    let tokens = ws.write(
        "tokens",
        "alice tok-alice-0123456789abcdef\nbob tok-bob-0123456789abcdef00\n",
    );
    let mock = MockProc::start(&[]);
    let mut serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let as_tenant = |token: &str, method: &str, path: &str, body: Option<&Value>| {
        let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        let body = body.map(|b| {
            headers.push(("content-type".into(), "application/json".into()));
            b.to_string().into_bytes()
        });
        http(&serve.addr, method, path, &headers, body.as_deref())
    };
    let alice = "tok-alice-0123456789abcdef";
    let bob = "tok-bob-0123456789abcdef00";
    let r = upload_as(
        &serve.addr,
        Some(alice),
        "a.jsonl",
        batch_lines(2).as_bytes(),
        "batch",
    );
    r.expect(200, "alice uploads");
    let file_id = r.json()["id"].as_str().unwrap().to_string();
    let r = as_tenant(
        alice,
        "POST",
        "/v1/batches",
        Some(
            &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        ),
    );
    r.expect(200, "alice creates a batch");
    let batch_id = r.json()["id"].as_str().unwrap().to_string();

    for path in [
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
        format!("/v1/batches/{batch_id}"),
        format!("/v1/batches/{batch_id}/output"),
    ] {
        as_tenant(bob, "GET", &path, None).expect(404, &format!("bob reads {path}"));
        as_tenant(alice, "GET", &path, None).expect(200, &format!("alice reads {path}"));
    }
    as_tenant(bob, "POST", &format!("/v1/batches/{batch_id}/cancel"), None)
        .expect(404, "bob cancels alice's batch");
    as_tenant(bob, "DELETE", &format!("/v1/files/{file_id}"), None)
        .expect(404, "bob deletes alice's file");
    let r = as_tenant(
        bob,
        "POST",
        "/v1/batches",
        Some(
            &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        ),
    );
    r.expect(400, "bob runs alice's file");
    assert_eq!(
        as_tenant(bob, "GET", "/v1/files", None).json()["data"],
        json!([])
    );
    assert_eq!(
        as_tenant(bob, "GET", "/v1/batches", None).json()["data"],
        json!([])
    );

    // No token, a wrong one: 401 in OpenAI's shape.
    let r = http(&serve.addr, "GET", "/v1/files", &[], None);
    r.expect(401, "no token");
    r.error_message();
    as_tenant("tok-alice-0123456789abcdeX", "GET", "/v1/files", None).expect(401, "a wrong token");

    // Ids that are not the gateway's are not found, whatever they hold.
    for bad in [
        "/v1/files/..%2F..%2Fvolley.sqlite/content",
        "/v1/files/../../volley.sqlite",
        "/v1/files/file-..%2F..%2F..%2Fetc%2Fpasswd/content",
        "/v1/files/volley.sqlite/content",
        "/v1/batches/batch_..%2F..%2Fx",
    ] {
        let r = as_tenant(alice, "GET", bad, None);
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
    }
    serve.token = Some(alice.to_string());
    serve.wait_for(&batch_id, &["completed"], Duration::from_secs(30));
}

#[test]
fn an_idempotency_key_returns_the_same_batch_and_refuses_another_body() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "20"]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--auth-token-env", "GATEWAY_TOKEN"],
    );
    let file_id = serve.upload_ok("in.jsonl", batch_lines(5).as_bytes());
    let create = |key: &str, window_metadata: &str| {
        let body = json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"note": window_metadata},
        })
        .to_string();
        http(
            &serve.addr,
            "POST",
            "/v1/batches",
            &[
                ("authorization".into(), format!("Bearer {GATEWAY_TOKEN}")),
                ("content-type".into(), "application/json".into()),
                ("idempotency-key".into(), key.into()),
            ],
            Some(body.as_bytes()),
        )
    };
    let first = create("key-1", "a");
    first.expect(200, "first create");
    let again = create("key-1", "a");
    again.expect(200, "the same create again");
    assert_eq!(first.json()["id"], again.json()["id"]);
    let other = create("key-1", "b");
    other.expect(409, "the same key, another body");
    other.error_message();
    let second = create("key-2", "a");
    second.expect(200, "another key");
    assert_ne!(second.json()["id"], first.json()["id"]);
    assert_eq!(
        serve.get("/v1/batches").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // An upload repeated with its key is the same file.
    let upload = |content: &[u8]| {
        let (head, tail) = common::gateway::multipart_parts("in.jsonl", "batch");
        let body = [head, content.to_vec(), tail].concat();
        http(
            &serve.addr,
            "POST",
            "/v1/files",
            &[
                ("authorization".into(), format!("Bearer {GATEWAY_TOKEN}")),
                (
                    "content-type".into(),
                    format!(
                        "multipart/form-data; boundary={}",
                        common::gateway::BOUNDARY
                    ),
                ),
                ("idempotency-key".into(), "upload-1".into()),
            ],
            Some(&body),
        )
    };
    let a = upload(batch_lines(2).as_bytes());
    let b = upload(batch_lines(2).as_bytes());
    assert_eq!(a.json()["id"], b.json()["id"]);
    upload(batch_lines(3).as_bytes()).expect(409, "another file with the same key");

    // A cancel's key: repeated, the same answer; a key of another request, a 409.
    let batch_id = second.json()["id"].as_str().unwrap().to_string();
    let cancel = |key: &str| {
        http(
            &serve.addr,
            "POST",
            &format!("/v1/batches/{batch_id}/cancel"),
            &[
                ("authorization".into(), format!("Bearer {GATEWAY_TOKEN}")),
                ("idempotency-key".into(), key.into()),
            ],
            None,
        )
    };
    let reused = cancel("key-1");
    reused.expect(409, "a create's key used for a cancel");
    assert!(
        reused.error_message().contains("Idempotency-Key"),
        "{}",
        reused.text()
    );
    let (once, twice) = (cancel("cancel-1"), cancel("cancel-1"));
    assert_eq!(
        once.status,
        twice.status,
        "{} / {}",
        once.text(),
        twice.text()
    );
    assert!(
        !twice.text().contains("Idempotency-Key"),
        "{}",
        twice.text()
    );
}

#[test]
fn a_cancelled_batch_keeps_what_finished_and_lists_the_rest_as_cancelled() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "100"]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &["--concurrency", "4"]);
    let file_id = serve.upload_ok("in.jsonl", batch_lines(400).as_bytes());
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Some finished, most not.
    let start = std::time::Instant::now();
    while serve.get(&format!("/v1/batches/{id}")).json()["request_counts"]["completed"]
        .as_i64()
        .unwrap()
        < 8
    {
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = serve.post(&format!("/v1/batches/{id}/cancel"), &json!({}));
    r.expect(200, "cancel");
    let status = r.json()["status"].as_str().unwrap().to_string();
    assert!(
        ["cancelling", "cancelled"].contains(&status.as_str()),
        "{status}"
    );
    assert!(r.json()["cancelling_at"].is_i64());
    let done = serve.wait_for(&id, &["cancelled"], Duration::from_secs(40));
    let counts = &done["request_counts"];
    let completed = counts["completed"].as_i64().unwrap();
    assert!((8..200).contains(&completed), "{done}");
    assert_eq!(
        counts["completed"].as_i64().unwrap() + counts["failed"].as_i64().unwrap(),
        400
    );
    let output = serve.file_lines(done["output_file_id"].as_str().unwrap());
    let errors = serve.file_lines(done["error_file_id"].as_str().unwrap());
    assert_eq!(output.len() as i64, completed);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled" && e["response"].is_null()),
        "{:?}",
        errors.first()
    );
    let mut all = counted(&output);
    for (id, n) in counted(&errors) {
        *all.entry(id).or_default() += n;
    }
    assert_eq!(all.len(), 400);
    assert!(all.values().all(|n| *n == 1));
    // Nothing more is sent once it is cancelled.
    let sent = mock.stats()["requests"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mock.stats()["requests"].as_i64().unwrap(), sent);
    assert!(sent <= completed + 4, "sent {sent}, completed {completed}");
    serve
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .expect(200, "cancelling again");
}

#[test]
fn a_batch_killed_mid_run_finishes_after_a_restart_with_every_line_once() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "30"]);
    let data = ws.path("data");
    let mut serve = ServeProc::start(&data, &mock.base_url, &["--concurrency", "16"]);
    let file_id = serve.upload_ok("in.jsonl", batch_lines(1000).as_bytes());
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = std::time::Instant::now();
    while serve.get(&format!("/v1/batches/{id}")).json()["request_counts"]["completed"]
        .as_i64()
        .unwrap()
        < 300
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    serve.kill();
    let sent_before = mock.stats()["requests"].as_i64().unwrap();
    assert!(
        sent_before < 1000,
        "it finished before the kill: {sent_before}"
    );
    // What the store holds for the batch at the kill, read as it was left.
    let recorded = {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute('SELECT COUNT(*) FROM results').fetchone()[0])")
            .arg(data.join("volley.sqlite"))
            .output()
            .expect("python3 reads the store");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .expect("a count")
    };
    // Sent but not recorded at the kill: on the wire, or answered and not yet
    // committed (the writer commits in groups, a few milliseconds apart).
    let in_flight = sent_before - recorded;
    assert!(
        (0..=200).contains(&in_flight),
        "{in_flight} requests sent and not recorded at the kill ({sent_before} sent, {recorded} recorded)"
    );

    let serve = ServeProc::start(&data, &mock.base_url, &["--concurrency", "16"]);
    let done = serve.wait_for(&id, &["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 1000, "completed": 1000, "failed": 0})
    );
    let lines = serve.file_lines(done["output_file_id"].as_str().unwrap());
    let seen = counted(&lines);
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|n| *n == 1), "a line twice");
    // After the restart exactly the lines not recorded are sent: the mock saw 1,000
    // plus those in flight at the kill, and not one more.
    let sent = mock.stats()["requests"].as_i64().unwrap();
    assert_eq!(
        sent - sent_before,
        1000 - recorded,
        "{sent} requests in all, {sent_before} before the kill, {recorded} recorded then"
    );
    assert!(sent <= 1000 + in_flight);
    serve.assert_no_key_anywhere();
}

#[test]
fn a_batch_past_its_window_expires_and_keeps_its_finished_work() {
    let ws = Workspace::new();
    let mock = MockProc::start(&["--latency-ms", "200"]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--concurrency", "2", "--batch-window", "1.5"],
    );
    let file_id = serve.upload_ok("in.jsonl", batch_lines(100).as_bytes());
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = serve.wait_for(&id, &["expired", "completed"], Duration::from_secs(40));
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done["expired_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());
    let completed = done["request_counts"]["completed"].as_i64().unwrap();
    assert!((1..100).contains(&completed), "{done}");
    let output = serve.file_lines(done["output_file_id"].as_str().unwrap());
    assert_eq!(output.len() as i64, completed);
    let errors = serve.file_lines(done["error_file_id"].as_str().unwrap());
    assert_eq!(errors.len() as i64, 100 - completed);
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_expired"));
}

#[test]
fn a_batch_stops_at_its_cost_cap() {
    let ws = Workspace::new();
    // Each reply costs about 1e-5 USD (the mock's ~30 tokens at $0.5 per million).
    let mock = MockProc::start(&["--cost-per-million-tokens", "0.5", "--latency-ms", "20"]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &["--concurrency", "2"]);
    let file_id = serve.upload_ok("in.jsonl", batch_lines(300).as_bytes());
    let r = serve.post(
        "/v1/batches",
        &json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"max_cost_usd": "0.0003"},
        }),
    );
    r.expect(200, "create with a cap");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = serve.wait_for(&id, &["failed", "completed"], Duration::from_secs(40));
    assert_eq!(done["status"], "failed", "{done}");
    let cost = done["volley"]["cost_usd"].as_f64().unwrap();
    assert!(cost <= 0.0003 * 1.2 && cost > 0.0001, "{done}");
    let message = done["errors"]["data"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("metadata.max_cost_usd $0.0003"),
        "{message}"
    );
    let completed = done["request_counts"]["completed"].as_i64().unwrap();
    assert!(completed > 0 && completed < 300, "{done}");
    assert_eq!(
        done["request_counts"]["failed"].as_i64().unwrap(),
        300 - completed
    );
    assert!(done["output_file_id"].is_string());

    let r = serve.post(
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"max_cost_usd": "lots"}}),
    );
    r.expect(400, "a cap that is not a number");
}

/// Sends a 2 GB upload (`chunked`: without a Content-Length) from a thread of its own
/// until the server stops reading, and returns the server's reply.
fn upload_2gb(serve: &ServeProc, chunked: bool) -> common::gateway::Reply {
    use std::io::Write;
    const TOTAL: u64 = 2 << 30;
    let mut conn = std::net::TcpStream::connect(&serve.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let (part_head, _) = common::gateway::multipart_parts("huge.jsonl", "batch");
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", TOTAL + part_head.len() as u64)
    };
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary={}\r\n{framing}\r\n\r\n",
        serve.addr,
        common::gateway::BOUNDARY
    );
    let mut writer = conn.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        // Valid lines, so the server checks them as it goes, until it stops reading.
        let line = batch_lines(1).replace("req-0", "req-x");
        let mut block = Vec::with_capacity(1 << 20);
        while block.len() + line.len() < 1 << 20 {
            block.extend_from_slice(line.as_bytes());
        }
        let send = |w: &mut std::net::TcpStream, bytes: &[u8]| -> std::io::Result<()> {
            if chunked {
                write!(w, "{:x}\r\n", bytes.len())?;
                w.write_all(bytes)?;
                w.write_all(b"\r\n")
            } else {
                w.write_all(bytes)
            }
        };
        writer.write_all(head.as_bytes())?;
        send(&mut writer, &part_head)?;
        let mut sent = 0u64;
        while sent < TOTAL {
            send(&mut writer, &block)?;
            sent += block.len() as u64;
        }
        std::io::Result::Ok(sent)
    });
    let reply = common::gateway::read_reply(&mut conn);
    drop(conn);
    let _ = sender.join();
    reply
}

#[test]
fn a_2gb_upload_is_a_413_with_or_without_a_content_length_and_memory_stays_flat() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    for chunked in [false, true] {
        let reply = upload_2gb(&serve, chunked);
        assert_eq!(reply.status, 413, "chunked: {chunked}: {}", reply.text());
        assert!(reply.error_message().contains("512 MB"), "{}", reply.text());
        assert_eq!(reply.header("connection"), Some("close"));
    }
    let peak = serve.peak_rss();
    assert!(
        peak > 0 && peak < 100 << 20,
        "the server's peak RSS was {} MB",
        peak >> 20
    );
    // Nothing of either upload was kept.
    assert_eq!(serve.get("/v1/files").json()["data"], json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(ws.path("data").join("files"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn one_data_directory_has_one_gateway() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let _first = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let out = common::volley()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(ws.path("data"))
        .args([
            "--base-url",
            &mock.base_url,
            "--api-key-env",
            common::KEY_ENV,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("being written by another volley run"),
        "{stderr}"
    );
}

#[test]
fn a_part_header_that_never_ends_is_refused_without_holding_it() {
    use std::io::Write;
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    let mut conn = std::net::TcpStream::connect(&serve.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let header_junk = vec![b'x'; 64 << 20];
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary={}\r\nContent-Length: {}\r\n\r\n--{}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\nX-Junk: ",
        serve.addr,
        common::gateway::BOUNDARY,
        header_junk.len() + 200,
        common::gateway::BOUNDARY
    );
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(head.as_bytes())?;
        for block in header_junk.chunks(1 << 20) {
            writer.write_all(block)?;
        }
        std::io::Result::Ok(())
    });
    let reply = common::gateway::read_reply(&mut conn);
    let _ = sender.join();
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.error_message().contains("framing"),
        "{}",
        reply.text()
    );
    let peak = serve.peak_rss();
    assert!(peak < 60 << 20, "peak RSS {} MB", peak >> 20);
}

#[test]
fn paging_through_files_while_deleting_them_reaches_every_file() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(&ws.path("data"), &mock.base_url, &[]);
    for i in 0..7 {
        serve.upload_ok(&format!("f{i}.jsonl"), batch_lines(1).as_bytes());
    }
    // The SDK's auto-paging with a delete per file: each page asks after the last id
    // of the one before, which is deleted by then.
    let mut after: Option<String> = None;
    let mut deleted = 0;
    loop {
        let path = match &after {
            Some(id) => format!("/v1/files?limit=2&after={id}"),
            None => "/v1/files?limit=2".to_string(),
        };
        let page = serve.get(&path).json();
        for f in page["data"].as_array().unwrap() {
            let id = f["id"].as_str().unwrap();
            serve
                .call("DELETE", &format!("/v1/files/{id}"), None)
                .expect(200, "delete");
            deleted += 1;
            after = Some(id.to_string());
        }
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(deleted, 7);
    assert_eq!(serve.get("/v1/files").json()["data"], json!([]));
    serve
        .get(&format!("/v1/files/{}", after.unwrap()))
        .expect(404, "a deleted file");
}

#[test]
fn lines_without_a_model_keep_the_model_they_were_checked_with_across_restarts() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let data = ws.path("data");
    let mut first = ServeProc::start(&data, &mock.base_url, &["--model", "m-upload"]);
    let lines: String = (0..5)
        .map(|i| format!("{{\"id\": \"p{i}\", \"prompt\": \"question {i}\"}}\n"))
        .collect();
    let file_id = first.upload_ok("prompts.jsonl", lines.as_bytes());
    first.terminate();
    let serve = ServeProc::start(&data, &mock.base_url, &[]);
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = serve.wait_for(&id, &["completed", "failed"], Duration::from_secs(30));
    assert_eq!(done["status"], "completed", "{done}");
    let lines = serve.file_lines(done["output_file_id"].as_str().unwrap());
    assert!(
        lines
            .iter()
            .all(|l| l["response"]["body"]["model"] == "m-upload"),
        "{lines:?}"
    );
}

#[test]
fn with_a_token_metrics_need_it_too() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--auth-token-env", "GATEWAY_TOKEN"],
    );
    http(&serve.addr, "GET", "/metrics", &[], None).expect(401, "metrics without the token");
    serve.get("/metrics").expect(200, "metrics with the token");
    http(&serve.addr, "GET", "/healthz", &[], None).expect(200, "the health check");
}
