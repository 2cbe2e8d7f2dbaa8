// The lab's mock origin: one Node.js process (stdlib only) that answers for every lab name
// (TikTok's API, website, CDN, Pixel and telemetry hosts, and two ordinary sites) with the lab
// PKI's certificate, over HTTPS (HTTP/2 and HTTP/1.1, by ALPN) and plain HTTP.
//
//   node origin.mjs --cert origin.crt --key origin.key [--host 0.0.0.0]
//                   [--https-port 443] [--http-port 80]
//
// Port 0 picks a free port. When both listeners are up it prints one JSON line
//   {"event":"ready","https_port":N,"http_port":M}
// then one JSON line per request it answers ({"event":"request",...}). SIGTERM/SIGINT close it.
//
// What it answers is plain and predictable, so what the client sees comes from tokgate (a 451
// page, a refusal) or from here (header `x-lab-origin: tokgate-lab`, body naming the host):
//   /aweme/..., /api/..., /monitor_browser/..., /passport/...  JSON (the app's API shape)
//   /i18n/pixel/events.js                                      a small JavaScript file
//   *.mp4                                                      a few bytes of video/mp4
//   anything else                                              a small HTML page
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import process from 'node:process';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    host: { type: 'string', default: '0.0.0.0' },
    'https-port': { type: 'string', default: '443' },
    'http-port': { type: 'string', default: '80' },
  },
});
if (!args.cert || !args.key) {
  process.stderr.write('usage: node origin.mjs --cert FILE --key FILE [--host ADDR] ' +
                       '[--https-port N] [--http-port N]\n');
  process.exit(2);
}

const MAX_BODY = 1 << 20;  // request bodies are counted, never kept; this bounds the wait

function hostOf(req) {
  const raw = req.headers[':authority'] || req.headers.host || '';
  return raw.replace(/:\d+$/, '').replace(/^\[|\]$/g, '').toLowerCase();
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function answer(req, res, scheme) {
  const started = Date.now();
  let bodyBytes = 0;
  req.on('data', (chunk) => {
    bodyBytes += chunk.length;
    if (bodyBytes > MAX_BODY) req.destroy();
  });
  req.on('end', () => {
    const host = hostOf(req);
    const url = new URL(req.url, 'http://placeholder');
    const path = url.pathname;
    const info = {
      origin: 'tokgate-lab',
      host,
      scheme,
      method: req.method,
      path,
      http_version: req.httpVersion,
      user_agent: req.headers['user-agent'] || '',
      body_bytes: bodyBytes,
    };
    let type;
    let body;
    if (/^\/(aweme|api|monitor_browser|passport|service)\//.test(path)) {
      type = 'application/json';
      body = JSON.stringify({ status_code: 0, lab: info }) + '\n';
    } else if (path === '/i18n/pixel/events.js') {
      type = 'application/javascript';
      body = `/* lab TikTok Pixel from ${host} */ window.ttq = window.ttq || [];\n`;
    } else if (path.endsWith('.mp4')) {
      type = 'video/mp4';
      body = Buffer.from('000000186674797069736f6d0000020069736f6d69736f32', 'hex');
    } else {
      type = 'text/html; charset=utf-8';
      body = `<!doctype html><title>${escapeHtml(host)}</title>` +
             `<h1>lab origin: ${escapeHtml(host)}</h1><p>${escapeHtml(req.method)} ` +
             `${escapeHtml(path)} over ${scheme} (HTTP/${escapeHtml(req.httpVersion)})</p>\n`;
    }
    res.writeHead(200, {
      'content-type': type,
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-lab-origin': 'tokgate-lab',
      'x-lab-host': host,
    });
    res.end(req.method === 'HEAD' ? undefined : body);
    process.stdout.write(JSON.stringify({
      event: 'request', ...info, status: 200, ms: Date.now() - started,
    }) + '\n');
  });
  req.on('error', () => {});
}

const tls = {
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
  allowHTTP1: true,            // ALPN h2 or http/1.1, as the client (tokgate) offers
  minVersion: 'TLSv1.2',
};
const secure = http2.createSecureServer(tls, (req, res) => answer(req, res, 'https'));
const plain = http.createServer((req, res) => answer(req, res, 'http'));
for (const server of [secure, plain]) {
  server.on('error', (err) => {
    process.stderr.write(`origin: ${err.message}\n`);
    process.exit(1);
  });
}
secure.on('sessionError', () => {});
secure.on('tlsClientError', () => {});
plain.on('clientError', (_err, socket) => socket.destroy());

const listen = (server, port) => new Promise((resolve) => {
  server.listen(Number(port), args.host, () => resolve(server.address().port));
});
const httpsPort = await listen(secure, args['https-port']);
const httpPort = await listen(plain, args['http-port']);
process.stdout.write(JSON.stringify({
  event: 'ready', host: args.host, https_port: httpsPort, http_port: httpPort,
}) + '\n');

const stop = () => {
  secure.close();
  plain.close();
  // Open keep-alive and HTTP/2 sessions would hold the process; the lab wants a quick stop.
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
