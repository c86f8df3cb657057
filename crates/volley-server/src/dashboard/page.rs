//! The dashboard page: HTML, the stylesheet every volley page shares
//! ([`volley_charts::STYLE`]) and a small script, all inline, so the page works offline
//! and fetches nothing but its own gateway's state.
//!
//! The script polls `/dashboard/state` once a second and updates the page in place:
//! the sources table is keyed by source id and only changed cells are written (a row's
//! Cancel button is not replaced under the pointer), the other parts are replaced only
//! when their HTML changed. The charts arrive drawn; the page only swaps them in.
//!
//! The token: given as `#token=…` (a fragment never reaches a server or its logs), kept
//! in `sessionStorage`, removed from the address bar, and sent as a bearer header.

use std::sync::LazyLock;

use volley_charts::STYLE;

/// What the dashboard adds to the shared stylesheet.
const EXTRA_STYLE: &str = "\
header{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap}\
#updated,#status{color:var(--muted)} #status:empty{display:none}\
#auth{border:1px solid var(--grid);padding:12px 16px;margin:16px 0;background:var(--row)}\
#auth[hidden]{display:none} #auth input{font:inherit;width:28em;max-width:100%}\
#totals{display:flex;gap:24px;flex-wrap:wrap;margin:12px 0}\
#totals div{display:flex;flex-direction:column} #totals b{font-size:18px;font-variant-numeric:tabular-nums}\
#totals span{color:var(--muted);font-size:12px}\
#sources td.progress,#sources td.completed,#sources td.failed,#sources td.total,\
#sources td.rate,#sources td.eta,#sources td.inflight{text-align:right;font-variant-numeric:tabular-nums}\
#sources tr[data-status=failed] td.status,#sources tr[data-status=expired] td.status,\
#sources tr[data-status=stopped] td.status{color:var(--bad)}\
.charts{display:flex;flex-wrap:wrap;gap:0 32px} .charts>div{overflow-x:auto;max-width:100%}\
button{font:inherit}";

const BODY: &str = r##"<header><h1>volley</h1><div id="updated" data-polls="0">connecting…</div><div id="status"></div></header>
<div id="auth" hidden><p id="auth-why">This gateway needs a token.</p><input id="token" type="password" autocomplete="off" placeholder="gateway token" aria-label="gateway token"> <button id="token-save" type="button">Use token</button></div>
<section id="totals"></section>
<h2>Progress</h2>
<div class="wide"><table id="sources" class="grid"><thead><tr><th>source</th><th>status</th><th>progress</th><th>completed</th><th>failed</th><th>total</th><th>req/s</th><th>ETA</th><th>in flight</th><th></th></tr></thead><tbody></tbody></table></div>
<div class="charts"><div id="chart-throughput"></div><div id="chart-latency"></div></div>
<section id="lanes"><h2>Lanes</h2><div class="body"></div></section>
<section id="models"><h2>Models</h2><div class="body"></div><div class="charts"><div id="chart-tokens"></div><div id="chart-cost"></div></div></section>
<section id="errors"><h2>Latest errors</h2><div class="body"></div></section>"##;

const SCRIPT: &str = r##""use strict";
(() => {
  const KEY = "volley-dashboard-token";
  const ENDED = new Set(["completed", "failed", "expired", "cancelled", "stopped"]);
  const CELLS = '<td class="id"><code></code></td><td class="status"></td><td class="progress"></td><td class="completed"></td><td class="failed"></td><td class="total"></td><td class="rate"></td><td class="eta"></td><td class="inflight"></td><td class="actions"></td>';
  const $ = (id) => document.getElementById(id);
  const rows = new Map();
  const last = {};
  let token = null, polls = 0, busy = false, needToken = false;

  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    try { token = decodeURIComponent(m[1]); } catch (e) { token = m[1]; }
    try { sessionStorage.setItem(KEY, token); } catch (e) {}
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    try { token = sessionStorage.getItem(KEY); } catch (e) {}
  }

  const esc = (v) => String(v).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
  const num = (n) => (n == null ? "—" : Number(n).toLocaleString("en-US"));
  const usd = (n) => (n == null ? "—" : "$" + Number(n).toFixed(4));
  // A header value is printable ASCII: any other token can never be sent, so it is
  // asked for again rather than failing every fetch.
  const sendable = (t) => /^[\x21-\x7e]+$/.test(t);
  const headers = () => (token ? { Authorization: "Bearer " + token } : {});
  const say = (t) => { $("status").textContent = t; };
  function put(el, v) { v = String(v); if (el.textContent !== v) el.textContent = v; }
  function swap(key, el, html) { if (last[key] !== html) { last[key] = html; el.innerHTML = html; } }
  function askToken(why) {
    needToken = true;
    if (token) { token = null; try { sessionStorage.removeItem(KEY); } catch (e) {} }
    $("auth-why").textContent = why;
    $("auth").hidden = false;
    $("token").focus();
  }
  function progress(s) {
    const c = s.request_counts;
    if (s.kind === "proxy") return "—";
    if (c.total > 0) return Math.min(100, Math.floor((100 * (c.completed + c.failed)) / c.total)) + "%";
    return ENDED.has(s.status) ? "100%" : "0%";
  }
  function eta(secs) {
    if (secs == null) return "—";
    const h = Math.floor(secs / 3600), mi = Math.floor((secs % 3600) / 60), se = Math.floor(secs % 60);
    return h ? h + "h " + mi + "m" : mi ? mi + "m " + se + "s" : se + "s";
  }
  function sources(list) {
    const body = $("sources").tBodies[0];
    const seen = new Set();
    let prev = null;
    for (const s of list) {
      seen.add(s.id);
      let tr = rows.get(s.id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.source = s.id;
        tr.dataset.kind = s.kind;
        tr.innerHTML = CELLS;
        rows.set(s.id, tr);
      }
      if (tr.dataset.status !== s.status) tr.dataset.status = s.status;
      const td = tr.cells, c = s.request_counts;
      put(td[0].firstChild, s.id);
      put(td[1], s.status);
      put(td[2], progress(s));
      put(td[3], c.completed);
      put(td[4], c.failed);
      put(td[5], c.total);
      put(td[6], s.per_second == null ? "—" : s.per_second.toFixed(1));
      put(td[7], eta(s.eta_seconds));
      put(td[8], s.in_flight);
      const button = td[9].firstChild;
      if (s.cancellable && !button) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "cancel";
        b.dataset.cancel = s.id;
        b.textContent = "Cancel";
        td[9].appendChild(b);
      } else if (!s.cancellable && button) {
        td[9].textContent = "";
      }
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== tr) body.insertBefore(tr, want);
      prev = tr;
    }
    for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
  }
  function table(head, body) {
    if (!body.length) return '<p class="empty">nothing yet</p>';
    return '<div class="wide"><table class="grid"><thead><tr>' + head.map((h) => "<th>" + esc(h) + "</th>").join("") +
      "</tr></thead><tbody>" + body.map((r) => "<tr>" + r.map((v) => "<td>" + esc(v) + "</td>").join("") + "</tr>").join("") +
      "</tbody></table></div>";
  }
  function totals(t) {
    const cell = (label, v) => "<div><b>" + esc(v) + "</b><span>" + esc(label) + "</span></div>";
    return cell("in flight", num(t.in_flight) + (t.concurrency == null ? "" : " / " + num(t.concurrency))) +
      cell("succeeded", num(t.succeeded)) + cell("failed", num(t.failed)) + cell("attempts", num(t.attempts)) +
      cell("429s", num(t.rate_limited)) + cell("retries", num(t.retries)) + cell("tokens", num(t.tokens)) +
      cell("cost", usd(t.cost));
  }
  function render(s) {
    polls += 1;
    const updated = $("updated");
    updated.dataset.polls = String(polls);
    updated.textContent = "updated " + new Date(s.at).toLocaleTimeString() + " · poll " + polls;
    say("");
    sources(s.sources);
    swap("totals", $("totals"), totals(s.totals));
    swap("lanes", document.querySelector("#lanes .body"), table(
      ["lane", "requests/min", "tokens/min", "requests left", "tokens left", "state", "booked"],
      s.lanes.map((l) => [l.label, num(l.requests_per_minute), num(l.tokens_per_minute),
        num(l.remaining_requests), num(l.remaining_tokens),
        l.label.startsWith("(") ? "—" : l.retired ? "retired: " + l.retired : l.paused ? "cooling down" : "ready", l.in_flight])));
    swap("models", document.querySelector("#models .body"), table(
      ["model", "requests", "tokens", "cost"],
      s.models.map((x) => [x.model, num(x.requests), num(x.tokens), usd(x.cost)])));
    swap("errors", document.querySelector("#errors .body"), table(
      ["time", "source", "custom_id", "reason", "model", "message"],
      s.errors.map((e) => [new Date(e.at).toLocaleTimeString(), e.source || "—", e.custom_id, e.code, e.model || "—", e.message])));
    for (const id of ["throughput", "latency", "tokens", "cost"]) swap(id, $("chart-" + id), s.charts[id]);
  }
  async function poll() {
    if (busy || needToken) return;
    if (token && !sendable(token)) {
      askToken("That token holds characters no token has: enter it again.");
      return;
    }
    busy = true;
    try {
      const r = await fetch("/dashboard/state", { headers: headers(), cache: "no-store" });
      if (r.status === 401) {
        askToken(token ? "The gateway refused this token: enter another." : "This gateway needs a token: enter it, or open the page at #token=YOUR_TOKEN.");
        return;
      }
      if (!r.ok) { say("the gateway answered " + r.status); return; }
      const s = await r.json();
      $("auth").hidden = true;
      render(s);
    } catch (e) {
      say("cannot reach volley");
    } finally {
      busy = false;
    }
  }
  $("sources").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-cancel]");
    if (!b || b.disabled) return;
    b.disabled = true;
    b.textContent = "Cancelling…";
    try {
      const r = await fetch("/v1/batches/" + encodeURIComponent(b.dataset.cancel) + "/cancel", { method: "POST", headers: headers() });
      if (r.status === 401) askToken("The gateway refused this token: enter another.");
      else if (!r.ok) say("cancel: the gateway answered " + r.status);
    } catch (e) {
      say("cancel: cannot reach the gateway");
    }
    poll();
  });
  $("token-save").addEventListener("click", () => {
    const t = $("token").value.trim();
    if (!t || !sendable(t)) { $("auth-why").textContent = "A token is printable ASCII, without spaces."; return; }
    token = t;
    try { sessionStorage.setItem(KEY, t); } catch (e) {}
    $("token").value = "";
    needToken = false;
    $("auth").hidden = true;
    poll();
  });
  $("token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("token-save").click(); });
  poll();
  setInterval(poll, 1000);
})();"##;

static PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>volley dashboard</title><style>{STYLE}{EXTRA_STYLE}</style></head>\
         <body>{BODY}<script>{SCRIPT}</script></body></html>\n"
    )
});

/// The whole page.
pub fn html() -> &'static str {
    &PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_the_contract_and_fetches_nothing_elsewhere() {
        let page = html();
        for part in [
            "<table id=\"sources\"",
            "<div id=\"updated\" data-polls=\"0\"",
            "<section id=\"lanes\"",
            "<section id=\"models\"",
            "<section id=\"errors\"",
            "<div id=\"auth\" hidden",
            "<input id=\"token\"",
            "id=\"token-save\"",
            "fetch(\"/dashboard/state\"",
        ] {
            assert!(page.contains(part), "{part}");
        }
        let lower = page.to_ascii_lowercase();
        for outside in ["http:", "https:", "src=", "href=", "<link", "url("] {
            assert!(!lower.contains(outside), "{outside}");
        }
    }
}
