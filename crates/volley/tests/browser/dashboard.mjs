// Drives a volley dashboard in headless Chromium as a person would, for the Rust tests
// (crates/volley/tests/*dashboard*.rs), which start the servers and check what this
// prints. One argument: a JSON plan
//   {"url", "complete": [ids], "cancel": [ids], "screenshot": path, "dark": bool,
//    "polls": n, "timeout_ms": ms}
// It waits until every `complete` row shows 100%, reads the rows, clicks Cancel on each
// `cancel` row and waits until it says cancelled, measures the script time of `polls`
// page updates (Chrome's own ScriptDuration), saves a screenshot, and prints one JSON
// object. Any failure prints {"error", "page"} and exits 1.
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { chromium } from 'playwright-core';

/** The system's Chromium: $VOLLEY_CHROMIUM, else the first on PATH. */
function systemChromium() {
  if (process.env.VOLLEY_CHROMIUM) return process.env.VOLLEY_CHROMIUM;
  for (const dir of (process.env.PATH || '').split(delimiter)) {
    for (const name of ['chromium', 'chromium-browser']) {
      if (existsSync(join(dir, name))) return join(dir, name);
    }
  }
  throw new Error('no chromium on PATH (scripts/test installs it)');
}

const plan = JSON.parse(process.argv[2]);
const timeout = plan.timeout_ms ?? 60000;
const out = { rows: {}, console_errors: [], requests: [] };
let browser;
let page;
try {
  browser = await chromium.launch({
    executablePath: systemChromium(),
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    colorScheme: plan.dark ? 'dark' : 'light',
  });
  page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
  page.on('pageerror', (e) => out.console_errors.push(String(e)));
  // Every URL the page asks for: the test checks none leaves the server.
  page.on('request', (r) => out.requests.push(r.url()));
  await page.goto(plan.url);

  const row = (id) => `tr[data-source="${id}"]`;
  const read = (id) => page.$eval(row(id), (tr) => ({
    status: tr.dataset.status,
    progress: tr.querySelector('td.progress')?.textContent.trim(),
    completed: tr.querySelector('td.completed')?.textContent.trim(),
    failed: tr.querySelector('td.failed')?.textContent.trim(),
    total: tr.querySelector('td.total')?.textContent.trim(),
  }));

  for (const id of plan.complete ?? []) {
    await page.waitForFunction(
      (sel) => document.querySelector(sel)?.textContent.trim() === '100%',
      `${row(id)} td.progress`,
    );
    out.rows[id] = await read(id);
  }
  for (const id of plan.cancel ?? []) {
    await page.click(`button[data-cancel="${id}"]`);
    await page.waitForFunction(
      (sel) => document.querySelector(sel)?.dataset.status === 'cancelled',
      row(id),
    );
    out.rows[id] = await read(id);
  }

  const polls = plan.polls ?? 0;
  if (polls > 0) {
    const cdp = await context.newCDPSession(page);
    await cdp.send('Performance.enable');
    const metric = async (name) =>
      (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name === name)?.value ?? 0;
    const count = () => page.$eval('#updated', (e) => Number(e.dataset.polls || 0));
    const first = await count();
    const before = await metric('ScriptDuration');
    await page.waitForFunction(
      (n) => Number(document.querySelector('#updated')?.dataset.polls || 0) >= n,
      first + polls,
    );
    const after = await metric('ScriptDuration');
    const done = (await count()) - first;
    out.polls = done;
    out.script_ms_per_update = ((after - before) * 1000) / done;
  }
  out.sections = await page.evaluate(() =>
    ['sources', 'lanes', 'models', 'errors', 'throughput', 'latency', 'tokens', 'cost']
      .filter((id) => document.getElementById(id)));
  out.svg_figures = await page.$$eval('figure svg', (s) => s.length);
  out.text = await page.evaluate(() => document.body.innerText);
  if (plan.screenshot) await page.screenshot({ path: plan.screenshot, fullPage: true });
  console.log(JSON.stringify(out));
  await browser.close();
} catch (e) {
  let html = '';
  try { html = page ? await page.content() : ''; } catch {}
  console.log(JSON.stringify({ ...out, error: String(e && e.stack || e), page: html.slice(0, 20000) }));
  if (browser) await browser.close();
  process.exit(1);
}
