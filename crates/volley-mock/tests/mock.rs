//! The mock over real HTTP: replies, limits per key, faults, determinism and the ledger.

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
