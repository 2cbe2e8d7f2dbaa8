// tokgate status UI: plain ES2020, no dependencies, no build step (docs/web-ui.md).
//
// Safety: every value from the API (hosts, paths, user agents, rule names, HAR text) reaches the
// page through textContent, createElement or setAttribute only: no HTML parsing of data, no
// code built from strings, no inline style (chart geometry is SVG attributes, the rest classes).
//
// Test hooks (data-testid unless noted):
//   nav:      nav-status, nav-flows, nav-policy, nav-ca; live-state (text: live | polling |
//             reconnecting | offline); api-error (banner when the API cannot be reached)
//   status:   uptime, version, workers, listeners, admin, policy-name, policy-detail,
//             policy-loaded, catalog, ca-fingerprint, ca-expiry, flow-log, geoip, leaf-cache,
//             pinned-hosts, reload-error (hidden unless last_reload_error is non-empty),
//             keylog-warning
//   live:     requests-total, rps-now, open-connections, pinning-failures (client
//             rejected-certificate), handshake-total, rps-chart (the <svg>; its <polyline> has
//             id rps-line and 120 points), category-bars (rows carry data-category),
//             handshake-client / handshake-origin (rows carry data-reason), top-hosts,
//             top-countries, top-asns (tables)
//   flows:    flows-table; body rows <tr data-seq="N">, cells <td data-col="FIELD"> with FIELD
//             one of ts, client_ip, method, host, path, status, category, action, rule,
//             bytes_down, total_ms (bytes_down and total_ms are formatted; title= holds the raw
//             number); filter-category, filter-action, filter-host, filter-client,
//             filter-status, filter-clear, flows-pause, flows-count, flows-empty
//             Filters are mirrored in the hash: #/flows?category=app-api&action=block&seq=N
//             (seq = the flow open in the detail panel).
//   detail:   flow-detail (panel), detail-close, detail-fields (<dl>; each <dt> has
//             data-field), detail-evidence, detail-timings, detail-har (HAR section),
//             har-download (the .har download link), har-request-headers,
//             har-response-headers, har-request-body, har-response-body
//   policy:   policy-page-name, catalog-version, policy-reload-error, explain-url,
//             explain-method, explain-ua, explain-headers, explain-submit, explain-error,
//             explain-result containing explain-category, explain-action, explain-rule,
//             explain-verdict, explain-evidence. #/policy?url=...&method=...&ua=...&header=...
//             fills and submits the form.
//   ca:       ca-pem, ca-der (links), ca-page-fingerprint, ca-page-subject, ca-page-expiry
//             (hidden when /api/status is unavailable)
//
// Standalone mode (the CA page served through the proxy at http://tokgate/): when the host is
// "tokgate" or /api/status answers 4xx, <body> gets class "standalone", only the CA page shows
// and no API request is repeated.
'use strict';

const CATEGORIES = ['app-api', 'in-app-browser', 'media-cdn', 'web', 'analytics-sdk',
  'app-distribution', 'auth', 'live', 'wechat', 'bytedance-other', 'none'];
const ACTIONS = ['allow', 'log', 'capture', 'block', 'refuse', 'splice'];
const VERDICTS = ['intercept', 'splice', 'refuse'];
const ROUTES = ['/', '/flows', '/policy', '/ca'];
const TITLES = { '/': 'Status', '/flows': 'Flows', '/policy': 'Policy', '/ca': 'CA certificate' };
const FILTERS = ['category', 'action', 'host', 'client', 'status'];
const MAX_FLOWS = 1000;
const BODY_LIMIT = 64 * 1024;
const RAW_LIMIT = 256 * 1024;
const CHART_W = 600;
const CHART_H = 150;
const SVGNS = 'http://www.w3.org/2000/svg';
// Record fields in the order of docs/flow-log.md; unknown fields follow in their own order.
const FIELD_ORDER = ['seq', 'ts', 'type', 'flow', 'conn', 'client_ip', 'client_port', 'listener',
  'mode', 'sni', 'host', 'port', 'scheme', 'method', 'path', 'query', 'status', 'bytes_up',
  'bytes_down', 'connect_ms', 'tls_ms', 'first_byte_ms', 'total_ms', 'bumped', 'verdict',
  'client_alpn', 'server_alpn', 'client_tls', 'server_tls', 'category', 'evidence', 'rule',
  'action', 'upstream_ip', 'upstream_port', 'upstream_country', 'upstream_asn',
  'upstream_as_org', 'ua_class', 'user_agent', 'ws_messages_up', 'ws_messages_down',
  'ws_close_code', 'capture', 'error', 'error_reason'];

const state = {
  route: '/',
  params: new URLSearchParams(),
  standalone: false,
  status: null,
  statusAt: 0,
  stats: null,
  flows: [],          // newest first, at most MAX_FLOWS
  seqs: new Set(),
  lastSeq: 0,
  pending: [],
  paused: false,
  missed: 0,
  selected: null,
  es: null,
  lastExplain: '',
  blobUrl: '',
};

// ---------------------------------------------------------------- DOM helpers

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVGNS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
}

function setText(id, value) {
  const node = $(id);
  if (node) node.textContent = value == null || value === '' ? '–' : String(value);
}

function show(node, visible) {
  if (typeof node === 'string') node = $(node);
  if (node) node.hidden = !visible;
}

// Only known words become class names.
function oneOf(value, list) {
  return list.includes(value) ? value : '';
}

// ---------------------------------------------------------------- formatting

const intFmt = new Intl.NumberFormat('en-US');

function fmtInt(n) {
  return typeof n === 'number' && Number.isFinite(n) ? intFmt.format(n) : '–';
}

function fmtRate(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  return n < 10 ? n.toFixed(1) : intFmt.format(Math.round(n));
}

function fmtBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '';
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ' + units[i];
}

function fmtMs(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '';
  return n < 10 ? n.toFixed(1) : intFmt.format(Math.round(n));
}

function fmtDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '–';
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

// RFC 3339 string or Unix time (seconds or milliseconds) → Date, or null.
function toDate(v) {
  if (v == null || v === '') return null;
  let d;
  if (typeof v === 'number') d = new Date(v > 1e12 ? v : v * 1000);
  else d = new Date(String(v));
  return Number.isNaN(d.getTime()) ? null : d;
}

function pad(n, w = 2) {
  return String(n).padStart(w, '0');
}

function fmtDate(v) {
  const d = toDate(v);
  if (!d) return v == null ? '–' : String(v);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

function fmtAgo(v) {
  const d = toDate(v);
  if (!d) return '';
  const s = (Date.now() - d.getTime()) / 1000;
  return s >= 0 ? `${fmtDuration(s)} ago` : `in ${fmtDuration(-s)}`;
}

function fmtClock(v) {
  const d = toDate(v);
  if (!d) return v == null ? '' : String(v);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtValue(v) {
  if (v == null) return '';
  if (Array.isArray(v)) return v.map(fmtValue).join('\n');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function fmtObject(o) {
  if (o == null) return 'off';
  if (typeof o !== 'object') return String(o);
  return Object.entries(o).map(([k, v]) => `${k} ${fmtValue(v)}`).join(' · ') || '–';
}

function fmtEvidence(e) {
  if (e == null) return '';
  if (typeof e !== 'object') return String(e);
  const parts = [e.kind, e.signature, e.matched == null ? null : `'${e.matched}'`]
    .filter((x) => x != null && x !== '');
  return parts.join(' ') + (e.category ? ` → ${e.category}` : '');
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function getJSON(url) {
  let res;
  try {
    res = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store',
      credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError(`cannot reach ${url}: ${e.message}`, 0);
  }
  let body = null;
  const type = res.headers.get('Content-Type') || '';
  if (type.includes('json')) {
    try { body = await res.json(); } catch { body = null; }
  }
  if (!res.ok) {
    const msg = body && typeof body.error === 'string' ? body.error : `${res.status} ${res.statusText}`;
    throw new ApiError(msg, res.status);
  }
  if (body == null || typeof body !== 'object') throw new ApiError(`${url}: not JSON`, res.status);
  return body;
}

function apiError(err) {
  const banner = $('api-error');
  if (!err) { show(banner, false); return; }
  banner.textContent = `The tokgate API is not answering (${err.message}); retrying.`;
  show(banner, true);
}

function setLive(mode) {
  const node = $('live');
  node.textContent = mode;
  node.className = `live live-${mode}`;
}

// ---------------------------------------------------------------- routing

function parseHash() {
  let h = location.hash.replace(/^#/, '');
  if (!h.startsWith('/')) h = '/' + h;
  const q = h.indexOf('?');
  const path = q < 0 ? h : h.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : h.slice(q + 1));
  return { path: ROUTES.includes(path) ? path : '/', params };
}

function route() {
  const { path: parsed, params } = parseHash();
  const path = state.standalone ? '/ca' : parsed;
  state.route = path;
  state.params = params;
  for (const section of document.querySelectorAll('section.page')) {
    section.hidden = section.dataset.page !== path;
  }
  for (const link of document.querySelectorAll('.nav a')) {
    if (link.dataset.route === path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${TITLES[path]} · tokgate`;
  if (path === '/') { renderStatus(); renderStats(); }
  if (path === '/flows') enterFlows(params);
  if (path === '/policy') enterPolicy(params);
  if (path === '/ca') renderCA();
}

// ---------------------------------------------------------------- status page

async function loadStatus() {
  const s = await getJSON('/api/status');
  state.status = s;
  state.statusAt = performance.now();
  apiError(null);
  renderStatus();
  renderPolicy();
  renderCA();
}

function policyOf() {
  return (state.status && state.status.policy) || {};
}

function renderStatus() {
  const s = state.status;
  if (!s) return;
  setText('version', s.version);
  renderUptime();
  setText('workers', s.workers);
  const listeners = $('listeners');
  listeners.replaceChildren();
  for (const l of Array.isArray(s.listeners) ? s.listeners : []) {
    listeners.append(el('span', { class: 'listener' },
      el('span', { class: 'mono', text: l.address }), ' ',
      el('span', { class: 'pill', text: l.mode })));
  }
  if (!listeners.firstChild) listeners.textContent = '–';
  setText('admin', s.admin);
  const p = policyOf();
  setText('policy-name', p.name);
  const detail = [p.source, p.rules != null ? `${p.rules} rules` : null,
    p.generation != null ? `generation ${p.generation}` : null].filter(Boolean).join(' · ');
  $('policy-detail').textContent = detail;
  setText('policy-loaded', p.loaded_at != null ? `${fmtDate(p.loaded_at)} (${fmtAgo(p.loaded_at)})` : null);
  setText('catalog', p.catalog);
  for (const id of ['reload-error', 'policy-reload-error']) {
    const banner = $(id);
    const err = p.last_reload_error;
    if (err) banner.textContent = `The last policy reload failed; the previous policy is still in force: ${err}`;
    show(banner, Boolean(err));
  }
  const ca = s.ca || {};
  setText('ca-fingerprint', ca.fingerprint);
  const expiry = $('ca-expiry');
  expiry.textContent = ca.not_after ? `${fmtDate(ca.not_after)} (${fmtAgo(ca.not_after)})` : '–';
  const left = toDate(ca.not_after);
  expiry.classList.toggle('bad', Boolean(left) && left.getTime() - Date.now() < 30 * 86400e3);
  setText('flow-log', s.flow_log === undefined ? null : fmtObject(s.flow_log));
  setText('geoip', s.geoip || (s.geoip === undefined ? null : 'off'));
  setText('leaf-cache', s.leaf_cache === undefined ? null : fmtObject(s.leaf_cache));
  setText('pinned-hosts', s.pinned_hosts);
  show('keylog-warning', s.keylog === true);
  if (!state.stats && s.open_connections != null) setText('open-connections', fmtInt(s.open_connections));
}

function renderUptime() {
  const s = state.status;
  if (!s || typeof s.uptime_seconds !== 'number') return;
  setText('uptime', fmtDuration(s.uptime_seconds + (performance.now() - state.statusAt) / 1000));
}

function onStats(st) {
  if (!st || typeof st !== 'object') return;
  state.stats = st;
  if (state.route === '/') renderStats();
}

function renderStats() {
  const st = state.stats;
  if (!st) return;
  const rps = Array.isArray(st.rps) ? st.rps.map((x) => (typeof x === 'number' && x > 0 ? x : 0)) : [];
  setText('requests-total', fmtInt(st.requests_total));
  setText('rps-now', fmtRate(rps.length ? rps[rps.length - 1] : 0));
  setText('open-connections', fmtInt(st.open_connections));
  const hf = st.handshake_failures || {};
  const pinning = (hf.client && hf.client['rejected-certificate']) || 0;
  setText('pinning-failures', fmtInt(pinning));
  $('pinning-tile').classList.toggle('alert', pinning > 0);
  let total = 0;
  for (const side of [hf.client, hf.origin]) {
    for (const v of Object.values(side || {})) if (typeof v === 'number') total += v;
  }
  setText('handshake-total', fmtInt(total));
  drawRps(rps);
  drawCategories(st.by_category || {});
  fillReasons($('hs-client'), hf.client, 'rejected-certificate');
  fillReasons($('hs-origin'), hf.origin, null);
  fillTop($('top-hosts'), st.top_hosts, (r) => el('span', { class: 'ellipsis', title: r.host, text: r.host }));
  fillTop($('top-countries'), st.top_countries, (r) => r.country || '?');
  fillTop($('top-asns'), st.top_asns, (r) => el('span', { class: 'ellipsis', title: r.org || '' },
    `AS${r.asn ?? '?'} `, el('span', { class: 'muted', text: r.org || '' })));
}

function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawRps(values) {
  const n = 120;
  const data = values.slice(-n);
  while (data.length < n) data.unshift(0);
  const peak = Math.max(...data);
  const top = niceMax(peak);
  const pts = data.map((v, i) => {
    const x = (i * CHART_W) / (n - 1);
    const y = CHART_H - (v / top) * (CHART_H - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(' ');
  $('rps-line').setAttribute('points', pts);
  $('rps-area').setAttribute('points', `0,${CHART_H} ${pts} ${CHART_W},${CHART_H}`);
  $('rps-max').textContent = `scale ${fmtRate(top)}/s · peak ${fmtRate(peak)}/s`;
}

function drawCategories(byCategory) {
  const rows = Object.entries(byCategory).map(([category, c]) => {
    const n = (k) => (c && typeof c[k] === 'number' ? c[k] : 0);
    const allowed = n('allow') + n('log') + n('capture');
    const blocked = n('block') + n('refuse');
    const spliced = n('splice');
    return { category, allowed, blocked, spliced, total: allowed + blocked + spliced };
  }).filter((r) => r.total > 0).sort((a, b) => b.total - a.total);
  const box = $('category-bars');
  if (!rows.length) {
    box.replaceChildren(el('p', { class: 'empty', text: 'No requests yet.' }));
    return;
  }
  const max = rows[0].total;
  box.replaceChildren(...rows.map((r) => {
    const bar = svgEl('svg', { class: 'bar', viewBox: '0 0 100 10', preserveAspectRatio: 'none',
      'aria-hidden': 'true' });
    let x = 0;
    for (const [key, value] of [['allowed', r.allowed], ['spliced', r.spliced], ['blocked', r.blocked]]) {
      if (!value) continue;
      const w = (value / max) * 100;
      const rect = svgEl('rect', { class: `seg-${key}`, x: x.toFixed(3), y: 0, width: w.toFixed(3), height: 10 });
      const title = svgEl('title');
      title.textContent = `${key}: ${intFmt.format(value)}`;
      rect.append(title);
      bar.append(rect);
      x += w;
    }
    const nums = [`${fmtInt(r.allowed)} allowed`];
    if (r.spliced) nums.push(`${fmtInt(r.spliced)} spliced`);
    nums.push(`${fmtInt(r.blocked)} blocked`);
    return el('div', { class: 'bar-row', 'data-category': r.category },
      el('span', { class: 'bar-label', text: r.category }), bar,
      el('span', { class: 'bar-nums', text: nums.join(' · ') }));
  }));
}

function fillReasons(tbody, counts, highlight) {
  const entries = Object.entries(counts || {}).filter(([, v]) => typeof v === 'number');
  entries.sort((a, b) => (b[0] === highlight) - (a[0] === highlight) || b[1] - a[1]);
  tbody.replaceChildren(...entries.map(([reason, v]) => {
    const cls = [reason === highlight ? 'pin' : '', v === 0 ? 'zero' : ''].filter(Boolean).join(' ');
    return el('tr', { 'data-reason': reason, class: cls || null },
      el('td', { text: reason }), el('td', { class: 'num', text: fmtInt(v) }));
  }));
  if (!entries.length) tbody.append(el('tr', null, el('td', { class: 'muted', text: 'none' })));
}

function fillTop(tbody, list, label) {
  list = Array.isArray(list) ? list : [];
  tbody.replaceChildren(...list.map((r) => el('tr', null,
    el('td', null, label(r)),
    el('td', { class: 'num', text: fmtInt(r.flows) }),
    el('td', { class: 'num', title: r.bytes, text: fmtBytes(r.bytes) }))));
  if (!list.length) tbody.append(el('tr', null, el('td', { class: 'muted', colspan: 3, text: 'nothing yet' })));
}

// ---------------------------------------------------------------- flows: data

function queueFlows(list) {
  if (!Array.isArray(list)) return;
  for (const r of list) {
    if (r && typeof r === 'object' && Number.isFinite(r.seq) && !state.seqs.has(r.seq)) state.pending.push(r);
  }
  if (state.pending.length && !queueFlows.timer) queueFlows.timer = setTimeout(flushFlows, 200);
}

function flushFlows() {
  queueFlows.timer = 0;
  const fresh = [];
  for (const r of state.pending) {
    if (state.seqs.has(r.seq)) continue;
    state.seqs.add(r.seq);
    fresh.push(r);
  }
  state.pending = [];
  if (!fresh.length) return;
  fresh.sort((a, b) => b.seq - a.seq);
  const all = fresh.concat(state.flows);
  all.sort((a, b) => b.seq - a.seq);
  for (const gone of all.splice(MAX_FLOWS)) state.seqs.delete(gone.seq);
  state.flows = all;
  state.lastSeq = Math.max(state.lastSeq, all.length ? all[0].seq : 0);
  if (state.route !== '/flows') return;
  if (state.paused) {
    state.missed += fresh.length;
    updatePauseButton();
    return;
  }
  prependRows(fresh);
}

async function catchUp() {
  const query = state.lastSeq ? `?limit=${MAX_FLOWS}&after=${state.lastSeq}` : `?limit=${MAX_FLOWS}`;
  const d = await getJSON('/api/flows' + query);
  queueFlows(d.flows);
}

// ---------------------------------------------------------------- flows: filters

function filterInput(name) {
  return $(`filter-${name}`);
}

function readFilters() {
  const f = {};
  for (const name of FILTERS) f[name] = filterInput(name).value.trim();
  f.hostLower = f.host.toLowerCase();
  f.statusLower = f.status.toLowerCase();
  return f;
}

function ensureOption(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) {
    select.append(el('option', { value, text: value }));
  }
}

function matches(r, f) {
  if (f.category && r.category !== f.category) return false;
  if (f.action && r.action !== f.action) return false;
  if (f.hostLower && !String(r.host || r.sni || '').toLowerCase().includes(f.hostLower)) return false;
  if (f.client && !String(r.client_ip || '').includes(f.client)) return false;
  if (f.statusLower) {
    const s = f.statusLower;
    if (/^[1-5]xx$/.test(s)) {
      if (typeof r.status !== 'number' || Math.floor(r.status / 100) !== Number(s[0])) return false;
    } else if (s === 'none') {
      if (r.status != null) return false;
    } else if (String(r.status ?? '') !== s) {
      return false;
    }
  }
  return true;
}

function flowsHash() {
  const p = new URLSearchParams();
  for (const name of FILTERS) {
    const v = filterInput(name).value.trim();
    if (v) p.set(name, v);
  }
  if (state.selected != null) p.set('seq', String(state.selected));
  const q = p.toString();
  return '#/flows' + (q ? '?' + q : '');
}

function writeFlowsHash() {
  const h = flowsHash();
  document.querySelector('[data-testid="nav-flows"]').setAttribute('href', h);
  if (state.route === '/flows' && location.hash !== h) history.replaceState(null, '', h);
}

function enterFlows(params) {
  for (const name of FILTERS) {
    const input = filterInput(name);
    const v = params.get(name) || '';
    if (input.tagName === 'SELECT') ensureOption(input, v);
    input.value = v;
  }
  renderFlowsTable();
  const seq = Number(params.get('seq'));
  if (params.has('seq') && Number.isFinite(seq)) {
    if (seq !== state.selected || $('flow-detail').hidden) openDetail(seq);
  } else if (state.selected != null) {
    closeDetail();
  }
  writeFlowsHash();
}

// ---------------------------------------------------------------- flows: table

function flowRow(r) {
  const tr = el('tr', { 'data-seq': r.seq, tabindex: 0 });
  if (r.seq === state.selected) tr.className = 'sel';
  if (r.error) tr.classList.add('failed');
  const cell = (col, text, attrs) => {
    const td = el('td', Object.assign({ 'data-col': col }, attrs), text == null ? '' : String(text));
    tr.append(td);
    return td;
  };
  cell('ts', fmtClock(r.ts), { title: r.ts });
  cell('client_ip', r.client_ip);
  cell('method', r.method);
  const host = r.host || r.sni || '';
  cell('host', host, { title: r.port ? `${host}:${r.port}` : host });
  if (r.type === 'connection' && !r.path) {
    cell('path', `[${r.verdict || 'connection'}${r.error ? ' ' + r.error : ''}]`, { class: 'muted' });
  } else {
    const path = (r.path || '') + (r.query ? '?' + r.query : '');
    cell('path', path, { title: path });
  }
  const status = typeof r.status === 'number' ? r.status : null;
  cell('status', status ?? '', {
    class: 'num' + (status >= 500 ? ' s5' : status >= 400 ? ' s4' : ''),
    title: r.error ? `${r.error}${r.error_reason ? ': ' + r.error_reason : ''}` : null,
  });
  cell('category', r.category);
  const action = oneOf(r.action, ACTIONS);
  cell('action', '').append(el('span', { class: `pill a-${action || 'other'}`, text: r.action || '' }));
  cell('rule', r.rule, { title: r.rule });
  cell('bytes_down', fmtBytes(r.bytes_down), { class: 'num', title: r.bytes_down });
  cell('total_ms', fmtMs(r.total_ms), { class: 'num', title: r.total_ms });
  return tr;
}

function renderFlowsTable() {
  const f = readFilters();
  const frag = document.createDocumentFragment();
  let shown = 0;
  for (const r of state.flows) {
    if (!matches(r, f)) continue;
    frag.append(flowRow(r));
    shown++;
  }
  $('flows-body').replaceChildren(frag);
  state.missed = 0;
  updatePauseButton();
  updateCount(shown);
}

function prependRows(fresh) {
  const tbody = $('flows-body');
  const first = tbody.firstElementChild;
  const topSeq = first ? Number(first.dataset.seq) : -Infinity;
  if (fresh[fresh.length - 1].seq < topSeq) { renderFlowsTable(); return; }
  const f = readFilters();
  const frag = document.createDocumentFragment();
  for (const r of fresh) if (matches(r, f)) frag.append(flowRow(r));
  tbody.prepend(frag);
  const oldest = state.flows.length ? state.flows[state.flows.length - 1].seq : Infinity;
  while (tbody.lastElementChild && Number(tbody.lastElementChild.dataset.seq) < oldest) {
    tbody.lastElementChild.remove();
  }
  updateCount(tbody.childElementCount);
}

function updateCount(shown) {
  const total = state.flows.length;
  $('flows-count').textContent = shown === total ? `${fmtInt(total)} flows` : `${fmtInt(shown)} of ${fmtInt(total)} flows`;
  show('flows-empty', shown === 0);
}

function updatePauseButton() {
  const b = $('flows-pause');
  b.setAttribute('aria-pressed', String(state.paused));
  b.textContent = state.paused ? (state.missed ? `Resume (${fmtInt(state.missed)} new)` : 'Resume') : 'Pause';
}

function onFilterChange() {
  clearTimeout(onFilterChange.timer);
  onFilterChange.timer = setTimeout(() => {
    renderFlowsTable();
    writeFlowsHash();
  }, 120);
}

// ---------------------------------------------------------------- flows: detail

let detailToken = 0;

function markSelected() {
  for (const tr of $('flows-body').querySelectorAll('tr.sel')) tr.classList.remove('sel');
  if (state.selected == null) return;
  const tr = $('flows-body').querySelector(`tr[data-seq="${state.selected}"]`);
  if (tr) tr.classList.add('sel');
}

async function openDetail(seq) {
  state.selected = seq;
  markSelected();
  writeFlowsHash();
  show('flow-detail', true);
  $('flow-detail').scrollTop = 0;
  const token = ++detailToken;
  const known = state.flows.find((r) => r.seq === seq);
  renderDetail(known || { seq }, undefined, 'Loading…');
  try {
    const full = await getJSON(`/api/flows/${encodeURIComponent(seq)}`);
    if (token !== detailToken) return;
    renderDetail(full, full.har, '');
  } catch (e) {
    if (token !== detailToken) return;
    renderDetail(known || { seq }, undefined, `Could not load flow ${seq}: ${e.message}`);
  }
}

function closeDetail() {
  detailToken++;
  state.selected = null;
  show('flow-detail', false);
  markSelected();
  writeFlowsHash();
  if (state.blobUrl) { URL.revokeObjectURL(state.blobUrl); state.blobUrl = ''; }
}

function section(title, testid, ...content) {
  return el('section', { class: 'dsec', 'data-testid': testid }, el('h3', { text: title }), ...content);
}

function renderDetail(r, har, note) {
  const title = [`#${r.seq}`, r.method, r.host || r.sni].filter(Boolean).join(' ');
  $('detail-title').textContent = title;
  const body = $('detail-body');
  const parts = [];
  if (note) parts.push(el('p', { class: 'note', text: note }));

  if (r.host || r.sni) {
    const port = r.port && r.port !== (r.scheme === 'http' || r.scheme === 'ws' ? 80 : 443) ? `:${r.port}` : '';
    const url = `${r.scheme ? r.scheme + '://' : ''}${r.host || r.sni}${port}${r.path || ''}${r.query ? '?' + r.query : ''}`;
    const action = oneOf(r.action, ACTIONS);
    parts.push(el('div', { class: 'dsum' },
      el('p', { class: 'mono wrap', text: [r.method, url].filter(Boolean).join(' ') }),
      el('p', null, r.status != null ? el('span', { class: 'pill', text: r.status }) : null, ' ',
        r.category ? el('span', { class: 'pill', text: r.category }) : null, ' ',
        r.action ? el('span', { class: `pill a-${action || 'other'}`, text: r.action }) : null, ' ',
        r.rule ? el('span', { class: 'muted', text: `rule ${r.rule}` }) : null,
        r.error ? el('span', { class: 'bad', text: ` ${r.error}${r.error_reason ? ': ' + r.error_reason : ''}` }) : null)));
  }

  const evidence = Array.isArray(r.evidence) ? r.evidence : [];
  parts.push(section('Evidence', 'detail-evidence', evidence.length
    ? el('ol', { class: 'evidence' }, ...evidence.map((e) => el('li', { text: fmtEvidence(e) })))
    : el('p', { class: 'muted', text: 'none' })));

  const timings = timingBars(r);
  if (timings) parts.push(section('Timings', 'detail-timings', timings));

  if (har !== undefined || !note) parts.push(harSection(r, har));

  const dl = el('dl', { class: 'fields', 'data-testid': 'detail-fields' });
  const keys = FIELD_ORDER.filter((k) => k in r)
    .concat(Object.keys(r).filter((k) => !FIELD_ORDER.includes(k) && k !== 'har'));
  for (const k of keys) dl.append(el('dt', { 'data-field': k, text: k }), el('dd', { text: fmtValue(r[k]) }));
  parts.push(section('Record', 'detail-record', dl));
  body.replaceChildren(...parts);
}

function timingBars(r) {
  const num = (k) => (typeof r[k] === 'number' && r[k] >= 0 ? r[k] : null);
  const c = num('connect_ms');
  const t = num('tls_ms');
  const fb = num('first_byte_ms');
  const total = num('total_ms');
  const spans = [];
  if (c != null) spans.push(['connect', 0, c]);
  if (t != null) spans.push(['TLS', c || 0, t]);
  if (fb != null) spans.push(['first byte', 0, fb]);
  if (total != null) spans.push(['total', 0, total]);
  if (!spans.length) return null;
  const max = Math.max(...spans.map(([, start, len]) => start + len)) || 1;
  const table = el('table', { class: 'timings' });
  for (const [label, start, len] of spans) {
    const bar = svgEl('svg', { class: 'tbar', viewBox: '0 0 100 6', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
    bar.append(svgEl('rect', { x: (start / max * 100).toFixed(3), y: 0,
      width: Math.max(0.5, len / max * 100).toFixed(3), height: 6 }));
    table.append(el('tr', null, el('th', { text: label }), el('td', { class: 'num', text: `${fmtMs(len)} ms` }),
      el('td', { class: 'tbar-cell' }, bar)));
  }
  return table;
}

function kvTable(rows, testid) {
  if (!Array.isArray(rows) || !rows.length) return el('p', { class: 'muted', 'data-testid': testid, text: 'none' });
  return el('table', { class: 'kv', 'data-testid': testid }, ...rows.map((h) => el('tr', null,
    el('td', { class: 'k', text: `${h && h.name != null ? h.name : ''}:` }),
    el('td', { class: 'v', text: h && h.value != null ? String(h.value) : '' }))));
}

function bodyBlock(c, testid) {
  if (!c || typeof c !== 'object') return el('p', { class: 'muted', 'data-testid': testid, text: 'no body' });
  const text = typeof c.text === 'string' ? c.text : '';
  const notes = [];
  if (c.mimeType) notes.push(c.mimeType);
  if (typeof c.size === 'number') notes.push(fmtBytes(c.size));
  if (c.compression) notes.push(`${fmtBytes(c.compression)} saved by compression`);
  if (c.encoding === 'base64' || c._encoding === 'base64') notes.push('base64 (kept as received)');
  if (c._tokgateTruncated) notes.push('cut at the capture limit');
  if (c.comment) notes.push(String(c.comment));
  let shown = text;
  if (text.length > BODY_LIMIT) {
    shown = text.slice(0, BODY_LIMIT);
    notes.push(`showing the first 64 KiB of ${fmtBytes(text.length)}`);
  }
  const wrap = el('div', { class: 'body', 'data-testid': testid });
  if (notes.length) wrap.append(el('p', { class: 'muted', text: notes.join(' · ') }));
  wrap.append(text ? el('pre', { class: 'code', text: shown }) : el('p', { class: 'muted', text: 'empty body' }));
  return wrap;
}

function harSection(r, har) {
  const entries = har && har.log && Array.isArray(har.log.entries) ? har.log.entries : null;
  if (!entries) {
    const msg = r.capture ? `Captured to ${r.capture}, but no HAR is available here.`
      : 'No HAR capture for this flow (only flows with action "capture" have one).';
    return section('HAR capture', 'detail-har', el('p', { class: 'muted', text: msg }));
  }
  if (state.blobUrl) URL.revokeObjectURL(state.blobUrl);
  const json = JSON.stringify(har, null, 2);
  state.blobUrl = URL.createObjectURL(new Blob([json], { type: 'application/json' }));
  const download = el('a', { class: 'btn-quiet', href: state.blobUrl, download: `tokgate-flow-${r.seq}.har`,
    'data-testid': 'har-download', text: 'Download HAR' });
  const out = [el('p', null, download)];
  entries.forEach((entry, i) => {
    const req = entry.request || {};
    const res = entry.response || {};
    if (entries.length > 1) out.push(el('h4', { text: `Entry ${i + 1}` }));
    out.push(el('h4', { text: 'Request' }),
      el('p', { class: 'mono wrap', text: [req.method, req.url, req.httpVersion].filter(Boolean).join(' ') }),
      kvTable(req.headers, i ? null : 'har-request-headers'));
    if (Array.isArray(req.cookies) && req.cookies.length) out.push(el('h5', { text: 'Cookies' }), kvTable(req.cookies));
    if (Array.isArray(req.queryString) && req.queryString.length) out.push(el('h5', { text: 'Query' }), kvTable(req.queryString));
    if (req.postData) out.push(el('h5', { text: 'Body' }), bodyBlock(req.postData, i ? null : 'har-request-body'));
    out.push(el('h4', { text: 'Response' }),
      el('p', { class: 'mono wrap', text: [res.status, res.statusText, res.httpVersion].filter((x) => x != null && x !== '').join(' ') }),
      kvTable(res.headers, i ? null : 'har-response-headers'));
    if (Array.isArray(res.cookies) && res.cookies.length) out.push(el('h5', { text: 'Cookies' }), kvTable(res.cookies));
    out.push(el('h5', { text: 'Body' }), bodyBlock(res.content, i ? null : 'har-response-body'));
    if (entry.timings && typeof entry.timings === 'object') {
      out.push(el('p', { class: 'muted', text: 'HAR timings (ms): ' + Object.entries(entry.timings)
        .filter(([, v]) => typeof v === 'number' && v >= 0).map(([k, v]) => `${k} ${fmtMs(v)}`).join(' · ') }));
    }
    if (entry.comment) out.push(el('p', { class: 'note', text: String(entry.comment) }));
  });
  const raw = el('details', { class: 'raw' }, el('summary', { text: 'HAR as JSON' }));
  raw.addEventListener('toggle', () => {
    if (raw.open && raw.childElementCount === 1) {
      raw.append(el('pre', { class: 'code', text: json.length > RAW_LIMIT ? json.slice(0, RAW_LIMIT) + '\n… (truncated; download for the rest)' : json }));
    }
  }, { once: false });
  out.push(raw);
  return section('HAR capture', 'detail-har', ...out);
}

// ---------------------------------------------------------------- policy page

function renderPolicy() {
  const p = policyOf();
  setText('p-name', p.name);
  setText('p-source', p.source);
  setText('p-rules', p.rules);
  setText('p-generation', p.generation);
  setText('p-loaded', p.loaded_at != null ? `${fmtDate(p.loaded_at)} (${fmtAgo(p.loaded_at)})` : null);
  setText('p-catalog', p.catalog);
}

function explainQuery() {
  const p = new URLSearchParams();
  p.set('url', $('explain-url').value.trim());
  p.set('method', $('explain-method').value);
  const ua = $('explain-ua').value.trim();
  if (ua) p.set('ua', ua);
  for (const line of $('explain-headers').value.split(/\r?\n/)) {
    if (line.trim()) p.append('header', line.trim());
  }
  // URLSearchParams writes a space as '+'; %20 means space to every decoder.
  return p.toString().replace(/\+/g, '%20');
}

async function explain(ev) {
  if (ev) ev.preventDefault();
  const err = $('explain-error');
  show(err, false);
  if (!$('explain-url').value.trim()) {
    err.textContent = 'Enter an absolute URL (https://host/path).';
    show(err, true);
    return;
  }
  const query = explainQuery();
  state.lastExplain = query;
  if (state.route === '/policy') history.replaceState(null, '', `#/policy?${query}`);
  const button = $('explain-submit');
  button.disabled = true;
  try {
    renderExplain(await getJSON(`/api/explain?${query}`));
  } catch (e) {
    show('explain-result', false);
    err.textContent = e.message;
    show(err, true);
  } finally {
    button.disabled = false;
  }
}

function pill(id, value, list, prefix) {
  const node = $(id);
  node.textContent = value == null ? '' : String(value);
  const known = oneOf(value, list);
  node.className = 'pill' + (known ? ` ${prefix}${known}` : '');
}

function renderExplain(d) {
  pill('explain-category', d.category, CATEGORIES, 'c-');
  $('explain-decided').textContent = d.decided_by ? `decided by ${d.decided_by}` : '';
  pill('explain-action', d.action, ACTIONS, 'a-');
  $('explain-message').textContent = d.message ? `“${d.message}”` : '';
  $('explain-rule').textContent = d.rule == null ? '(default)' : String(d.rule);
  const conn = d.connection || {};
  pill('explain-verdict', conn.verdict, VERDICTS, 'v-');
  $('explain-conn-rule').textContent = [`rule ${conn.rule == null ? '(default)' : conn.rule}`,
    conn.category ? `category ${conn.category}` : null].filter(Boolean).join(' · ');
  const evidence = Array.isArray(d.evidence) ? d.evidence : [];
  const list = $('explain-evidence');
  list.replaceChildren(...evidence.map((e) => el('li', { text: fmtEvidence(e) })));
  if (!evidence.length) list.append(el('li', { class: 'muted', text: 'none' }));
  $('explain-host').textContent = d.host || '';
  $('explain-versions').textContent = [d.policy, d.catalog ? `catalog ${d.catalog}` : null].filter(Boolean).join(' · ');
  show('explain-result', true);
}

function enterPolicy(params) {
  renderPolicy();
  if (!params.has('url')) return;
  const query = params.toString();
  if (query === state.lastExplain) return;
  $('explain-url').value = params.get('url') || '';
  const method = (params.get('method') || 'GET').toUpperCase();
  ensureOption($('explain-method'), method);
  $('explain-method').value = method;
  $('explain-ua').value = params.get('ua') || '';
  $('explain-headers').value = params.getAll('header').join('\n');
  explain(null);
}

// ---------------------------------------------------------------- CA page

function renderCA() {
  const ca = state.status && state.status.ca;
  const have = Boolean(ca && ca.fingerprint);
  show('ca-facts', have);
  show('ca-verify', have);
  if (!have) return;
  $('ca-page-fingerprint').textContent = ca.fingerprint;
  $('ca-page-subject').textContent = ca.subject || '–';
  $('ca-page-expiry').textContent = ca.not_after ? `${fmtDate(ca.not_after)} (${fmtAgo(ca.not_after)})` : '–';
}

function openHowtoForThisDevice() {
  const ua = navigator.userAgent || '';
  const open = [];
  if (/Android/i.test(ua)) open.push('android');
  else if (/iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1)) open.push('ios');
  else if (/Mac OS X/.test(ua)) open.push('macos');
  else if (/Windows/.test(ua)) open.push('windows');
  else if (/Linux|X11|CrOS/.test(ua)) open.push('linux');
  if (/Firefox\//.test(ua)) open.push('firefox');
  for (const d of document.querySelectorAll('#ca-howto details')) {
    if (open.includes(d.dataset.os)) d.open = true;
  }
}

// ---------------------------------------------------------------- live updates

function startEvents() {
  if (state.standalone || typeof EventSource !== 'function') { setLive('polling'); return; }
  const es = new EventSource('/api/events');
  state.es = es;
  setLive('connecting');
  es.addEventListener('open', () => {
    setLive('live');
    catchUp().catch(() => {});
  });
  es.addEventListener('stats', (e) => onStats(parse(e.data)));
  es.addEventListener('flow', (e) => {
    const r = parse(e.data);
    if (r) queueFlows([r]);
  });
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (e.g. 503: too many streams) or not served: poll, and try again later.
      state.es = null;
      setLive('polling');
      setTimeout(startEvents, 30000);
    } else {
      setLive('reconnecting');
    }
  });
}

function parse(text) {
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? v : null;
  } catch {
    return null;
  }
}

let polling = false;

async function poll() {
  if (polling || state.standalone) return;
  if (state.es && state.es.readyState === EventSource.OPEN) return;
  polling = true;
  try {
    onStats(await getJSON('/api/stats'));
    await catchUp();
    apiError(null);
  } catch (e) {
    apiError(e);
    if (!state.es) setLive('offline');
  } finally {
    polling = false;
  }
}

async function refreshStatus() {
  try {
    await loadStatus();
  } catch (e) {
    apiError(e);
  }
}

function enterStandalone() {
  state.standalone = true;
  document.body.classList.add('standalone');
  if (state.es) { state.es.close(); state.es = null; }
  route();
}

// ---------------------------------------------------------------- wiring

function wire() {
  const category = $('filter-category');
  for (const c of CATEGORIES) category.append(el('option', { value: c, text: c }));
  const action = $('filter-action');
  for (const a of ACTIONS) action.append(el('option', { value: a, text: a }));
  const filters = $('filters');
  filters.addEventListener('input', onFilterChange);
  filters.addEventListener('change', onFilterChange);
  filters.addEventListener('submit', (e) => e.preventDefault());
  $('filter-clear').addEventListener('click', () => {
    for (const name of FILTERS) filterInput(name).value = '';
    onFilterChange();
  });
  $('flows-pause').addEventListener('click', () => {
    state.paused = !state.paused;
    if (!state.paused) renderFlowsTable();
    updatePauseButton();
  });
  const tbody = $('flows-body');
  const pick = (e) => {
    const tr = e.target.closest('tr[data-seq]');
    if (tr) openDetail(Number(tr.dataset.seq));
  };
  tbody.addEventListener('click', pick);
  tbody.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(e); }
  });
  $('detail-close').addEventListener('click', closeDetail);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('flow-detail').hidden) closeDetail();
  });
  $('explain-form').addEventListener('submit', explain);
  window.addEventListener('hashchange', route);
}

async function boot() {
  wire();
  openHowtoForThisDevice();
  if (location.hostname === 'tokgate') {
    // Served by the proxy itself: only the CA and its facts exist here (/ca.json).
    enterStandalone();
    getJSON('/ca.json').then((ca) => { state.status = { ca }; renderCA(); }).catch(() => {});
    return;
  }
  route();
  try {
    await loadStatus();
  } catch (e) {
    if (e.status >= 400 && e.status < 500 && e.status !== 401 && e.status !== 429) {
      enterStandalone();
      return;
    }
    apiError(e);
  }
  startEvents();
  getJSON('/api/stats').then(onStats).catch(() => {});
  catchUp().catch((e) => apiError(e));
  setInterval(poll, 2000);
  setInterval(refreshStatus, 10000);
  setInterval(() => { if (state.route === '/') renderUptime(); }, 1000);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
