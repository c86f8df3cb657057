//! The mock over real HTTP: replies, limits per key, faults, determinism, the ledger, and
//! models of known accuracy with the judge that grades them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use volley_mock::{LimitShape, MockConfig, MockServer};

async fn start(config: MockConfig) -> MockServer {
    MockServer::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("mock starts")
}

fn chat_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "How many tokens is this question?"}]})
}

async fn post(
    client: &reqwest::Client,
    server: &MockServer,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", server.base_url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn a_chat_reply_is_well_formed_and_billed() {
    let server = start(MockConfig::default()).await;
    let client = reqwest::Client::new();
    let r = post(&client, &server, "sk-key-1111", &chat_body()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("How many tokens")
    );
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let stats = server.stats();
    assert_eq!(stats["tokens_billed"]["total"], usage["total_tokens"]);
    assert_eq!(stats["by_status"]["200"], 1);
    assert_eq!(stats["by_key"]["1111"]["requests"], 1);

    let emb: Value = client
        .post(format!("{}/embeddings", server.base_url()))
        .bearer_auth("k")
        .json(&json!({"model": "e", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn client_errors() {
    let server = start(MockConfig::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());
    let r = client.post(&url).json(&chat_body()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    for field in ["message", "type", "param", "code"] {
        assert!(
            err["error"].get(field).is_some(),
            "error body lacks {field}: {err}"
        );
    }
    let r = post(&client, &server, "k", &json!({"model": "m"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(server.stats()["requests"], 3);
}

#[tokio::test]
async fn the_request_limit_is_per_key_with_retry_after_and_headers() {
    let server = start(MockConfig {
        rpm: Some(3),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        let r = post(&client, &server, "sk-aaaa", &chat_body()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap(),
            (2 - i).to_string()
        );
        assert!(
            r.headers()["x-ratelimit-reset-requests"]
                .to_str()
                .unwrap()
                .ends_with('s')
        );
    }
    let r = post(&client, &server, "sk-aaaa", &chat_body()).await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert!(r.headers().get("retry-after-ms").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Another key has its own window.
    assert_eq!(
        post(&client, &server, "sk-bbbb", &chat_body())
            .await
            .status(),
        200
    );
    let stats = server.stats();
    assert_eq!(stats["by_key"]["aaaa"]["rate_limited"], 1);
    assert_eq!(stats["by_key"]["aaaa"]["peak_requests_per_minute"], 3);
    assert_eq!(stats["by_key"]["bbbb"]["requests"], 1);
    assert_eq!(stats["by_status"]["429"], 1);
    assert_eq!(stats["peak_requests_per_minute"], 4);
}

#[tokio::test]
async fn the_token_limit_refuses_what_does_not_fit() {
    let server = start(MockConfig {
        tpm: Some(40),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let r = post(&client, &server, "k", &chat_body()).await;
    assert_eq!(r.status(), 200);
    let used = 40
        - r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    assert!(used > 0);
    let mut refused = false;
    for _ in 0..5 {
        if post(&client, &server, "k", &chat_body()).await.status() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "tokens over the limit are refused");
    assert!(
        server.stats()["by_key"]["k"]["peak_tokens_per_minute"]
            .as_u64()
            .unwrap()
            <= 40
    );
}

/// A Go duration as the mock writes it (`400ms`, `1.2s`, `1m0s`), in milliseconds.
fn go_ms(text: &str) -> f64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().unwrap();
    }
    let text = text.strip_suffix('s').expect("ends in s");
    let (minutes, secs) = text.split_once('m').unwrap_or(("0", text));
    (minutes.parse::<f64>().unwrap() * 60.0 + secs.parse::<f64>().unwrap()) * 1000.0
}

fn header_text<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn a_bucket_lets_a_burst_through_then_one_at_its_rate() {
    // 5 requests per 2 s: one every 400 ms, 3 at once.
    let server = start(MockConfig {
        rpm: Some(5),
        limit_shape: LimitShape::Bucket,
        burst: Some(3),
        window: Duration::from_secs(2),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    // The bucket refills while the test runs: bounds below are "less what elapsed"
    // (and less the 10 ms a Go duration of a second or more is rounded to).
    let started = std::time::Instant::now();
    let elapsed_ms = || started.elapsed().as_secs_f64() * 1000.0;
    for left in [2u64, 1, 0] {
        let r = post(&client, &server, "sk-cccc", &chat_body()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_text(&r, "x-ratelimit-limit-requests"), "5");
        assert_eq!(
            header_text(&r, "x-ratelimit-remaining-requests"),
            left.to_string()
        );
        // Full again once the units taken have refilled (less the time since taken).
        let reset = go_ms(header_text(&r, "x-ratelimit-reset-requests"));
        let full = 400.0 * (3 - left) as f64;
        assert!(
            reset <= full && reset >= full - elapsed_ms() - 10.0,
            "reset {reset} ms"
        );
    }
    let r = post(&client, &server, "sk-cccc", &chat_body()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header_text(&r, "retry-after"), "1");
    let wait: u64 = header_text(&r, "retry-after-ms").parse().unwrap();
    assert!(
        (1..=400).contains(&wait),
        "one unit refills in 400 ms: {wait}"
    );
    assert_eq!(header_text(&r, "x-ratelimit-remaining-requests"), "0");
    let reset = go_ms(header_text(&r, "x-ratelimit-reset-requests"));
    assert!(
        reset <= 1200.0 && reset >= 1200.0 - elapsed_ms() - 10.0,
        "reset {reset} ms"
    );
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per 2s"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let r = post(&client, &server, "sk-cccc", &chat_body()).await;
    assert_eq!(r.status(), 200, "admitted after exactly retry-after-ms");
    let stats = server.stats();
    assert_eq!(stats["limit_shape"], "bucket");
    assert_eq!(stats["window_secs"], 2.0);
    assert_eq!(stats["by_key"]["cccc"]["rate_limited"], 1);
    assert_eq!(stats["by_key"]["cccc"]["peak_requests_per_window"], 4);
    assert_eq!(stats["peak_requests_per_minute"], 4);

    // Hidden limits behave as with a window: silent successes, OpenRouter's 429.
    let hidden = start(MockConfig {
        rpm: Some(1),
        limit_shape: LimitShape::Bucket,
        hide_limits: true,
        ..MockConfig::default()
    })
    .await;
    let ok = post(&client, &hidden, "k", &chat_body()).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("x-ratelimit-remaining-requests").is_none());
    let limited = post(&client, &hidden, "k", &chat_body()).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(header_text(&limited, "x-ratelimit-limit"), "1");
    assert!(
        limited
            .headers()
            .get("x-ratelimit-limit-requests")
            .is_none()
    );
}

#[tokio::test]
async fn faults_are_what_they_say() {
    let client = reqwest::Client::new();
    let fail = start(MockConfig {
        fail_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let r = post(&client, &fail, "k", &chat_body()).await;
    assert!([500, 502, 503].contains(&r.status().as_u16()));
    assert_eq!(fail.stats()["tokens_billed"]["total"], 0);

    let malformed = start(MockConfig {
        malformed_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let r = post(&client, &malformed, "k", &chat_body()).await;
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

    let reset = start(MockConfig {
        reset_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    // The connection drops mid-reply: the client sees either no response or a body
    // that breaks off, depending on how much hyper flushed first.
    let sent = client
        .post(format!("{}/chat/completions", reset.base_url()))
        .bearer_auth("k")
        .json(&chat_body())
        .send()
        .await;
    match sent {
        Ok(r) => assert!(r.bytes().await.is_err(), "the body breaks off"),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    assert_eq!(reset.stats()["faults"]["reset"], 1);

    let hang = start(MockConfig {
        hang_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let timed_out = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        post(&client, &hang, "k", &chat_body()),
    )
    .await;
    assert!(timed_out.is_err(), "a hung request never answers");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_and_reset_clears() {
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = start(MockConfig {
            fail_rate: 0.5,
            seed: 42,
            ..MockConfig::default()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                post(&client, &server, "k", &chat_body())
                    .await
                    .status()
                    .as_u16(),
            );
        }
        runs.push(statuses);
        let reset: Value = client
            .post(format!("http://{}/mock/reset", server.addr()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reset["ok"], true);
        assert_eq!(server.stats()["requests"], 0);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s >= 500));
}

#[tokio::test]
async fn credits_in_flight_budget_hidden_limits_and_key_info() {
    let client = reqwest::Client::new();
    let config = MockConfig {
        rpm: Some(1),
        hide_limits: true,
        key_credits: [("aaaa".to_string(), 1)].into_iter().collect(),
        ..MockConfig::default()
    };
    let server = start(config).await;
    // Hidden limits: a success says nothing; the 429 speaks OpenRouter's dialect.
    let ok = post(&client, &server, "sk-bbbb", &chat_body()).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("x-ratelimit-limit-requests").is_none());
    let limited = post(&client, &server, "sk-bbbb", &chat_body()).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["x-ratelimit-limit"], "1");
    let reset: u128 = limited.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset > 1_700_000_000_000, "epoch milliseconds");
    // Credits: the first request spends the credit, the next gets 402.
    assert_eq!(
        post(&client, &server, "sk-aaaa", &chat_body())
            .await
            .status(),
        200
    );
    let spent = post(&client, &server, "sk-aaaa", &chat_body()).await;
    assert_eq!(spent.status(), 402);
    let body: Value = spent.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credits")
    );
    let info: Value = client
        .get(format!("{}/key", server.base_url()))
        .bearer_auth("sk-aaaa")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["data"]["limit"], 1);
    assert_eq!(info["data"]["limit_remaining"], 0);

    let budget = start(MockConfig {
        in_flight_budget: Some(1),
        latency_ms: 300,
        ..MockConfig::default()
    })
    .await;
    let body = chat_body();
    let (a, b) = tokio::join!(post(&client, &budget, "k", &body), async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        post(&client, &budget, "k", &body).await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 402);
    assert_eq!(b.headers()["retry-after"], "1");
    let body: Value = b.json().await.unwrap();
    assert_eq!(
        body["error"]["metadata"]["limit_source"],
        "openrouter_in_flight_budget"
    );
}

/// The content of a chat reply that must have succeeded.
async fn content_of(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("a JSON reply");
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("a text content")
        .to_string()
}

/// A question for `model`, distinct for each `q`, with the body's `seed` when given.
fn question(model: &str, q: usize, seed: Option<u64>) -> Value {
    let mut body = json!({"model": model, "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": format!("What is {q} + {q}?")},
    ]});
    if let Some(seed) = seed {
        body["seed"] = json!(seed);
    }
    body
}

/// Whether each answer is marked correct, in order; every answer must carry a marker.
async fn verdicts(client: &reqwest::Client, server: &MockServer, bodies: &[Value]) -> Vec<bool> {
    use futures_util::StreamExt;
    futures_util::stream::iter(bodies)
        .map(|body| async move { content_of(post(client, server, "k", body).await).await })
        .buffered(32)
        .map(|content| {
            if content.ends_with(" [mock:correct]") {
                true
            } else {
                assert!(content.ends_with(" [mock:wrong]"), "no marker: {content}");
                false
            }
        })
        .collect()
        .await
}

#[tokio::test]
async fn answers_are_correct_at_the_model_s_accuracy() {
    let server = start(MockConfig {
        accuracy: vec![("m".to_string(), 0.7), ("*".to_string(), 0.0)],
        seed: 11,
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let bodies: Vec<Value> = (0..2000).map(|q| question("m", q, None)).collect();
    let correct = verdicts(&client, &server, &bodies)
        .await
        .into_iter()
        .filter(|c| *c)
        .count();
    let fraction = correct as f64 / 2000.0;
    assert!((0.65..=0.75).contains(&fraction), "{fraction}");
    // `*` stands for every model not named.
    let other: Vec<Value> = (0..20).map(|q| question("other", q, None)).collect();
    assert!(verdicts(&client, &server, &other).await.iter().all(|c| !c));
    // Without accuracies, the plain echo carries no marker.
    let plain = start(MockConfig::default()).await;
    let content = content_of(post(&client, &plain, "k", &question("m", 1, None)).await).await;
    assert_eq!(content, "Mock reply to: What is 1 + 1?");
}

#[tokio::test]
async fn the_same_request_gets_the_same_verdict_and_another_seed_draws_again() {
    let config = MockConfig {
        accuracy: vec![("m".to_string(), 0.5)],
        seed: 3,
        ..MockConfig::default()
    };
    let server = start(config.clone()).await;
    let client = reqwest::Client::new();
    let unseeded: Vec<Value> = (0..200).map(|q| question("m", q, None)).collect();
    let run0: Vec<Value> = (0..200).map(|q| question("m", q, Some(0))).collect();
    let run1: Vec<Value> = (0..200).map(|q| question("m", q, Some(1))).collect();
    let first = verdicts(&client, &server, &unseeded).await;
    assert_eq!(first, verdicts(&client, &server, &unseeded).await);
    let (a, b) = (
        verdicts(&client, &server, &run0).await,
        verdicts(&client, &server, &run1).await,
    );
    assert_eq!(b, verdicts(&client, &server, &run1).await);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        (50..150).contains(&differ),
        "independent runs: {differ} differ"
    );
    // Another mock with the same seed gives the same verdicts, whatever its dice roll.
    let again = start(MockConfig {
        latency_ms: 1,
        ..config
    })
    .await;
    assert_eq!(first, verdicts(&client, &again, &unseeded).await);

    // A streamed reply carries the same content, marker included.
    let whole = content_of(post(&client, &server, "k", &run0[7]).await).await;
    let mut streamed_body = run0[7].clone();
    streamed_body["stream"] = json!(true);
    let events = post(&client, &server, "k", &streamed_body)
        .await
        .text()
        .await
        .unwrap();
    let streamed: String = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let chunk: Value = serde_json::from_str(d).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, whole);
}

/// A judge request whose user message holds `answer`.
fn judge_body(answer: &str) -> Value {
    json!({"model": "judge", "messages": [
        {"role": "system", "content": "Grade the answer. Reply {\"correct\": bool}."},
        {"role": "user", "content": format!("Question: 2+2?\nAnswer: {answer}")},
    ]})
}

#[tokio::test]
async fn a_judge_grades_the_last_marked_answer() {
    let server = start(MockConfig {
        accuracy: vec![("right".to_string(), 1.0), ("wrong".to_string(), 0.0)],
        judges: vec!["judge".to_string()],
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    for (model, verdict) in [("right", true), ("wrong", false)] {
        let answer = content_of(post(&client, &server, "k", &question(model, 2, None)).await).await;
        let r = post(&client, &server, "k", &judge_body(&answer)).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content, format!(r#"{{"correct": {verdict}}}"#));
        let parsed: Value = serde_json::from_str(content).unwrap();
        assert_eq!(parsed, json!({"correct": verdict}));
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    let judged = |answer: &'static str| {
        let client = client.clone();
        let server = &server;
        async move { content_of(post(&client, server, "k", &judge_body(answer)).await).await }
    };
    assert_eq!(
        judged("4 [mock:wrong], no: 4 [mock:correct]").await,
        r#"{"correct": true}"#
    );
    assert_eq!(
        judged("4 [mock:correct], no: 5 [mock:wrong]").await,
        r#"{"correct": false}"#
    );
    assert_eq!(judged("no marker").await, r#"{"correct": false}"#);
    // A judge reads text parts too, and is billed like any reply.
    let parts = json!({"model": "judge", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Answer: 4 [mock:correct]"},
    ]}]});
    assert_eq!(
        content_of(post(&client, &server, "k", &parts).await).await,
        r#"{"correct": true}"#
    );
    assert_eq!(server.stats()["by_model"]["judge"]["requests"], 6);
}

#[tokio::test]
async fn a_judge_fumbles_the_format_at_its_invalid_rate() {
    let client = reqwest::Client::new();
    let body = judge_body("4 [mock:correct]");
    for (rate, all_json) in [(1.0, false), (0.0, true)] {
        let server = start(MockConfig {
            judges: vec!["judge".to_string()],
            judge_invalid_rate: rate,
            ..MockConfig::default()
        })
        .await;
        for _ in 0..30 {
            let r = post(&client, &server, "k", &body).await;
            assert_eq!(r.status(), 200);
            let reply: Value = r.json().await.unwrap();
            assert!(reply["usage"]["total_tokens"].as_u64().unwrap() > 0);
            let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(content).is_ok(),
                all_json,
                "rate {rate}: {content}"
            );
        }
        assert_eq!(server.stats()["by_model"]["judge"]["requests"], 30);
    }
    // Drawn per attempt: the same request, sent again, sometimes parses and sometimes not.
    let server = start(MockConfig {
        judges: vec!["judge".to_string()],
        judge_invalid_rate: 0.5,
        seed: 5,
        ..MockConfig::default()
    })
    .await;
    let mut parsed = Vec::new();
    for _ in 0..40 {
        let content = content_of(post(&client, &server, "k", &body).await).await;
        parsed.push(serde_json::from_str::<Value>(&content).is_ok());
    }
    assert!(
        parsed.contains(&true) && parsed.contains(&false),
        "{parsed:?}"
    );
}

#[tokio::test]
async fn by_model_counts_requests_and_tokens_and_resets() {
    let server = start(MockConfig {
        rpm: Some(2),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let mut billed = [0u64; 2];
    for (i, (model, key)) in [("a", "k1"), ("a", "k1"), ("b", "k2")]
        .into_iter()
        .enumerate()
    {
        let r = post(&client, &server, key, &question(model, i, None)).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        billed[usize::from(model == "b")] += body["usage"]["total_tokens"].as_u64().unwrap();
    }
    // Refused by the limit: counted as a request for its model, billed nothing.
    assert_eq!(
        post(&client, &server, "k1", &question("a", 9, None))
            .await
            .status(),
        429
    );
    // Embeddings are no chat model's.
    let r = client
        .post(format!("{}/embeddings", server.base_url()))
        .bearer_auth("k3")
        .json(&json!({"model": "a", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats = server.stats();
    let by_model = stats["by_model"].as_object().unwrap();
    assert_eq!(by_model.len(), 2, "{stats}");
    assert_eq!(by_model["a"]["requests"], 3);
    assert_eq!(by_model["b"]["requests"], 1);
    assert_eq!(by_model["a"]["tokens_billed"]["total"], billed[0]);
    assert_eq!(by_model["b"]["tokens_billed"]["total"], billed[1]);
    for book in by_model.values() {
        let tokens = &book["tokens_billed"];
        assert_eq!(
            tokens["total"].as_u64().unwrap(),
            tokens["prompt"].as_u64().unwrap() + tokens["completion"].as_u64().unwrap()
        );
    }
    // Over HTTP as well, then cleared by a reset.
    let url = format!("http://{}/mock", server.addr());
    let served: Value = client
        .get(format!("{url}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["by_model"], stats["by_model"]);
    client.post(format!("{url}/reset")).send().await.unwrap();
    assert_eq!(server.stats()["by_model"], json!({}));
}

#[tokio::test]
async fn hostile_chat_bodies_neither_break_grading_nor_grow_the_books() {
    let server = start(MockConfig {
        accuracy: vec![("*".to_string(), 0.5)],
        judges: vec!["judge".to_string()],
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let huge = "m".repeat(100_000);
    let odd_contents = [
        json!(42),
        json!({"text": 1}),
        json!([1, {"text": 2}, null]),
        json!(null),
    ];
    for model in ["a", "judge", huge.as_str()] {
        for content in &odd_contents {
            let body = json!({"model": model, "messages": [{"role": "user", "content": content}, "not an object"]});
            let r = post(&client, &server, "k", &body).await;
            assert_eq!(r.status(), 200, "{model:.10} {content}");
        }
        // No messages at all: refused, but counted for its model.
        let r = post(
            &client,
            &server,
            "k",
            &json!({"model": model, "messages": []}),
        )
        .await;
        assert_eq!(r.status(), 400);
    }
    for model in [json!(5), json!(null), json!(["a"])] {
        let body = json!({"model": model, "seed": {"odd": true}, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(post(&client, &server, "k", &body).await.status(), 200);
    }
    let stats = server.stats();
    let by_model = stats["by_model"].as_object().unwrap();
    assert_eq!(by_model["a"]["requests"], 5);
    assert_eq!(by_model["judge"]["requests"], 5);
    assert_eq!(
        by_model["(other)"]["requests"], 5,
        "the huge name has no book of its own"
    );
    assert_eq!(
        by_model.len(),
        3,
        "models that are not strings are not counted"
    );
}
