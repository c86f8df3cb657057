//! The dashboard of `volley serve` (`GET /` and `GET /dashboard/state`), with the real
//! binary in front of the real `volley mock`: the page is self-contained and holds no
//! data, the state's numbers are the store's, its charts are drawn, no key reaches
//! either, and the token and tenants are honoured as on `/v1`.

mod common;

use std::time::{Duration, Instant};

use common::browser::{assert_self_contained, chromium, figure, headless};
use common::gateway::{GATEWAY_TOKEN, Reply, ServeProc, batch_lines, http, upload_as};
use common::{MockProc, Workspace, assert_no_key};
use serde_json::{Value, json};

/// A GET with `token` as the bearer, if any.
fn get_as(serve: &ServeProc, token: Option<&str>, path: &str) -> Reply {
    let headers: Vec<(String, String)> = token
        .map(|t| vec![("authorization".to_string(), format!("Bearer {t}"))])
        .unwrap_or_default();
    http(&serve.addr, "GET", path, &headers, None)
}

/// Polls the dashboard state until `ready` holds of it (panics after `within`).
fn state_until(
    serve: &ServeProc,
    token: Option<&str>,
    within: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = get_as(serve, token, "/dashboard/state");
        r.expect(200, "dashboard state");
        let state = r.json();
        if ready(&state) {
            return state;
        }
        assert!(
            start.elapsed() < within,
            "the dashboard state never got there: {state:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn source<'a>(state: &'a Value, id: &str) -> Option<&'a Value> {
    state["sources"].as_array()?.iter().find(|s| s["id"] == id)
}

const CHARTS: [&str; 4] = ["throughput", "latency", "tokens", "cost"];

#[test]
fn the_dashboard_shows_a_finished_batch_as_the_store_counts_it_with_charts_and_no_key() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[
        "--cost-per-million-tokens",
        "2",
        "--fail-rate",
        "0.2",
        "--rpm",
        "100000",
    ]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--concurrency", "8", "--max-retries", "0"],
    );
    let page = serve.get("/");
    page.expect(200, "the page");
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.header("content-security-policy").is_some());
    let html = page.text();
    assert_self_contained(&html);
    for part in [
        "<table id=\"sources\"",
        "id=\"updated\"",
        "<section id=\"lanes\"",
        "<section id=\"models\"",
        "<section id=\"errors\"",
        "<div id=\"auth\" hidden",
    ] {
        assert!(html.contains(part), "the page has no {part}");
    }

    let file_id = serve.upload_ok("in.jsonl", batch_lines(40).as_bytes());
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = serve.wait_for(&id, &["completed"], Duration::from_secs(60));
    // A proxied call: the proxy has a row of its own.
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    serve.post("/v1/chat/completions", &chat);
    let state = state_until(&serve, None, Duration::from_secs(20), |s| {
        source(s, "proxy:default").is_some_and(|p| p["request_counts"]["total"] == 1)
            && source(s, &id).is_some_and(|b| b["status"] == "completed")
            && CHARTS
                .iter()
                .all(|c| s["charts"][c].as_str().unwrap_or("").contains("<svg"))
    });
    let r = serve.get("/dashboard/state");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let row = source(&state, &id).unwrap();
    assert_eq!(row["request_counts"], done["request_counts"], "{state:#}");
    assert_eq!(source(&state, "proxy:default").unwrap()["kind"], "proxy");
    assert_eq!(row["kind"], "batch");
    assert_eq!(row["cancellable"], false);
    assert!(row["eta_seconds"].is_null());
    let failed = done["request_counts"]["failed"].as_u64().unwrap();
    assert!(failed > 0, "the mock's faults fail some requests: {done}");
    let errors = state["errors"].as_array().unwrap();
    let proxy_failed = source(&state, "proxy:default").unwrap()["request_counts"]["failed"]
        .as_u64()
        .unwrap();
    assert_eq!(
        errors.len() as u64,
        (failed + proxy_failed).min(20),
        "{state:#}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["source"] == id.as_str() || e["source"] == "proxy:default"),
        "{state:#}"
    );
    assert_eq!(errors[0]["code"], "server_error", "{state:#}");
    assert_eq!(state["totals"]["concurrency"], 8);
    assert_eq!(
        state["totals"]["succeeded"].as_u64().unwrap()
            + state["totals"]["failed"].as_u64().unwrap(),
        41
    );
    let lane = &state["lanes"][0];
    assert_eq!(lane["label"], "key#1", "{state:#}");
    // The mock announces its limit and what remains: the lane shows both.
    assert_eq!(lane["requests_per_minute"], 100_000, "{lane}");
    let left = lane["remaining_requests"]
        .as_u64()
        .expect("remaining requests");
    assert!((100_000 - 200..=100_000).contains(&left), "{lane}");
    assert_eq!(state["models"][0]["model"], "m");
    for chart in CHARTS {
        let svg = state["charts"][chart].as_str().unwrap();
        assert!(figure(svg, chart).contains("<svg"), "{chart}: {svg}");
        assert_self_contained(svg);
    }
    // The page updates only if the snapshot does.
    let seq = state["seq"].as_u64().unwrap();
    state_until(&serve, None, Duration::from_secs(5), |s| {
        s["seq"].as_u64().unwrap() > seq
    });
    assert_no_key("the dashboard page", &html);
    assert_no_key("the dashboard state", &serve.get("/dashboard/state").text());

    // The page's script renders the state as the DOM contract says.
    let dom = dump_dom(&ws, "open", &format!("http://{}/", serve.addr));
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-source=\"{id}\"")))
        .unwrap_or_else(|| panic!("no row of {id} in the page: {dom}"));
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(row.contains("data-status=\"completed\""), "{row}");
    let counts = &done["request_counts"];
    for (class, text) in [
        ("progress", "100%".to_string()),
        ("completed", counts["completed"].to_string()),
        ("failed", counts["failed"].to_string()),
        ("total", counts["total"].to_string()),
    ] {
        assert!(
            row.contains(&format!("<td class=\"{class}\">{text}</td>")),
            "{class} is not {text}: {row}"
        );
    }
    assert!(!row.contains("data-cancel"), "{row}");
    for chart in CHARTS {
        assert!(figure(&dom, chart).contains("<svg"), "{chart}");
    }
    assert!(!dom.contains("data-polls=\"0\""), "the page never polled");
    assert!(
        dom.contains("<div id=\"auth\" hidden"),
        "the page asks for a token"
    );
    assert_no_key("the rendered dashboard", &dom);
}

/// The dashboard's DOM after headless Chromium ran its script for a few seconds.
fn dump_dom(ws: &Workspace, name: &str, url: &str) -> String {
    let work = ws.path("browser");
    std::fs::create_dir_all(&work).expect("browser dir");
    let status = headless(
        &chromium(),
        &work,
        name,
        &["--dump-dom".into(), "--virtual-time-budget=3000".into()],
        url,
    );
    let dom = std::fs::read_to_string(work.join(format!("{name}.stdout"))).unwrap_or_default();
    assert!(status.success() && !dom.is_empty(), "chromium: {status}");
    dom
}

#[test]
fn with_a_token_the_state_needs_it_and_the_page_holds_no_data() {
    let ws = Workspace::new();
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--auth-token-env", "GATEWAY_TOKEN"],
    );
    let file_id = serve.upload_ok("in.jsonl", batch_lines(3).as_bytes());
    let id = serve.create_batch(&file_id)["id"]
        .as_str()
        .unwrap()
        .to_string();
    serve.wait_for(&id, &["completed"], Duration::from_secs(60));
    get_as(&serve, None, "/dashboard/state").expect(401, "no token");
    get_as(
        &serve,
        Some("gw-token-0123456789abcdeX"),
        "/dashboard/state",
    )
    .expect(401, "a wrong token");
    let state = state_until(&serve, Some(GATEWAY_TOKEN), Duration::from_secs(10), |s| {
        source(s, &id).is_some()
    });
    assert_eq!(source(&state, &id).unwrap()["request_counts"]["total"], 3);
    let page = get_as(&serve, None, "/");
    page.expect(200, "the page, without a token");
    let html = page.text();
    assert!(!html.contains(&id), "the page holds a batch id");
    assert!(!html.contains(GATEWAY_TOKEN), "the page holds the token");
    assert_self_contained(&html);
    assert!(
        !get_as(&serve, Some(GATEWAY_TOKEN), "/dashboard/state")
            .text()
            .contains(GATEWAY_TOKEN)
    );

    // Without a token the page asks for one; with `#token=` it shows the batch.
    let asking = dump_dom(&ws, "asking", &format!("http://{}/", serve.addr));
    assert!(
        asking.contains("<div id=\"auth\">"),
        "no token box: {asking}"
    );
    assert!(asking.contains("<input id=\"token\""), "{asking}");
    assert!(!asking.contains(&id), "{asking}");
    let url = format!("http://{}/#token={GATEWAY_TOKEN}", serve.addr);
    let shown = dump_dom(&ws, "with-token", &url);
    assert!(shown.contains(&format!("data-source=\"{id}\"")), "{shown}");
    assert!(shown.contains("<div id=\"auth\" hidden"), "{shown}");
}

#[test]
fn a_tenant_sees_only_its_own_batches() {
    let ws = Workspace::new();
    let tokens = ws.write(
        "tokens",
        "alice tok-alice-0123456789abcdef\nbob tok-bob-0123456789abcdef00\n",
    );
    let mock = MockProc::start(&[]);
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let (alice, bob) = ("tok-alice-0123456789abcdef", "tok-bob-0123456789abcdef00");
    let create = |token: &str| -> String {
        let r = upload_as(
            &serve.addr,
            Some(token),
            "in.jsonl",
            batch_lines(2).as_bytes(),
            "batch",
        );
        r.expect(200, "upload");
        let body = json!({
            "input_file_id": r.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        })
        .to_string();
        let headers = vec![
            ("authorization".to_string(), format!("Bearer {token}")),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        let r = http(
            &serve.addr,
            "POST",
            "/v1/batches",
            &headers,
            Some(body.as_bytes()),
        );
        r.expect(200, "create");
        r.json()["id"].as_str().unwrap().to_string()
    };
    let (a, b) = (create(alice), create(bob));
    for (token, own, other) in [(alice, &a, &b), (bob, &b, &a)] {
        let state = state_until(&serve, Some(token), Duration::from_secs(10), |s| {
            source(s, own).is_some()
        });
        assert!(source(&state, other).is_none(), "{state:#}");
        let ids: Vec<&str> = state["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, [own.as_str()], "{state:#}");
        assert!(!state.to_string().contains("tok-"), "a token in the state");
    }
    get_as(&serve, None, "/dashboard/state").expect(401, "no token");
}
