#!/usr/bin/env node
// End-to-end checks of tokgate's status web UI (docs/web-ui.md) in a real browser: Debian's
// Chromium (/usr/bin/chromium) driven by playwright-core, never a downloaded browser.
//
//   node tests/ui/webui_e2e.mjs CONFIG.json
//
// Run by tests/integration/test_webui.py, which starts tokgate (with a policy that blocks one
// TikTok path and logs the rest, and a flow log so the UI's flow feed is fed) and an origin, then
// asserts on what this script reports. CONFIG.json:
//   admin          "http://127.0.0.1:PORT" (the admin listener: the UI)
//   proxy          "http://127.0.0.1:PORT" (the proxy listener)
//   curl_cacert    a PEM bundle curl trusts: tokgate's CA (intercepted) + the test CA (spliced)
//   tiktok         "www.tiktok.com:PORT" (intercepted, goes to the origin)
//   other          "example.org:PORT" (spliced)
//   blocked_path   a path the policy blocks (451)
//   explain        {"url","ua","headers":[...]} typed into the explain form
//   screenshots    the directory the PNGs go to
//   chromium       the browser executable (default /usr/bin/chromium)
//   timeout_ms     the whole run's bound
//
// The script makes its own traffic by spawning curl through the proxy at the steps that need it.
// stdout: one JSON object per line, {"check": NAME, ...observations} or {"check": NAME,
// "error": "..."} when a step could not complete; a step's failure does not stop the others.
// The script judges only what it alone can see (the DOM); tokgate-side truth (CLI output, the
// flow log) is compared by the Python test.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const ADMIN = config.admin.replace(/\/$/, '');
const SHOTS = config.screenshots;
const CURL_TIMEOUT_S = 15;
const UI_TIMEOUT = 10000;

// The Chromium flags the machine needs: no sandbox (CI runs as root), no GPU, and nothing that
// talks to the internet (there is none; a background fetch would only slow the run down).
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-default-apps', '--disable-extensions', '--disable-dev-shm-usage',
  '--no-default-browser-check', '--metrics-recording-only', '--password-store=basic'];

function emit(check, data) {
  process.stdout.write(JSON.stringify({ check, ...data }) + '\n');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tid = (name) => `[data-testid="${name}"]`;

// --- traffic ------------------------------------------------------------------------------------

// One curl transfer through the proxy; resolves to {code, status, stderr}.
function curl(url, { ua, headers = [] } = {}) {
  const args = ['-q', '-sS', '--max-time', String(CURL_TIMEOUT_S), '--proxy', config.proxy,
    '--cacert', config.curl_cacert, '-o', '/dev/null', '-w', '%{http_code}'];
  if (ua != null) args.push('-A', ua);
  for (const h of headers) args.push('-H', h);
  args.push(url);
  return new Promise((resolve) => {
    execFile('curl', args, { timeout: (CURL_TIMEOUT_S + 5) * 1000, env: cleanEnv() },
      (error, stdout, stderr) => resolve({
        code: error ? (error.code ?? -1) : 0, status: Number(stdout) || 0, url, stderr: String(stderr),
      }));
  });
}

function cleanEnv() {
  const env = { ...process.env };
  for (const k of ['http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'HTTP_PROXY',
    'HTTPS_PROXY', 'ALL_PROXY', 'NO_PROXY']) delete env[k];
  return env;
}

// --- page observers -------------------------------------------------------------------------------

const observed = { console: [], pageErrors: [], dialogs: [], csp: [], failedRequests: [], httpErrors: [] };

async function observe(context, label) {
  // A securitypolicyviolation listener installed before any page script (init scripts are
  // injected by the browser, not subject to the page's CSP), reporting through a binding.
  await context.exposeBinding('__tokgateTestCsp', (_source, v) => observed.csp.push({ label, ...v }));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__tokgateTestCsp({ directive: e.violatedDirective, blocked: e.blockedURI,
        sample: e.sample, source: e.sourceFile, line: e.lineNumber });
    });
  });
  context.on('page', (page) => watchPage(page, label));
}

function watchPage(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') {
      observed.console.push({ label, type: m.type(), text: m.text(), url: page.url() });
    }
  });
  page.on('pageerror', (e) => observed.pageErrors.push({ label, message: String(e && e.message) }));
  page.on('dialog', (d) => {
    observed.dialogs.push({ label, type: d.type(), message: d.message(), url: page.url() });
    d.dismiss().catch(() => {});
  });
  page.on('response', (r) => {
    if (r.status() >= 400) observed.httpErrors.push({ label, url: r.url(), status: r.status() });
  });
  page.on('requestfailed', (r) => {
    observed.failedRequests.push({ label, url: r.url(), failure: r.failure() && r.failure().errorText });
  });
}

// --- DOM readers ----------------------------------------------------------------------------------

async function text(page, testid) {
  const node = page.locator(tid(testid));
  if (await node.count() === 0) return { missing: testid };
  return (await node.first().textContent()) ?? '';
}

async function isHidden(page, testid) {
  return page.evaluate((sel) => {
    const node = document.querySelector(sel);
    if (!node) return null;
    return node.hidden || node.closest('[hidden]') !== null || getComputedStyle(node).display === 'none';
  }, tid(testid));
}

// Waits until the element's text is set (not empty and not the placeholder "–").
async function waitFilled(page, testid, timeout = UI_TIMEOUT) {
  await page.waitForFunction((sel) => {
    const node = document.querySelector(sel);
    const t = node && node.textContent.trim();
    return Boolean(t && t !== '–');
  }, tid(testid), { timeout });
}

function parseCount(value) {
  const digits = String(value).replace(/[,\s]/g, '');
  return /^\d+$/.test(digits) ? Number(digits) : null;
}

// The flows table's rows as [{seq, cells: {col: text}}], in table order.
async function flowRows(page) {
  return page.evaluate((sel) => {
    const table = document.querySelector(sel);
    if (!table) return null;
    return [...table.querySelectorAll('tbody tr[data-seq]')].map((tr) => {
      const cells = {};
      for (const td of tr.querySelectorAll('td[data-col]')) cells[td.dataset.col] = td.textContent;
      return { seq: Number(tr.dataset.seq), cells };
    });
  }, tid('flows-table'));
}

// Waits for a row whose cell `col` equals (`equals`) or contains (`includes`) a text; returns
// its seq. Declarative on purpose: the page's CSP forbids building a function from a string.
async function waitForRow(page, { col, equals, includes }, timeout = UI_TIMEOUT) {
  const handle = await page.waitForFunction(({ sel, c, eq, inc }) => {
    for (const tr of document.querySelectorAll(`${sel} tbody tr[data-seq]`)) {
      const td = tr.querySelector(`td[data-col="${c}"]`);
      const t = td ? td.textContent.trim() : '';
      if ((eq != null && t === eq) || (inc != null && t.includes(inc))) return Number(tr.dataset.seq);
    }
    return false;
  }, { sel: tid('flows-table'), c: col, eq: equals ?? null, inc: includes ?? null }, { timeout, polling: 200 });
  return handle.jsonValue();
}

// Counts of what an injected payload would have created.
async function domInjection(page) {
  return page.evaluate(() => ({
    scripts: [...document.querySelectorAll('script')].map((s) => s.getAttribute('src') || `inline:${s.textContent.slice(0, 80)}`),
    imgs: document.querySelectorAll('img').length,
    handlers: [...document.querySelectorAll('*')].filter((n) => [...n.attributes].some((a) => /^on/i.test(a.name)))
      .map((n) => n.outerHTML.slice(0, 200)),
  }));
}

async function detailFields(page) {
  return page.evaluate(() => {
    const dl = document.querySelector('[data-testid="detail-fields"]');
    if (!dl) return null;
    const out = {};
    for (const dt of dl.querySelectorAll('dt[data-field]')) {
      const dd = dt.nextElementSibling;
      out[dt.dataset.field] = dd ? dd.textContent : null;
    }
    return out;
  });
}

async function shot(page, name, options = {}) {
  const file = path.join(SHOTS, name);
  await page.screenshot({ path: file, ...options });
  return file;
}

async function download(page, testid) {
  const link = page.locator(tid(testid));
  if (await link.count() === 0) return { missing: testid };
  const href = await link.first().getAttribute('href');
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: UI_TIMEOUT }),
    link.first().click()]);
  const file = await dl.path();
  const bytes = fs.readFileSync(file);
  return { href, filename: dl.suggestedFilename(), url: dl.url(), base64: bytes.toString('base64') };
}

// --- the steps --------------------------------------------------------------------------------------

const screenshots = {};
let blockedSeq = null;

async function step(name, fn) {
  try {
    const data = await fn();
    if (data !== undefined) emit(name, data);
  } catch (e) {
    emit(name, { error: String(e && e.stack || e).slice(0, 2000) });
  }
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: config.chromium || '/usr/bin/chromium',
    args: CHROMIUM_ARGS, headless: true, timeout: 30000 });
  try {
    await run(browser);
  } finally {
    await browser.close().catch(() => {});
  }
}

async function run(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 },
    acceptDownloads: true, locale: 'en-US', timezoneId: 'UTC' });
  await observe(context, 'desktop');
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);

  const https = (authority, p) => `https://${authority}${p}`;

  // 1. The dashboard loads with its facts.
  await step('dashboard', async () => {
    const response = await page.goto(`${ADMIN}/`, { waitUntil: 'load' });
    for (const id of ['version', 'uptime', 'policy-name', 'ca-fingerprint']) {
      await waitFilled(page, id).catch(() => {});
    }
    return {
      http_status: response.status(),
      csp: response.headers()['content-security-policy'] || null,
      version: await text(page, 'version'),
      uptime: await text(page, 'uptime'),
      policy_name: await text(page, 'policy-name'),
      ca_fingerprint: await text(page, 'ca-fingerprint'),
      reload_error_hidden: await isHidden(page, 'reload-error'),
      live_state: await page.waitForFunction((sel) => {
        const t = document.querySelector(sel)?.textContent.trim();
        return t === 'live' ? t : false;
      }, tid('live-state'), { timeout: 5000 }).then((h) => h.jsonValue(), async () => text(page, 'live-state')),
      status_page_visible: !(await isHidden(page, 'requests-total')),
      nav: Object.fromEntries(await Promise.all(['nav-status', 'nav-flows', 'nav-policy', 'nav-ca']
        .map(async (id) => [id, await page.locator(tid(id)).count()]))),
    };
  });

  // 2. Counters move while curl makes requests through the proxy.
  await step('counters', async () => {
    await waitFilled(page, 'requests-total').catch(() => {});
    const before = parseCount(await text(page, 'requests-total'));
    const pointsBefore = await page.getAttribute(`${tid('rps-chart')} polyline`, 'points').catch(() => null);
    const requests = [];
    for (let i = 0; i < 8; i++) requests.push(https(config.tiktok, `/whoami/ui-counter-${i}`));
    requests.push(https(config.tiktok, config.blocked_path));
    const started = Date.now();
    const results = [];
    for (const url of requests) results.push(await curl(url));
    // One spliced connection to a host the policy does not know: a second host in the table.
    results.push(await curl(https(config.other, '/whoami/ui-spliced')));
    const expectedMin = before == null ? null : before + requests.length;
    let after = before;
    let waited = 0;
    while (Date.now() - started < 12000) {
      after = parseCount(await text(page, 'requests-total'));
      waited = Date.now() - started;
      if (after != null && expectedMin != null && after >= expectedMin) break;
      await sleep(250);
    }
    // The chart: the polyline's points (x,y; y = 150 is zero), waiting for a non-zero one.
    let points = [];
    const chartDeadline = Date.now() + 6000;
    while (Date.now() < chartDeadline) {
      const raw = await page.getAttribute(`${tid('rps-chart')} polyline`, 'points').catch(() => null);
      points = (raw || '').trim().split(/\s+/).filter(Boolean).map((p) => p.split(',').map(Number));
      if (points.some(([, y]) => y < 150)) break;
      await sleep(250);
    }
    const file = await shot(page, 'status.png', { fullPage: true });
    screenshots.status = file;
    return {
      before, after, expected_min: expectedMin, waited_ms: waited,
      curl: results.map((r) => ({ url: r.url, code: r.code, status: r.status, stderr: r.stderr.slice(0, 300) })),
      rps_now: await text(page, 'rps-now'),
      open_connections: await text(page, 'open-connections'),
      pinning_failures: await text(page, 'pinning-failures'),
      chart_points: points.length,
      chart_nonzero_points: points.filter(([, y]) => y < 150).length,
      chart_points_before: (pointsBefore || '').trim().split(/\s+/).filter(Boolean).length,
    };
  });

  // 3. The blocked flow in the flows table; filters, the hash, and a reload restoring them.
  await step('flows_table', async () => {
    await page.click(tid('nav-flows'));
    await page.waitForSelector(tid('flows-table'), { state: 'visible' });
    blockedSeq = await waitForRow(page, { col: 'status', equals: '451' })
      .catch(() => null);
    // Wait for the spliced connection's row too (another host).
    await waitForRow(page, { col: 'host', includes: config.other.split(':')[0] }, 5000)
      .catch(() => null);
    return { hash: await page.evaluate(() => location.hash), blocked_seq: blockedSeq,
      rows: await flowRows(page) };
  });

  await step('filter_action', async () => {
    await page.selectOption(tid('filter-action'), 'block');
    await page.waitForFunction(() => /[?&]action=block(&|$)/.test(location.hash), null, { timeout: 3000 })
      .catch(() => {});
    await sleep(400);
    return { hash: await page.evaluate(() => location.hash), rows: await flowRows(page),
      empty_shown: !(await isHidden(page, 'flows-empty')) };
  });

  await step('filter_host', async () => {
    await page.selectOption(tid('filter-action'), '');
    const other = config.other.split(':')[0];
    await page.fill(tid('filter-host'), other);
    await page.waitForFunction((h) => new URLSearchParams(location.hash.split('?')[1] || '').get('host') === h,
      other, { timeout: 3000 }).catch(() => {});
    await sleep(400);
    const narrowed = await flowRows(page);
    await page.fill(tid('filter-host'), 'tiktok');
    await page.selectOption(tid('filter-action'), 'block');
    await page.waitForFunction(() => /action=block/.test(location.hash) && /host=tiktok/.test(location.hash),
      null, { timeout: 3000 }).catch(() => {});
    await sleep(400);
    const combined = await flowRows(page);
    screenshots.flows_filtered = await shot(page, 'flows-filtered.png');
    return { host: other, narrowed, combined, hash: await page.evaluate(() => location.hash) };
  });

  await step('filter_reload', async () => {
    const hashBefore = await page.evaluate(() => location.hash);
    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector(tid('flows-table'), { state: 'visible' });
    if (blockedSeq != null) {
      await page.waitForSelector(`${tid('flows-table')} tr[data-seq="${blockedSeq}"]`, { timeout: UI_TIMEOUT })
        .catch(() => {});
    }
    await sleep(300);
    return {
      hash_before: hashBefore,
      hash: await page.evaluate(() => location.hash),
      filters: {
        action: await page.inputValue(tid('filter-action')),
        host: await page.inputValue(tid('filter-host')),
        category: await page.inputValue(tid('filter-category')),
      },
      rows: await flowRows(page),
    };
  });

  // 4. Clicking the blocked row opens its detail.
  await step('detail', async () => {
    if (blockedSeq == null) throw new Error('no blocked row to click');
    await page.click(`${tid('flows-table')} tr[data-seq="${blockedSeq}"] td[data-col="path"]`);
    await page.waitForSelector(tid('flow-detail'), { state: 'visible' });
    await page.waitForSelector(`${tid('flow-detail')} ${tid('detail-fields')} dt[data-field="rule"]`)
      .catch(() => {});
    await sleep(300);  // the full record from /api/flows/SEQ replaces the table's copy
    const evidence = await page.$$eval(`${tid('flow-detail')} ${tid('detail-evidence')} li`,
      (items) => items.map((li) => li.textContent)).catch(() => null);
    screenshots.flow_detail = await shot(page, 'flow-detail.png');
    return {
      seq: blockedSeq,
      visible: !(await isHidden(page, 'flow-detail')),
      hash: await page.evaluate(() => location.hash),
      fields: await detailFields(page),
      evidence,
      text: (await text(page, 'flow-detail')).slice(0, 4000),
    };
  });

  // 7. XSS: a path and a User-Agent carrying markup are shown as text.
  await step('xss', async () => {
    // The flows page stays open (no navigation): the row must arrive by the live feed.
    await page.click(tid('detail-close'));
    await page.click(tid('filter-clear'));
    await page.waitForFunction(() => location.hash === '#/flows', null, { timeout: 3000 }).catch(() => {});
    const hashAfterClear = await page.evaluate(() => location.hash);
    const started = Date.now();
    const result = await curl(https(config.tiktok, config.xss.path), { ua: config.xss.ua });
    const seq = await waitForRow(page, { col: 'path', includes: config.xss.marker })
      .catch(() => null);
    const liveMs = Date.now() - started;
    const row = seq == null ? null : (await flowRows(page)).find((r) => r.seq === seq);
    const afterTable = await domInjection(page);
    let fields = null;
    let afterDetail = null;
    if (seq != null) {
      await page.click(`${tid('flows-table')} tr[data-seq="${seq}"] td[data-col="host"]`);
      await page.waitForSelector(`${tid('flow-detail')} ${tid('detail-fields')} dt[data-field="user_agent"]`)
        .catch(() => {});
      await sleep(300);
      fields = await detailFields(page);
      afterDetail = await domInjection(page);
    }
    // The same views with the page's CSP switched off: only app.js's own discipline
    // (textContent, never markup) stands between the data and the DOM there.
    let noCsp = null;
    if (seq != null) {
      const bare = await browser.newContext({ bypassCSP: true, viewport: { width: 1366, height: 900 } });
      try {
        const p = await bare.newPage();
        const dialogs = [];
        p.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
        await p.goto(`${ADMIN}/#/flows?seq=${seq}`, { waitUntil: 'load' });
        await p.waitForSelector(`${tid('flows-table')} tr[data-seq="${seq}"]`, { timeout: UI_TIMEOUT }).catch(() => {});
        await p.waitForSelector(`${tid('detail-fields')} dt[data-field="user_agent"]`, { timeout: UI_TIMEOUT }).catch(() => {});
        await sleep(500);
        noCsp = { dialogs, dom: await domInjection(p), fields: await detailFields(p) };
      } finally {
        await bare.close().catch(() => {});
      }
    }
    return { curl: { code: result.code, status: result.status, stderr: result.stderr.slice(0, 300) },
      seq, row, live_ms: liveMs, hash_after_clear: hashAfterClear, fields, dom_after_table: afterTable, dom_after_detail: afterDetail, no_csp: noCsp,
      dialogs: observed.dialogs.slice() };
  });

  // 5. The explain form.
  await step('explain', async () => {
    await page.click(tid('nav-policy'));
    await page.waitForSelector(tid('explain-url'), { state: 'visible' });
    await page.fill(tid('explain-url'), config.explain.url);
    if (config.explain.ua) await page.fill(tid('explain-ua'), config.explain.ua);
    if (config.explain.headers) await page.fill(tid('explain-headers'), config.explain.headers.join('\n'));
    await page.click(tid('explain-submit'));
    await page.waitForSelector(tid('explain-result'), { state: 'visible' });
    await waitFilled(page, 'explain-category').catch(() => {});
    const evidence = await page.$$eval(`${tid('explain-evidence')} li`, (items) => items.map((li) => li.textContent))
      .catch(() => null);
    screenshots.policy_explain = await shot(page, 'policy-explain.png', { fullPage: true });
    const answer = {
      category: await text(page, 'explain-category'),
      rule: await text(page, 'explain-rule'),
      action: await text(page, 'explain-action'),
      verdict: await text(page, 'explain-verdict'),
      policy_page_name: await text(page, 'policy-page-name'),
      error_hidden: await isHidden(page, 'explain-error'),
    };
    // The hash carries the question: reloading the page asks it again.
    const hash = await page.evaluate(() => location.hash);
    await page.reload({ waitUntil: 'load' });
    let reloaded = null;
    try {
      await page.waitForSelector(tid('explain-result'), { state: 'visible' });
      await waitFilled(page, 'explain-category');
      reloaded = { category: await text(page, 'explain-category'), rule: await text(page, 'explain-rule'),
        action: await text(page, 'explain-action'), url: await page.inputValue(tid('explain-url')),
        ua: await page.inputValue(tid('explain-ua')), headers: await page.inputValue(tid('explain-headers')) };
    } catch (e) {
      reloaded = { error: String(e.message).slice(0, 500) };
    }
    return {
      ...answer, evidence, hash, reloaded,
    };
  });

  // 6. The CA page: its downloads, on a desktop and on a phone-sized screen.
  await step('ca', async () => {
    await page.click(tid('nav-ca'));
    await page.waitForSelector(tid('ca-pem'), { state: 'visible' });
    await waitFilled(page, 'ca-page-fingerprint').catch(() => {});
    const pem = await download(page, 'ca-pem');
    const der = await download(page, 'ca-der');
    screenshots.ca = await shot(page, 'ca.png', { fullPage: true });
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2,
      isMobile: true, hasTouch: true, locale: 'en-US', timezoneId: 'UTC' });
    let phoneData = null;
    try {
      await observe(phone, 'phone');
      const p = await phone.newPage();
      await p.goto(`${ADMIN}/#/ca`, { waitUntil: 'load' });
      await p.waitForSelector(tid('ca-pem'), { state: 'visible' });
      await waitFilled(p, 'ca-page-fingerprint').catch(() => {});
      screenshots.ca_phone = await shot(p, 'ca-phone.png');
      phoneData = await p.evaluate(() => ({ scroll_width: document.documentElement.scrollWidth,
        client_width: document.documentElement.clientWidth }));
    } finally {
      await phone.close().catch(() => {});
    }
    return { fingerprint: await text(page, 'ca-page-fingerprint'), pem, der, phone: phoneData };
  });

  // 6b. The CA page through the proxy at http://tokgate/, as a phone set to use the proxy sees it.
  await step('ca_via_proxy', async () => {
    const viaProxy = await browser.newContext({ proxy: { server: config.proxy }, viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2, isMobile: true, hasTouch: true, acceptDownloads: true });
    try {
      await observe(viaProxy, 'via-proxy');
      const p = await viaProxy.newPage();
      const response = await p.goto('http://tokgate/', { waitUntil: 'load' });
      await p.waitForSelector(tid('ca-pem'), { state: 'visible', timeout: UI_TIMEOUT }).catch(() => {});
      await sleep(500);
      const state = await p.evaluate(() => ({
        standalone: document.body.classList.contains('standalone'),
        styled: getComputedStyle(document.body).margin === '0px',
        visible_pages: [...document.querySelectorAll('section.page')].filter((s) => !s.hidden).map((s) => s.dataset.page),
        visible_nav: [...document.querySelectorAll('.nav a')].filter((a) => getComputedStyle(a).display !== 'none')
          .map((a) => a.dataset.testid),
      }));
      screenshots.ca_via_proxy_phone = await shot(p, 'ca-via-proxy-phone.png');
      const pem = await download(p, 'ca-pem').catch((e) => ({ error: String(e.message) }));
      return { http_status: response ? response.status() : null, csp: response ? response.headers()['content-security-policy'] || null : null,
        ...state, pem };
    } finally {
      await viaProxy.close().catch(() => {});
    }
  });

  // 8. What the browser saw: CSP violations, console errors, uncaught exceptions, dialogs.
  emit('browser_log', { csp_violations: observed.csp, console: observed.console,
    page_errors: observed.pageErrors, dialogs: observed.dialogs, failed_requests: observed.failedRequests,
    http_errors: observed.httpErrors });
  emit('screenshots', { files: screenshots });
}

const watchdog = setTimeout(() => {
  emit('fatal', { error: `timed out after ${config.timeout_ms} ms` });
  process.exit(3);
}, config.timeout_ms || 100000);

main().then(() => {
  clearTimeout(watchdog);
  emit('done', {});
  process.exit(0);
}, (e) => {
  clearTimeout(watchdog);
  emit('fatal', { error: String(e && e.stack || e).slice(0, 3000) });
  process.exit(2);
});
