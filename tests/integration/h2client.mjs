#!/usr/bin/env node
// An HTTP/2 client for tokgate's integration tests (Node.js 18+, stdlib only), for what curl
// cannot do or show: many streams with per-stream results (status, RST_STREAM code, checksum,
// trailers), request trailers, and WebSocket over h2 (RFC 8441 extended CONNECT).
//
//   node h2client.mjs PLAN.json
//
// PLAN (JSON):
//   proxy        "127.0.0.1:PORT": CONNECT through this explicit proxy first (else direct)
//   connect      "host:port" the CONNECT target (direct: where to connect, host resolved as is)
//   servername   SNI and the name the certificate must carry (default: connect's host)
//   ca           PEM file the server's certificate is verified against
//   alpn         protocols offered (default ["h2"]: so a proxy cannot fall back to HTTP/1.1)
//   authority    :authority of every request (default: connect)
//   window       the client's stream and connection receive window (default 1 MiB / 16 MiB)
//   timeout_ms   the whole run's deadline (default 60000)
//   requests     [{method, path, headers, body_size, trailers, authority}]: all started at once
//                on the one connection; body_size bytes of the shared pattern are sent
//   websocket    {path, protocol}: an echo script over extended CONNECT (after the requests)
//
// stdout, one JSON object per line:
//   {"event":"session","alpn":...,"remote_settings":{...}}
//   {"event":"response","index":i,"stream_id","status","headers","trailers","length","sha256",
//    "body" (text or JSON under 64 KiB),"rst_code","error","ms"}  per request, as it ends
//   {"event":"websocket",...}                                  what the echo script saw
//   {"event":"done","responses":n,"goaway":{...}|null,"error":null|"..."}
// Exit status 0 when the run completed (whatever the statuses), 1 on a connection failure.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';

const PATTERN_PERIOD = 251;
const PATTERN = Buffer.from(Array.from({length: PATTERN_PERIOD}, (_, i) => (i * 131 + 17) % 256));
const MAX_SLICE = 64 * 1024;
const PATTERN_BLOCK =
    Buffer.concat(Array(Math.ceil((MAX_SLICE + PATTERN_PERIOD) / PATTERN_PERIOD)).fill(PATTERN));
const BODY_KEPT = 64 * 1024;
const CONNECT_HEAD_LIMIT = 64 * 1024;

function patternSlice(offset, size) {
  const start = offset % PATTERN_PERIOD;
  return PATTERN_BLOCK.subarray(start, start + size);
}

function emit(event) { process.stdout.write(JSON.stringify(event) + '\n'); }

function splitAuthority(authority) {
  const colon = authority.lastIndexOf(':');
  if (colon < 0) throw new Error(`no port in ${authority}`);
  return {
    host: authority.slice(0, colon).replace(/^\[|\]$/g, ''),
    port: Number.parseInt(authority.slice(colon + 1), 10)
  };
}

// --- the connection --------------------------------------------------------------------------

// CONNECT through the explicit proxy; resolves with the raw socket once the 2xx head is read.
function tunnel(proxy, target) {
  return new Promise((resolve, reject) => {
    const {host, port} = splitAuthority(proxy);
    const socket = net.connect({host, port});
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > CONNECT_HEAD_LIMIT) fail(new Error('CONNECT answer head too long'));
        return;
      }
      socket.off('data', onData);
      socket.off('error', fail);
      const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      const status = Number.parseInt(statusLine.split(' ')[1], 10);
      if (!(status >= 200 && status < 300)) {
        socket.destroy();
        const error = new Error(`CONNECT answered: ${statusLine}`);
        error.connectStatus = status;
        return reject(error);
      }
      const rest = head.subarray(end + 4);
      if (rest.length) socket.unshift(rest);
      resolve(socket);
    };
    const fail = (error) => {
      socket.destroy();
      reject(error);
    };
    socket.on('data', onData);
    socket.on('error', fail);
    socket.on('connect', () => {
      socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    });
  });
}

async function openTls(plan) {
  const target = splitAuthority(plan.connect);
  const options = {
    servername: plan.servername || target.host,
    ALPNProtocols: plan.alpn || ['h2'],
  };
  if (plan.ca) options.ca = fs.readFileSync(plan.ca);
  if (plan.insecure) options.rejectUnauthorized = false;
  if (plan.proxy) {
    options.socket = await tunnel(plan.proxy, plan.connect);
  } else {
    options.host = target.host;
    options.port = target.port;
  }
  return new Promise((resolve, reject) => {
    const socket = tls.connect(options, () => resolve(socket));
    socket.once('error', reject);
  });
}

// --- requests --------------------------------------------------------------------------------

// Requests not finished yet: each entry reports its request as it stands.
const unfinished = new Set();

function runRequest(session, plan, spec, index) {
  return new Promise((resolve) => {
    const started = Date.now();
    const headers = {
      ':method': spec.method || 'GET',
      ':path': spec.path,
      ':scheme': 'https',
      ':authority': spec.authority || plan.authority || plan.connect,
      ...(spec.headers || {}),
    };
    const bodySize = spec.body_size || 0;
    const hasTrailers = spec.trailers && Object.keys(spec.trailers).length > 0;
    const result = {
      event: 'response',
      index,
      path: spec.path,
      stream_id: null,
      status: null,
      headers: null,
      trailers: null,
      length: 0,
      sha256: null,
      body: null,
      rst_code: null,
      error: null,
      ms: null,
    };
    // At the run's deadline a stream still open is reported as it stands, error "deadline".
    const onDeadline = () => {
      result.error = result.error || 'deadline';
      finish();
    };
    unfinished.add(onDeadline);
    const digest = crypto.createHash('sha256');
    const kept = [];
    let keptLength = 0;
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      unfinished.delete(onDeadline);
      result.ms = Date.now() - started;
      result.sha256 = digest.digest('hex');
      // Text bodies only (block pages, /whoami, /sha256 answers): checksums cover the rest.
      const type = (result.headers && result.headers['content-type']) || '';
      if (result.length <= BODY_KEPT && /^(text\/|application\/json)/.test(type)) {
        result.body = Buffer.concat(kept).toString('utf8');
      }
      emit(result);
      resolve(result);
    };
    let stream;
    try {
      stream = session.request(headers, {
        endStream: bodySize === 0 && !hasTrailers,
        waitForTrailers: hasTrailers,
      });
    } catch (error) {
      result.error = error.code || error.message;
      return finish();
    }
    stream.on('ready', () => {
      result.stream_id = stream.id;
    });
    stream.on('response', (h) => {
      result.status = h[':status'];
      result.headers = plainHeaders(h);
    });
    stream.on('trailers', (t) => {
      result.trailers = plainHeaders(t);
    });
    stream.on('data', (chunk) => {
      digest.update(chunk);
      result.length += chunk.length;
      if (keptLength <= BODY_KEPT) {
        kept.push(chunk);
        keptLength += chunk.length;
      }
    });
    stream.on('wantTrailers', () => stream.sendTrailers(spec.trailers));
    stream.on('error', (error) => {
      result.error = error.code || error.message;
    });
    stream.on('close', () => {
      result.stream_id = stream.id ?? result.stream_id;
      // rstCode is NO_ERROR (0) after a clean end; anything else is the peer's (or our) reset.
      if (stream.rstCode) result.rst_code = stream.rstCode;
      finish();
    });
    if (bodySize > 0 || hasTrailers) sendBody(stream, bodySize);
  });
}

async function sendBody(stream, size) {
  for (let offset = 0; offset < size;) {
    const n = Math.min(MAX_SLICE, size - offset);
    if (stream.destroyed) return;
    const more = stream.write(patternSlice(offset, n));
    offset += n;
    if (!more) {
      await new Promise((resolve) => {
        const done = () => {
          stream.off('drain', done);
          stream.off('close', done);
          resolve();
        };
        stream.on('drain', done);
        stream.on('close', done);
      });
    }
  }
  if (!stream.destroyed) stream.end();
}

function plainHeaders(h) {
  const out = {};
  for (const [name, value] of Object.entries(h)) out[name] = value;
  return out;
}

// --- WebSocket over extended CONNECT ---------------------------------------------------------

function clientFrame(opcode, payload, fin = true) {
  // Client frames are always masked (RFC 6455 5.3).
  const mask = crypto.randomBytes(4);
  let head;
  if (payload.length < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | payload.length]);
  } else if (payload.length < 65536) {
    head = Buffer.alloc(4);
    head[1] = 0x80 | 126;
    head.writeUInt16BE(payload.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  head[0] = (fin ? 0x80 : 0) | opcode;
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, masked]);
}

// Reads unmasked server frames from a stream of chunks.
class FrameReader {
  constructor() {
    this.buffer = Buffer.alloc(0);
    this.frames = [];
    this.waiters = [];
    this.ended = false;
  }

  push(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) break;
      let length = b[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (b.length < 4) break;
        length = b.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (b.length < 10) break;
        length = Number(b.readBigUInt64BE(2));
        offset = 10;
      }
      const masked = (b[1] & 0x80) !== 0;
      if (masked) offset += 4;
      if (b.length < offset + length) break;
      const payload = Buffer.from(b.subarray(offset, offset + length));
      this.frames.push({fin: (b[0] & 0x80) !== 0, opcode: b[0] & 0x0f, payload, masked});
      this.buffer = b.subarray(offset + length);
    }
    this.wake();
  }

  end() {
    this.ended = true;
    this.wake();
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  // The next frame, or null at the end of the stream or the deadline.
  async next(deadline) {
    while (this.frames.length === 0) {
      if (this.ended || Date.now() >= deadline) return null;
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.frames.shift();
  }
}

// The same script as wsclient.py's echo_script: text, a 70,000-byte binary message (64-bit
// length), a text message in three fragments, a ping, then a close with code 1000.
function wsScript() {
  const binary = Buffer.alloc(70000);
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 7 + 3) % 256;
  return [
    {kind: 'text', payload: Buffer.from('hello over h2 ✓')},
    {kind: 'binary', payload: binary},
    {kind: 'fragmented', payload: Buffer.from('one message, three frames')},
    {kind: 'ping', payload: Buffer.from('ping-h2')},
    {kind: 'close', code: 1000, reason: 'bye'},
  ];
}

async function runWebSocket(session, plan, spec, deadline) {
  const report = {
    event: 'websocket',
    path: spec.path,
    status: null,
    headers: null,
    enable_connect_protocol: null,
    echoes: [],
    pong: null,
    close_code: null,
    close_reason: null,
    ended_after_close: false,
    rst_code: null,
    error: null,
    sent: {messages: 0, bytes: 0, control_frames: 0, control_bytes: 0}
  };
  const settings = session.remoteSettings || {};
  report.enable_connect_protocol = settings.enableConnectProtocol === true;
  if (!report.enable_connect_protocol) {
    report.error = 'peer did not send SETTINGS_ENABLE_CONNECT_PROTOCOL';
    emit(report);
    return report;
  }
  const headers = {
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': 'https',
    ':path': spec.path,
    ':authority': spec.authority || plan.authority || plan.connect,
    'sec-websocket-version': '13',
  };
  if (spec.protocol) headers['sec-websocket-protocol'] = spec.protocol;
  let stream;
  try {
    stream = session.request(headers, {endStream: false});
  } catch (error) {
    report.error = error.code || error.message;
    emit(report);
    return report;
  }
  const reader = new FrameReader();
  stream.on('data', (chunk) => reader.push(chunk));
  stream.on('end', () => reader.end());
  stream.on('close', () => {
    if (stream.rstCode) report.rst_code = stream.rstCode;
    reader.end();
  });
  stream.on('error', (error) => {
    report.error = report.error || error.code || error.message;
  });
  const response = await new Promise((resolve) => {
    stream.once('response', (h) => resolve(h));
    stream.once('close', () => resolve(null));
    setTimeout(() => resolve(null), Math.max(1, deadline - Date.now()));
  });
  if (!response) {
    report.error = report.error || 'no response to the extended CONNECT';
    emit(report);
    return report;
  }
  report.status = response[':status'];
  report.headers = plainHeaders(response);
  if (report.status !== 200) {
    stream.close();
    emit(report);
    return report;
  }
  for (const step of wsScript()) {
    if (step.kind === 'text' || step.kind === 'binary') {
      stream.write(clientFrame(step.kind === 'text' ? 1 : 2, step.payload));
      report.sent.messages++;
      report.sent.bytes += step.payload.length;
      const frame = await reader.next(deadline);
      report.echoes.push(
          frame ? {
            kind: step.kind,
            sent: step.payload.length,
            opcode: frame.opcode,
            fin: frame.fin,
            received: frame.payload.length,
            equal: frame.payload.equals(step.payload),
          } :
                  {kind: step.kind, sent: step.payload.length, opcode: null});
    } else if (step.kind === 'fragmented') {
      const p = step.payload;
      const cut1 = Math.floor(p.length / 3);
      const cut2 = Math.floor((2 * p.length) / 3);
      stream.write(clientFrame(1, p.subarray(0, cut1), false));
      stream.write(clientFrame(0, p.subarray(cut1, cut2), false));
      stream.write(clientFrame(0, p.subarray(cut2), true));
      report.sent.messages++;
      report.sent.bytes += p.length;
      // The echo may come back whole or in fragments: reassemble.
      const parts = [];
      let first = null;
      for (;;) {
        const frame = await reader.next(deadline);
        if (!frame) break;
        if (first === null) first = frame.opcode;
        parts.push(frame.payload);
        if (frame.fin) break;
      }
      const whole = Buffer.concat(parts);
      report.echoes.push({
        kind: step.kind,
        sent: p.length,
        opcode: first,
        fin: true,
        received: whole.length,
        equal: whole.equals(p)
      });
    } else if (step.kind === 'ping') {
      stream.write(clientFrame(9, step.payload));
      report.sent.control_frames++;
      report.sent.control_bytes += step.payload.length;
      const frame = await reader.next(deadline);
      report.pong = frame ? {opcode: frame.opcode, payload: frame.payload.toString('utf8')} : null;
    } else if (step.kind === 'close') {
      const payload = Buffer.concat([Buffer.alloc(2), Buffer.from(step.reason)]);
      payload.writeUInt16BE(step.code, 0);
      stream.write(clientFrame(8, payload));
      report.sent.control_frames++;
      report.sent.control_bytes += payload.length;
      const frame = await reader.next(deadline);
      if (frame && frame.opcode === 8) {
        report.close_code = frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : null;
        report.close_reason = frame.payload.subarray(2).toString('utf8');
      }
      stream.end();
      report.ended_after_close = (await reader.next(deadline)) === null && reader.ended;
    }
  }
  emit(report);
  return report;
}

// --- main ------------------------------------------------------------------------------------

async function main() {
  if (process.argv.length !== 3) {
    process.stderr.write('usage: node h2client.mjs PLAN.json\n');
    process.exit(2);
  }
  const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const deadline = Date.now() + (plan.timeout_ms || 60000);
  const overall = setTimeout(() => {
    for (const report of [...unfinished]) report();
    emit({event: 'done', responses: null, goaway: null, error: 'deadline'});
    process.exit(1);
  }, plan.timeout_ms || 60000);

  let socket;
  try {
    socket = await openTls(plan);
  } catch (error) {
    emit({
      event: 'session',
      alpn: null,
      error: error.message,
      connect_status: error.connectStatus ?? null
    });
    emit({event: 'done', responses: 0, goaway: null, error: error.message});
    process.exit(1);
  }
  const alpn = socket.alpnProtocol || null;
  if (alpn !== 'h2') {
    emit({event: 'session', alpn, error: 'h2 not negotiated'});
    emit({event: 'done', responses: 0, goaway: null, error: 'h2 not negotiated'});
    socket.destroy();
    process.exit(1);
  }
  const window = plan.window || 1024 * 1024;
  const session = http2.connect(`https://${plan.authority || plan.connect}`, {
    createConnection: () => socket,
    settings: {initialWindowSize: window, enablePush: false},
    maxSessionMemory: 256,
  });
  let goaway = null;
  let sessionError = null;
  session.on('goaway', (code, lastStreamId) => {
    goaway = {code, last_stream_id: lastStreamId};
  });
  session.on('error', (error) => {
    sessionError = error.code || error.message;
  });
  session.on('localSettings', () => {});
  await new Promise((resolve) => {
    session.once('remoteSettings', resolve);
    session.once('close', resolve);
  });
  if (!session.destroyed) session.setLocalWindowSize(Math.max(window * 16, 65535));
  emit({event: 'session', alpn, remote_settings: session.remoteSettings || null});

  const results = await Promise.all(
      (plan.requests || []).map((spec, index) => runRequest(session, plan, spec, index)));
  if (plan.websocket && !session.destroyed) {
    await runWebSocket(session, plan, plan.websocket, deadline);
  }
  clearTimeout(overall);
  emit({event: 'done', responses: results.length, goaway, error: sessionError});
  session.close();
  setTimeout(() => process.exit(0), 200).unref();
}

main().catch((error) => {
  emit({event: 'done', responses: null, goaway: null, error: error.stack});
  process.exit(1);
});
