#!/usr/bin/env node
// An HTTP/2 + HTTP/1.1 + WebSocket test origin for tokgate's integration tests (Node.js 18+,
// stdlib only: no npm packages).
//
//   node h2origin.mjs --port 0 --cert good.pem --key good.key --mode h2|h1|both
//   node h2origin.mjs --port 0 --plain          (cleartext HTTP/1.1, for ws:// and http://)
//
// --mode h2    HTTP/2 only: ALPN ["h2"], allowHTTP1 false. A client offering only http/1.1 gets
//              the TLS alert no_application_protocol, as a real h2-only origin would send.
// --mode h1    HTTP/1.1 only: ALPN ["http/1.1"]; a client offering only h2 gets the same alert.
// --mode both  ALPN ["h2", "http/1.1"], allowHTTP1 true.
// Every HTTP/2 mode sets SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441) so WebSockets can ride h2.
//
// stdout carries one JSON object per line, for the test to read:
//   {"event":"ready","port":N}                        once listening
//   {"event":"connection","connection":ID,"alpn",...}  per accepted (TLS) connection
//   {"event":"request",...}                            when a request's head has arrived
//   {"event":"request-end",...,"trailers":{...}}       when its body has been read
//   {"event":"response-end",...}                       when its response ended or was cut
//   {"event":"ws-closed",...}                          when a WebSocket ends (counts both ways)
//
// Endpoints (any method unless noted; more path segments may follow, e.g. /bytes/N/tag, so
// tests can tell requests apart in tokgate's records, which log the path without the query):
//   /whoami          JSON of what this request looked like here: protocol, ALPN, SNI,
//                    :authority, Host, raw headers, connection-specific headers that arrived
//   /bytes/N         N bytes of the shared pattern (origin.py's pattern_bytes) with
//                    content-length; ?chunked=1 without (HTTP/1.1: chunked encoding)
//   /sha256          POST|PUT: reads the body, answers {"sha256","length","trailers"}
//   /trailers        a small body (?size=N) then the trailer x-checksum: sha256 of the body
//                    (HTTP/1.1: chunked with a Trailer header)
//   .../ws           WebSocket echo (any path whose last segment is "ws", so a test can pick a
//                    path the classifier knows): RFC 6455 Upgrade on HTTP/1.1, RFC 8441
//                    extended CONNECT on h2. Text is echoed as text, binary as binary, ping
//                    gets a pong with the same payload, close gets a close with the same code.
//   /stall           never answers
//   /status/N        status N, empty body
//   /encoded/N       N bytes of the shared pattern, content-encoded per ?coding=gzip|br|deflate
//                    (default gzip) with content-encoding and content-length (of the encoded
//                    bytes; ?chunked=1: without, HTTP/1.1 chunked). x-length / x-sha256 describe
//                    the decoded body, x-encoded-length / x-encoded-sha256 the bytes on the wire.
//                    N is at most 16 MiB (the whole body is compressed in memory).
//   /set-headers     200 with a small text body and one response header per query parameter
//                    named header-NAME (?header-set-cookie=a%3Db&header-x-thing=1&other=2:
//                    Set-Cookie: a=b, X-Thing: 1; other parameters are ignored)
// Bodies stream with back-pressure through small slices: nothing holds a whole body.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import zlib from 'node:zlib';

// --- the shared body pattern (same bytes as origin.py) ---------------------------------------

// Byte i of every body is PATTERN[i % 251]: a prime period keeps it out of phase with every
// power-of-two buffer, so a misplaced or repeated buffer changes the checksum.
const PATTERN_PERIOD = 251;
const PATTERN = Buffer.from(Array.from({length: PATTERN_PERIOD}, (_, i) => (i * 131 + 17) % 256));
const MAX_SLICE = 64 * 1024;
const PATTERN_BLOCK =
    Buffer.concat(Array(Math.ceil((MAX_SLICE + PATTERN_PERIOD) / PATTERN_PERIOD)).fill(PATTERN));
// Uneven slice sizes for ?chunked=1: 1 byte, odd sizes, just over a power of two.
const CHUNKED_SLICES = [1, 17, 4093, 65536, 7, 65521, 300, 32767, 2, 16385];

const MAX_BODY = 2 ** 31;
const MAX_ENCODED_BODY = 16 * 1024 * 1024;
const MAX_TRAILER_BODY = 1024 * 1024;
const MAX_WS_FRAME = 16 * 1024 * 1024;
const MAX_WS_MESSAGE = 64 * 1024 * 1024;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
// Names RFC 9113 8.2.2 forbids in HTTP/2 and a proxy must not forward from HTTP/1.1.
const CONNECTION_SPECIFIC =
    ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te'];

function patternSlice(offset, size) {
  const start = offset % PATTERN_PERIOD;
  return PATTERN_BLOCK.subarray(start, start + size);
}

const checksumCache = new Map();

function patternSha256(n) {
  if (!checksumCache.has(n)) {
    const digest = crypto.createHash('sha256');
    for (let offset = 0; offset < n; offset += MAX_SLICE) {
      digest.update(patternSlice(offset, Math.min(MAX_SLICE, n - offset)));
    }
    checksumCache.set(n, digest.digest('hex'));
  }
  return checksumCache.get(n);
}

// --- output ----------------------------------------------------------------------------------

function emit(event) {
  // Synchronous on pipes under Linux, so lines never interleave or get lost at exit.
  process.stdout.write(JSON.stringify(event) + '\n');
}

function parseArgs(argv) {
  const options = {port: 0, mode: 'both', cert: null, key: null, plain: false, host: '127.0.0.1'};
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${name} needs a value`);
      return argv[++i];
    };
    if (name === '--port')
      options.port = Number.parseInt(value(), 10);
    else if (name === '--host')
      options.host = value();
    else if (name === '--cert')
      options.cert = value();
    else if (name === '--key')
      options.key = value();
    else if (name === '--mode')
      options.mode = value();
    else if (name === '--plain')
      options.plain = true;
    else
      throw new Error(`unknown argument ${name}`);
  }
  if (!['h2', 'h1', 'both'].includes(options.mode)) throw new Error('--mode is h2, h1 or both');
  if (!options.plain && (!options.cert || !options.key)) throw new Error('--cert and --key');
  return options;
}

// --- one request, whatever its protocol ------------------------------------------------------

let nextConnectionId = 1;

function tagConnection(socket, alpn) {
  // The h2 session's socket is a proxy that forwards property reads to the real socket, so a
  // property set here is visible from both HTTP/1.1 and HTTP/2 requests.
  socket.tokgateConnection = nextConnectionId++;
  emit({
    event: 'connection',
    connection: socket.tokgateConnection,
    alpn: alpn || null,
    sni: socket.servername || null,
    peer: `${socket.remoteAddress}:${socket.remotePort}`,
  });
}

function headerObject(rawHeaders, keepPseudo) {
  const out = {};
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (!keepPseudo && name.startsWith(':')) continue;
    out[name] = name in out ? `${out[name]}, ${rawHeaders[i + 1]}` : rawHeaders[i + 1];
  }
  return out;
}

function rawPairs(rawHeaders) {
  const pairs = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) pairs.push([rawHeaders[i], rawHeaders[i + 1]]);
  return pairs;
}

// What the origin saw of one request: the request event, /whoami's answer and the base of
// every later event about it.
function describe(req, plain) {
  const isH2 = req.httpVersionMajor === 2;
  const socket = isH2 ? req.stream.session.socket : req.socket;
  const headers = headerObject(req.rawHeaders, false);
  return {
    protocol: isH2 ? 'h2' : 'http/1.1',
    alpn: plain ? null : (socket.alpnProtocol || null),
    sni: plain ? null : (socket.servername || null),
    connection: socket.tokgateConnection || null,
    stream: isH2 ? req.stream.id : null,
    method: req.method,
    path: isH2 ? req.headers[':path'] : req.url,
    scheme: isH2 ? req.headers[':scheme'] || null : (plain ? 'http' : 'https'),
    authority: isH2 ? req.headers[':authority'] || null : null,
    protocol_pseudo: isH2 ? req.headers[':protocol'] || null : null,
    host: headers.host || null,
    headers,
    raw_headers: rawPairs(req.rawHeaders),
    connection_specific: CONNECTION_SPECIFIC.filter((name) => name in headers),
  };
}

function splitPath(path) {
  const question = path.indexOf('?');
  const pathname = question < 0 ? path : path.slice(0, question);
  const query = new URLSearchParams(question < 0 ? '' : path.slice(question + 1));
  return {pathname, query, segments: pathname.split('/').filter((s) => s.length > 0)};
}

function parseCount(text, limit) {
  if (typeof text !== 'string' || !/^[0-9]{1,12}$/.test(text)) return null;
  const value = Number.parseInt(text, 10);
  return value <= limit ? value : null;
}

// Resolves once `writable` can take more (or is gone: the caller checks `destroyed`).
function drained(writable) {
  return new Promise((resolve) => {
    const done = () => {
      writable.off('drain', done);
      writable.off('close', done);
      resolve();
    };
    writable.on('drain', done);
    writable.on('close', done);
  });
}

function gone(res) {
  return res.destroyed || res.writableEnded || (res.stream && res.stream.destroyed);
}

// Reads a request body to its end: {length, sha256, trailers}, or null if the peer vanished.
function readBody(req) {
  return new Promise((resolve) => {
    const digest = crypto.createHash('sha256');
    let length = 0;
    let settled = false;
    const settle = (value) => {
      if (!settled) {
        settled = true;
        resolve(value);
      }
    };
    req.on('data', (chunk) => {
      digest.update(chunk);
      length += chunk.length;
    });
    req.on(
        'end', () => settle({length, sha256: digest.digest('hex'), trailers: {...req.trailers}}));
    req.on('error', () => settle(null));
    req.on('close', () => settle(null));
  });
}

class Exchange {
  constructor(req, res, plain) {
    this.req = req;
    this.res = res;
    this.facts = describe(req, plain);
    this.isH2 = this.facts.protocol === 'h2';
    this.bytesWritten = 0;
    this.finished = false;
    // Node's HTTP/2 compatibility layer emits 'finish' even for a stream that was reset, so a
    // response counts as complete only if this side also ended it.
    this.endedHere = false;
    emit({event: 'request', ...this.facts});
    res.on('finish', () => {
      this.finished = true;
    });
    res.on('close', () => {
      emit({
        event: 'response-end',
        path: this.facts.path,
        connection: this.facts.connection,
        stream: this.facts.stream,
        bytes_written: this.bytesWritten,
        complete: this.endedHere && (this.finished || res.writableFinished === true),
      });
    });
  }

  async body() {
    const body = await readBody(this.req);
    if (body) {
      emit({
        event: 'request-end',
        path: this.facts.path,
        connection: this.facts.connection,
        stream: this.facts.stream,
        ...body,
      });
    }
    return body;
  }

  respond(status, headers) {
    if (!gone(this.res)) this.res.writeHead(status, headers);
  }

  async write(chunk) {
    if (gone(this.res)) return false;
    this.bytesWritten += chunk.length;
    if (!this.res.write(chunk)) await drained(this.res);
    return !gone(this.res);
  }

  end(trailers) {
    if (gone(this.res)) return;
    if (trailers) this.res.addTrailers(trailers);
    this.endedHere = true;
    this.res.end();
  }

  sendJson(status, value) {
    const body = Buffer.from(JSON.stringify(value) + '\n');
    this.respond(status, {'content-type': 'application/json', 'content-length': body.length});
    this.bytesWritten += body.length;
    if (!gone(this.res)) {
      this.endedHere = true;
      this.res.end(body);
    }
  }

  sendText(status, text) {
    const body = Buffer.from(text);
    this.respond(status, {'content-type': 'text/plain', 'content-length': body.length});
    this.bytesWritten += body.length;
    if (!gone(this.res)) {
      this.endedHere = true;
      this.res.end(body);
    }
  }
}

// --- endpoints -------------------------------------------------------------------------------

async function handleRequest(req, res, plain) {
  const exchange = new Exchange(req, res, plain);
  const {query, segments} = splitPath(exchange.facts.path || '/');
  const route = segments[0] || '';
  try {
    if (route === 'sha256') {
      if (req.method !== 'POST' && req.method !== 'PUT') {
        req.resume();
        return exchange.sendText(405, 'POST or PUT\n');
      }
      const body = await exchange.body();
      if (body) exchange.sendJson(200, body);
      return;
    }
    if (route === 'stall') {
      // Never answer; the request body, if any, is still read so the peer is not blocked.
      req.resume();
      return;
    }
    // Everything else ignores a request body but reads it (an HTTP/1.1 connection stays in sync).
    const bodyRead = exchange.body();
    if (segments[segments.length - 1] === 'ws') {
      return exchange.sendText(426, 'WebSocket endpoint: use Upgrade or extended CONNECT\n');
    }
    if (route === 'whoami') {
      await bodyRead;
      return exchange.sendJson(200, exchange.facts);
    }
    if (route === 'bytes' && segments.length >= 2) {
      return await sendBytes(
          exchange, parseCount(segments[1], MAX_BODY), query.get('chunked') === '1');
    }
    if (route === 'trailers') {
      const size = query.has('size') ? parseCount(query.get('size'), MAX_TRAILER_BODY) : 1000;
      return await sendWithTrailers(exchange, size);
    }
    if (route === 'encoded' && segments.length >= 2) {
      return await sendEncoded(exchange, parseCount(segments[1], MAX_ENCODED_BODY),
                               query.get('coding') || 'gzip', query.get('chunked') === '1');
    }
    if (route === 'set-headers') {
      await bodyRead;
      const headers = {'content-type': 'text/plain'};
      for (const [name, value] of query) {
        const lower = name.toLowerCase();
        if (lower.startsWith('header-') && lower.length > 7) headers[lower.slice(7)] = value;
      }
      const body = Buffer.from('headers set\n');
      headers['content-length'] = body.length;
      exchange.respond(200, headers);
      if (!(await exchange.write(body))) return;
      return exchange.end();
    }
    if (route === 'status' && segments.length >= 2) {
      const status = parseCount(segments[1], 599);
      if (status === null || status < 200) return exchange.sendText(400, 'bad status\n');
      exchange.respond(status, status === 204 || status === 304 ? {} : {'content-length': 0});
      return exchange.end();
    }
    return exchange.sendText(404, `no such endpoint: ${exchange.facts.path}\n`);
  } catch (error) {
    process.stderr.write(`h2origin: ${error.stack}\n`);
    if (!res.headersSent)
      exchange.sendText(500, 'origin error\n');
    else
      res.destroy();
  }
}

async function sendBytes(exchange, n, chunked) {
  if (n === null) return exchange.sendText(400, 'bad length\n');
  const headers = {'content-type': 'application/octet-stream', 'x-length': String(n)};
  // The checksum costs a pass over the body: only for sizes a test compares whole.
  if (n <= 64 * 1024 * 1024) headers['x-sha256'] = patternSha256(n);
  if (!chunked) headers['content-length'] = String(n);
  exchange.respond(200, headers);
  if (exchange.req.method === 'HEAD') return exchange.end();
  let index = 0;
  for (let offset = 0; offset < n;) {
    const wanted = chunked ? CHUNKED_SLICES[index++ % CHUNKED_SLICES.length] : MAX_SLICE;
    const size = Math.min(wanted, MAX_SLICE, n - offset);
    if (!(await exchange.write(patternSlice(offset, size)))) return;
    offset += size;
  }
  exchange.end();
}

function encodeBody(coding, body) {
  if (coding === 'gzip') return zlib.gzipSync(body);
  if (coding === 'deflate') return zlib.deflateSync(body);  // zlib-wrapped, as RFC 9110 says
  if (coding === 'br') return zlib.brotliCompressSync(body);
  return null;
}

async function sendEncoded(exchange, n, coding, chunked) {
  if (n === null) return exchange.sendText(400, 'bad length\n');
  const plain = Buffer.concat(Array.from(
      {length: Math.ceil(n / MAX_SLICE)},
      (_, i) => patternSlice(i * MAX_SLICE, Math.min(MAX_SLICE, n - i * MAX_SLICE))));
  const encoded = encodeBody(coding, plain);
  if (encoded === null) return exchange.sendText(400, 'coding is gzip, br or deflate\n');
  const headers = {
    'content-type': 'application/octet-stream',
    'content-encoding': coding,
    'x-length': String(n),
    'x-sha256': patternSha256(n),
    'x-encoded-length': String(encoded.length),
    'x-encoded-sha256': crypto.createHash('sha256').update(encoded).digest('hex'),
  };
  if (!chunked) headers['content-length'] = String(encoded.length);
  exchange.respond(200, headers);
  if (exchange.req.method === 'HEAD') return exchange.end();
  for (let offset = 0; offset < encoded.length; offset += MAX_SLICE) {
    if (!(await exchange.write(encoded.subarray(offset, offset + MAX_SLICE)))) return;
  }
  exchange.end();
}

async function sendWithTrailers(exchange, size) {
  if (size === null) return exchange.sendText(400, 'bad size\n');
  const body = Buffer.from(patternSlice(0, Math.min(size, MAX_SLICE)));
  const full = size <= MAX_SLICE ?
      body :
      Buffer.concat(Array.from(
          {length: Math.ceil(size / MAX_SLICE)},
          (_, i) => patternSlice(i * MAX_SLICE, Math.min(MAX_SLICE, size - i * MAX_SLICE))));
  const checksum = crypto.createHash('sha256').update(full).digest('hex');
  const headers = {'content-type': 'application/octet-stream', 'x-length': String(size)};
  // HTTP/1.1 announces trailers and needs chunked framing (no content-length) to carry them.
  if (!exchange.isH2) headers.trailer = 'x-checksum, x-trailer-note';
  exchange.respond(200, headers);
  if (!(await exchange.write(full))) return;
  exchange.end({'x-checksum': checksum, 'x-trailer-note': 'sent after the body'});
}

// --- WebSocket echo (RFC 6455 framing, by hand) ----------------------------------------------

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

function serverFrame(opcode, payload) {
  // Server frames are never masked (RFC 6455 5.1).
  let head;
  if (payload.length < 126) {
    head = Buffer.from([0x80 | opcode, payload.length]);
  } else if (payload.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(payload.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([head, payload]);
}

class WebSocketEcho {
  // write(buffer) sends bytes, finish() ends the transport; feed() takes bytes as they arrive.
  constructor(facts, write, finish) {
    this.facts = facts;
    this.write = write;
    this.finish = finish;
    this.buffer = Buffer.alloc(0);
    this.message = null;  // {opcode, parts, length} while a fragmented message is open
    this.closed = false;
    this.reported = false;
    this.counts = {messages_in: 0, messages_out: 0, bytes_in: 0, bytes_out: 0, pings: 0, pongs: 0};
    this.closeCode = null;
  }

  feed(chunk) {
    if (this.closed) return;
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      const frame = this.nextFrame();
      if (frame === null || this.closed) return;
      this.onFrame(frame);
      if (this.closed) return;
    }
  }

  nextFrame() {
    const b = this.buffer;
    if (b.length < 2) return null;
    const fin = (b[0] & 0x80) !== 0;
    const rsv = b[0] & 0x70;
    const opcode = b[0] & 0x0f;
    const masked = (b[1] & 0x80) !== 0;
    let length = b[1] & 0x7f;
    let offset = 2;
    if (length === 126) {
      if (b.length < 4) return null;
      length = b.readUInt16BE(2);
      offset = 4;
    } else if (length === 127) {
      if (b.length < 10) return null;
      const big = b.readBigUInt64BE(2);
      if (big > BigInt(MAX_WS_FRAME)) return this.fail(1009, 'frame too big');
      length = Number(big);
      offset = 10;
    }
    if (rsv !== 0) return this.fail(1002, 'reserved bits set');
    if (!masked) return this.fail(1002, 'client frame not masked');
    if (length > MAX_WS_FRAME) return this.fail(1009, 'frame too big');
    if (b.length < offset + 4 + length) return null;
    const mask = b.subarray(offset, offset + 4);
    const payload = Buffer.from(b.subarray(offset + 4, offset + 4 + length));
    for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
    this.buffer = b.subarray(offset + 4 + length);
    return {fin, opcode, payload};
  }

  onFrame({fin, opcode, payload}) {
    if (opcode >= 0x8) {
      if (!fin || payload.length > 125) return this.fail(1002, 'bad control frame');
      if (opcode === OP_PING) {
        this.counts.pings++;
        this.write(serverFrame(OP_PONG, payload));
      } else if (opcode === OP_PONG) {
        this.counts.pongs++;
      } else if (opcode === OP_CLOSE) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : null;
        // Echo the code (and the reason) back, then close: the server closes TCP first.
        this.closeWith(payload);
      } else {
        return this.fail(1002, 'unknown control opcode');
      }
      return;
    }
    if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.message) return this.fail(1002, 'new message inside a fragmented one');
      this.message = {opcode, parts: [], length: 0};
    } else if (opcode !== OP_CONTINUATION || !this.message) {
      return this.fail(1002, 'unexpected continuation or opcode');
    }
    this.message.parts.push(payload);
    this.message.length += payload.length;
    if (this.message.length > MAX_WS_MESSAGE) return this.fail(1009, 'message too big');
    if (!fin) return;
    const whole = Buffer.concat(this.message.parts);
    const messageOpcode = this.message.opcode;
    this.message = null;
    this.counts.messages_in++;
    this.counts.bytes_in += whole.length;
    this.counts.messages_out++;
    this.counts.bytes_out += whole.length;
    this.write(serverFrame(messageOpcode, whole));
  }

  fail(code, reason) {
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code, 0);
    this.closeWith(Buffer.concat([payload, Buffer.from(reason)]));
    return null;
  }

  closeWith(payload) {
    if (this.closed) return;
    this.closed = true;
    this.write(serverFrame(OP_CLOSE, payload));
    this.report(true);
    this.finish();
  }

  report(clean) {
    if (this.reported) return;
    this.reported = true;
    emit({
      event: 'ws-closed',
      path: this.facts.path,
      protocol: this.facts.protocol,
      connection: this.facts.connection,
      stream: this.facts.stream,
      clean,
      close_code: this.closeCode,
      ...this.counts,
    });
  }
}

function acceptKey(key) { return crypto.createHash('sha1').update(key + WS_GUID).digest('base64'); }

function isWebSocketPath(path) {
  const segments = splitPath(path || '/').segments;
  return segments[segments.length - 1] === 'ws';
}

// HTTP/1.1 Upgrade (RFC 6455 4.2).
function handleUpgrade(req, socket, head, plain) {
  const facts = describe(req, plain);
  emit({event: 'request', ...facts});
  const refuse = (status, reason) => {
    socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
  };
  const key = req.headers['sec-websocket-key'] || '';
  if (!isWebSocketPath(facts.path)) return refuse(404, 'Not Found');
  if (req.method !== 'GET' || (req.headers.upgrade || '').toLowerCase() !== 'websocket' ||
      !/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    return refuse(400, 'Bad Request');
  }
  if (req.headers['sec-websocket-version'] !== '13') return refuse(426, 'Upgrade Required');
  const lines = [
    'HTTP/1.1 101 Switching Protocols',
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${acceptKey(key)}`,
  ];
  const offered = (req.headers['sec-websocket-protocol'] || '').split(',')[0].trim();
  if (offered) lines.push(`Sec-WebSocket-Protocol: ${offered}`);
  socket.write(lines.join('\r\n') + '\r\n\r\n');
  socket.setNoDelay(true);
  const echo = new WebSocketEcho(facts, (data) => socket.write(data), () => socket.end());
  socket.on('data', (chunk) => echo.feed(chunk));
  socket.on('close', () => echo.report(false));
  socket.on('error', () => {});
  if (head && head.length) echo.feed(head);
}

// HTTP/2 extended CONNECT (RFC 8441 4-5): :method CONNECT, :protocol websocket; the stream's
// DATA frames then carry WebSocket frames, with no key or accept header.
function handleConnect(req, res) {
  const facts = describe(req, false);
  emit({event: 'request', ...facts});
  if (facts.protocol_pseudo !== 'websocket' || !isWebSocketPath(facts.path)) {
    res.writeHead(facts.protocol_pseudo ? 404 : 501);
    res.end();
    return;
  }
  if (req.headers['sec-websocket-version'] !== '13') {
    res.writeHead(426, {'sec-websocket-version': '13'});
    res.end();
    return;
  }
  const headers = {};
  const offered = (req.headers['sec-websocket-protocol'] || '').split(',')[0].trim();
  if (offered) headers['sec-websocket-protocol'] = offered;
  res.writeHead(200, headers);
  const echo = new WebSocketEcho(facts, (data) => res.write(data), () => res.end());
  req.on('data', (chunk) => echo.feed(chunk));
  req.on('end', () => echo.report(false));
  res.on('close', () => echo.report(false));
  req.on('error', () => {});
}

// --- servers ---------------------------------------------------------------------------------

function makeServer(options) {
  if (options.plain) {
    const server = http.createServer();
    server.on('connection', (socket) => tagConnection(socket, null));
    server.on('request', (req, res) => handleRequest(req, res, true).catch(report));
    server.on('upgrade', (req, socket, head) => handleUpgrade(req, socket, head, true));
    return server;
  }
  const tls = {cert: fs.readFileSync(options.cert), key: fs.readFileSync(options.key)};
  let server;
  if (options.mode === 'h1') {
    server = https.createServer({...tls, ALPNProtocols: ['http/1.1']});
  } else {
    server = http2.createSecureServer({
      ...tls,
      allowHTTP1: options.mode === 'both',
      ALPNProtocols: options.mode === 'both' ? ['h2', 'http/1.1'] : ['h2'],
      settings: {enableConnectProtocol: true},
      // 100 streams of up to 16 MiB each may be in flight at once.
      maxSessionMemory: 512,
    });
    server.on('connect', (req, res) => handleConnect(req, res));
    server.on('session', (session) => session.on('error', () => {}));
    // A client that negotiated no protocol here (none offered): closed at once, not after the
    // default 10 s, so a proxy's fallback is not slowed down.
    server.on('unknownProtocol', (socket) => socket.destroy());
  }
  // Long transfers to slow readers must not be cut by the server's own timers.
  server.setTimeout(0);
  server.on('secureConnection', (socket) => tagConnection(socket, socket.alpnProtocol));
  server.on('tlsClientError', () => {});
  server.on('request', (req, res) => handleRequest(req, res, false).catch(report));
  server.on('upgrade', (req, socket, head) => handleUpgrade(req, socket, head, false));
  return server;
}

// A fault in one exchange (a peer gone mid-request) is logged, never fatal: the tests would
// otherwise see a dead origin instead of the real failure.
function report(error) {
  process.stderr.write(`h2origin: ${error && error.stack ? error.stack : error}\n`);
}

function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`h2origin: ${error.message}\n`);
    process.exit(2);
  }
  const server = makeServer(options);
  if ('requestTimeout' in server) server.requestTimeout = 0;
  if ('keepAliveTimeout' in server) server.keepAliveTimeout = 60_000;
  server.on('clientError', (error, socket) => socket.destroy());
  server.listen(options.port, options.host, () => {
    emit({
      event: 'ready',
      port: server.address().port,
      mode: options.plain ? 'plain' : options.mode
    });
  });
  process.on('uncaughtException', report);
  process.on('unhandledRejection', report);
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The harness reads stdout; if it goes away, so does the origin.
  process.stdout.on('error', stop);
}

main();
