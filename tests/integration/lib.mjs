// lib.mjs: the node side of the integration harness.  Starts the real sluice
// binary on kernel-picked loopback ports with a temp data dir, and gives the
// tests small clients (publish, raw SSE reader, WebSocket wrapper, a TCP
// proxy that can cut connections, HTTPS with a private CA).
//
// Why it is shaped so: like harness.py, the tests judge the server from
// outside, so this owns nothing of it but its command line, stderr and
// sockets.  Every wait is bounded (withTimeout/waitFor), and every process
// and socket made here is killed in cleanup whatever the outcome, so a hung
// server fails a test instead of hanging ctest.
//
// Environment: SLUICE_BIN (default <source>/build/sluice), SLUICE_SOURCE_DIR,
// SLUICE_TEST_LOGS=1 prints each server's stderr when it is cleaned up,
// SLUICE_TEST_LAX_EXIT=1 skips the check that SIGTERM exits 0.

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const SOURCE_DIR = process.env.SLUICE_SOURCE_DIR || path.resolve(HERE, '..', '..');
export const BIN = process.env.SLUICE_BIN || path.join(SOURCE_DIR, 'build', 'sluice');
export const APPS = path.join(HERE, 'apps');

export const START_TIMEOUT = 10000;
export const STOP_TIMEOUT = 10000;
export const IO_TIMEOUT = 10000;

const LISTEN_RE = /listening on (\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+):(\d+)/;

export function app(name) {
  return path.join(APPS, name);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Resolves or rejects like `promise`, or rejects after ms with `what`.
export function withTimeout(promise, ms, what = 'operation') {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// Polls fn() (sync or async) every 25 ms until it returns a truthy value,
// which it returns; throws after ms.
export async function waitFor(fn, ms, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

// A temp dir removed when the test (or the process) ends.
export function tmpdir(t) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-node-'));
  const rm = () => fs.rmSync(d, { recursive: true, force: true });
  if (t) t.after(rm);
  cleanups.add(rm);
  return d;
}

// Everything still running when the process exits is killed (SIGKILL: the
// tests' own cleanup already tried the graceful way).
const live = new Set();
const cleanups = new Set();
process.on('exit', () => {
  for (const s of live) {
    try {
      s.proc.kill('SIGKILL');
    } catch {}
  }
  for (const f of cleanups) {
    try {
      f();
    } catch {}
  }
});

export class Server {
  // opts: app (path or null for the default app), listen (list), tls
  // ({cert, key}: adds a TLS listener on 127.0.0.1:0), args (extra flags),
  // dataDir (default: a fresh temp dir, removed at cleanup).
  constructor(opts = {}) {
    this.opts = opts;
    this.ownData = !opts.dataDir;
    this.dataDir = opts.dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-test-'));
    this.lines = [];
    this.listeners = []; // {host, port, tls}
    this.exitExpected = false;
    this.exit = null; // {code, signal} once exited
    this.waiters = new Set();
  }

  command() {
    const o = this.opts;
    const args = [];
    for (const l of o.listen || ['127.0.0.1:0']) args.push('-l', l);
    if (o.tls) {
      args.push('--tls-listen', '127.0.0.1:0', '--tls-cert', o.tls.cert, '--tls-key', o.tls.key);
    }
    args.push('-d', this.dataDir, ...(o.args || []));
    if (o.app) args.push(o.app);
    return args;
  }

  async start() {
    if (!fs.existsSync(BIN)) throw new Error(`sluice binary not found: ${BIN}`);
    this.proc = spawn(BIN, this.command(), { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this);
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        this._notify();
        resolve(this.exit);
      });
    });
    let partial = '';
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (chunk) => {
      partial += chunk;
      const parts = partial.split('\n');
      partial = parts.pop();
      for (const l of parts) this._line(l);
    });
    this.proc.stdout.resume();
    const want = (this.opts.listen || ['127.0.0.1:0']).length + (this.opts.tls ? 1 : 0);
    await this.waitUntil(() => {
      if (this.exit) throw new Error(`sluice exited (${JSON.stringify(this.exit)}) before listening:\n${this.logText()}`);
      return this.listeners.length >= want;
    }, START_TIMEOUT, 'listening lines');
    // One answered request proves the loop runs and signal handlers are set.
    await waitFor(async () => {
      try {
        await withTimeout(fetch(this.url('/__node_harness_ready')).then((r) => r.arrayBuffer()), 2000, 'probe');
        return true;
      } catch {
        if (this.exit) throw new Error(`sluice died:\n${this.logText()}`);
        return false;
      }
    }, START_TIMEOUT, 'the server to answer');
    return this;
  }

  _line(l) {
    this.lines.push(l);
    const m = LISTEN_RE.exec(l);
    if (m) {
      let host = m[1];
      if (host.startsWith('[')) host = host.slice(1, -1);
      this.listeners.push({ host, port: Number(m[2]), tls: /\btls\b|https/i.test(l) });
    }
    this._notify();
  }

  _notify() {
    for (const w of this.waiters) w();
  }

  // Waits (bounded) until pred() is truthy, re-checked at every log line and
  // at exit; returns its value.
  waitUntil(pred, ms, what) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        let v;
        try {
          v = pred();
        } catch (e) {
          done();
          reject(e);
          return;
        }
        if (v) {
          done();
          resolve(v);
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${what}:\n${this.logText(60)}`));
      }, ms);
      this.waiters.add(check);
      check();
    });
  }

  // Index of the next log line, to pass as `since` to waitLog.
  mark() {
    return this.lines.length;
  }

  waitLog(re, ms = 10000, since = 0) {
    return this.waitUntil(() => {
      for (let i = since; i < this.lines.length; i++) if (re.test(this.lines[i])) return this.lines[i];
      return null;
    }, ms, `a log line matching ${re}`);
  }

  logText(last = 0) {
    return (last ? this.lines.slice(-last) : this.lines).join('\n');
  }

  get pid() {
    return this.proc.pid;
  }

  get port() {
    const l = this.listeners.find((x) => !x.tls);
    if (!l) throw new Error('no plain listener');
    return l.port;
  }

  get tlsPort() {
    const l = this.listeners.find((x) => x.tls);
    if (!l) throw new Error('no TLS listener');
    return l.port;
  }

  url(p = '/') {
    return `http://127.0.0.1:${this.port}${p}`;
  }
  httpsUrl(p = '/') {
    return `https://127.0.0.1:${this.tlsPort}${p}`;
  }
  wsUrl(p = '/') {
    return `ws://127.0.0.1:${this.port}${p}`;
  }
  wssUrl(p = '/') {
    return `wss://127.0.0.1:${this.tlsPort}${p}`;
  }

  alive() {
    return this.proc && !this.exit;
  }

  // Resident set size in KiB, from /proc/PID/status.
  rssKiB() {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  }

  // Graceful stop: SIGTERM and a bounded wait; returns the exit code (null
  // when killed by a signal).
  async stop(sig = 'SIGTERM') {
    this.exitExpected = true;
    if (!this.exit) this.proc.kill(sig);
    const e = await withTimeout(this.exited, STOP_TIMEOUT, `sluice to exit on ${sig}`);
    return e.code;
  }

  // Cleanup: stops the server if it runs (SIGTERM, then SIGKILL), frees its
  // files, and throws when it died by itself during the test, did not exit
  // 0 on SIGTERM, or logged a sanitizer report.
  async kill() {
    if (!this.proc) return;
    let problem = null;
    if (this.exit && !this.exitExpected) {
      problem = `sluice exited by itself (${JSON.stringify(this.exit)}) during the test`;
    } else if (!this.exit) {
      this.exitExpected = true;
      this.proc.kill('SIGTERM');
      try {
        const e = await withTimeout(this.exited, STOP_TIMEOUT, 'exit on SIGTERM');
        if (e.code !== 0 && !process.env.SLUICE_TEST_LAX_EXIT) {
          problem = `sluice exited with ${JSON.stringify(e)} on SIGTERM after the test`;
        }
      } catch {
        problem = 'sluice did not exit within 10 s of SIGTERM after the test';
        this.proc.kill('SIGKILL');
        await withTimeout(this.exited, 5000, 'exit on SIGKILL').catch(() => {});
      }
    }
    const san = this.lines.find((l) => l.includes('Sanitizer') || l.includes('runtime error:'));
    if (san && !problem) problem = `sanitizer report: ${san}`;
    if (process.env.SLUICE_TEST_LOGS) {
      process.stderr.write(`---- sluice stderr (${this.command().join(' ')}) ----\n${this.logText()}\n----\n`);
    }
    if (this.ownData) fs.rmSync(this.dataDir, { recursive: true, force: true });
    this.proc = null;
    if (problem) throw new Error(`${problem}:\n${this.logText(80)}`);
  }
}

// Starts a server whose cleanup runs after the test `t` (null: the caller
// kills it, e.g. from a top-level after()).
export async function startServer(t, opts = {}) {
  const s = new Server(opts);
  if (t) t.after(() => s.kill());
  await s.start();
  return s;
}

// Self-signed EC certificate for localhost and 127.0.0.1, made with the
// openssl CLI as harness.py does; returns {cert, key, ca (the PEM text)}.
// Debian's Chromium, headless, driven by playwright-core (loaded here only
// when a test asks for a browser).  Waits (bounded) for the binary, which
// may still be installing; `trust` is a certificate (makeCert's) that the
// browser accepts by its public-key pin, with no change to a CA store.
export const CHROMIUM = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];

export async function launchChromium({ trust } = {}) {
  await waitFor(() => fs.existsSync(CHROMIUM), 180000, `${CHROMIUM} to be installed`);
  const args = [...CHROMIUM_ARGS];
  if (trust) {
    const spki = execFileSync('openssl', ['x509', '-in', trust.cert, '-pubkey', '-noout']).toString();
    const der = crypto.createPublicKey(spki).export({ type: 'spki', format: 'der' });
    args.push(`--ignore-certificate-errors-spki-list=${crypto.createHash('sha256').update(der).digest('base64')}`);
  }
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 60000 });
}

export function makeCert(dir) {
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  const p = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-days', '2', '-keyout', key, '-out', cert], { timeout: 30000 });
  if (p.status !== 0) throw new Error(`openssl req failed: ${p.stderr}`);
  return { cert, key, ca: fs.readFileSync(cert, 'utf8') };
}

// ---- HTTP ----------------------------------------------------------------

// One request with node's http/https (bounded); opts: method, headers, body
// (Buffer|string), ca (PEM: HTTPS verified against it).  Returns {status,
// headers, body: Buffer}.
export function request(url, opts = {}) {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return withTimeout(new Promise((resolve, reject) => {
    const req = mod.request(u, {
      method: opts.method || 'GET',
      headers: opts.headers || {},
      ca: opts.ca,
      agent: false,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  }), opts.timeout || IO_TIMEOUT, `${opts.method || 'GET'} ${url}`);
}

// Publishes through the default app's POST /topics/{topic}; returns the id.
// server: a Server (plain listener) or a base URL.
export async function publish(server, topic, data, opts = {}) {
  const base = typeof server === 'string' ? server : server.url('');
  const q = opts.event !== undefined ? `?event=${encodeURIComponent(opts.event)}` : '';
  const r = await request(`${base}/topics/${topic}${q}`, { method: 'POST', body: data, ca: opts.ca });
  if (r.status !== 200) throw new Error(`publish to ${topic}: ${r.status} ${r.body}`);
  const v = JSON.parse(r.body.toString());
  if (typeof v.id !== 'string' || !v.id) throw new Error(`publish answer without id: ${r.body}`);
  return v.id;
}

// A counter or gauge from the server's GET /metrics: NAME with its labels
// as printed (`sluice_x_total{kind="a"}`); throws when it is not there.
export async function metric(server, name) {
  const r = await request(server.url('/metrics'));
  const line = r.body.toString().split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no metric ${name}`);
  return Number(line.split(' ')[1]);
}

// Opens a WebSocket in the page (Chromium offers permessage-deflate),
// keeping what it receives in window.dfl.got for deflateRoundTrip;
// returns the extensions the server agreed to.
export async function openDeflateWs(page, url) {
  return page.evaluate(async (u) => {
    const ws = new WebSocket(u);
    window.dfl = { got: [], ws };
    ws.onmessage = (e) => window.dfl.got.push(e.data);
    await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
    return ws.extensions;
  }, url);
}

// A page's WebSocket with permessage-deflate negotiated (window.dfl =
// {ws, got}: it pushes each message it gets): `body` published to `topic`
// reaches it compressed once by the server, and what the page sends back
// (Chromium compresses it) is inflated and published to it again.
export async function deflateRoundTrip(page, server, topic, body) {
  const compressed = await metric(server, 'sluice_ws_deflate_messages_total{kind="compressed"}');
  await publish(server, topic, body);
  await page.waitForFunction(() => window.dfl.got.length >= 1, null, { timeout: 15000 });
  assert.equal(await page.evaluate(() => window.dfl.got[0]), body);
  assert.ok(await metric(server, 'sluice_ws_deflate_messages_total{kind="compressed"}') > compressed);
  const inflated = await metric(server, 'sluice_ws_deflate_messages_total{kind="inflated"}');
  await page.evaluate((b) => window.dfl.ws.send(b), `${body}!`);
  await page.waitForFunction(() => window.dfl.got.length >= 2, null, { timeout: 15000 });
  assert.equal(await page.evaluate(() => window.dfl.got[1]), `${body}!`);
  assert.ok(await metric(server, 'sluice_ws_deflate_messages_total{kind="inflated"}') > inflated);
}

// A fetch() for the npm eventsource client that trusts the PEM `ca`
// (node's global fetch cannot take a CA without the undici package): the
// request goes through node's https, the body comes back as a web stream.
export function fetchWithCa(ca) {
  return (input, init = {}) => new Promise((resolve, reject) => {
    const u = new URL(String(input));
    const mod = u.protocol === 'https:' ? https : http;
    const headers = {};
    new Headers(init.headers || {}).forEach((v, k) => {
      headers[k] = v;
    });
    const req = mod.request(u, { method: init.method || 'GET', headers, ca, agent: false }, (res) => {
      const h = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        for (const x of [].concat(v)) h.append(k, x);
      }
      resolve(new Response(Readable.toWeb(res), { status: res.statusCode, headers: h }));
    });
    req.on('error', reject);
    if (init.signal) {
      if (init.signal.aborted) req.destroy(new Error('aborted'));
      init.signal.addEventListener('abort', () => req.destroy(new DOMException('aborted', 'AbortError')));
    }
    req.end();
  });
}

// ---- SSE -------------------------------------------------------------------

// A raw SSE reader that keeps everything it saw, parsed the WHATWG way
// (fields, comments, retry), so tests can check the wire format exactly.
export class SseReader {
  constructor() {
    this.status = null;
    this.headers = null;
    this.text = '';
    this.events = []; // {id, event, data, lastEventId}
    this.comments = [];
    this.retry = null;
    this.ended = false;
    this.lastEventId = '';
    this._buf = '';
    this._cur = { data: [], event: null, id: null };
    this._waiters = new Set();
  }

  // Opens `url` with Accept: text/event-stream (plus opts.headers; opts.ca
  // for HTTPS); resolves once the response head is in.
  static open(url, opts = {}) {
    const r = new SseReader();
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    return withTimeout(new Promise((resolve, reject) => {
      r.req = mod.request(u, {
        headers: { Accept: 'text/event-stream', ...(opts.headers || {}) },
        ca: opts.ca,
        agent: false,
      }, (res) => {
        r.res = res;
        r.status = res.statusCode;
        r.headers = res.headers;
        res.setEncoding('utf8');
        res.on('data', (c) => r._feed(c));
        const end = () => {
          r.ended = true;
          r._notify();
        };
        res.on('end', end);
        res.on('close', end);
        res.on('error', end);
        resolve(r);
      });
      r.req.on('error', (e) => {
        r.ended = true;
        r._notify();
        reject(e);
      });
      r.req.end();
    }), IO_TIMEOUT, `SSE open ${url}`);
  }

  _feed(chunk) {
    this.text += chunk;
    this._buf += chunk;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this._buf);
      if (!m) break;
      // A lone CR at the end may be the first half of CRLF: wait for more.
      if (m[0] === '\r' && m.index === this._buf.length - 1) break;
      const line = this._buf.slice(0, m.index);
      this._buf = this._buf.slice(m.index + m[0].length);
      this._line(line);
    }
    this._notify();
  }

  _line(line) {
    if (line === '') {
      const c = this._cur;
      if (c.id !== null) this.lastEventId = c.id;
      if (c.data.length) {
        this.events.push({ id: c.id, event: c.event || 'message', data: c.data.join('\n'), lastEventId: this.lastEventId });
      }
      this._cur = { data: [], event: null, id: null };
      return;
    }
    if (line.startsWith(':')) {
      this.comments.push(line.slice(1));
      return;
    }
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this._cur.data.push(value);
    else if (field === 'event') this._cur.event = value;
    else if (field === 'id') this._cur.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _notify() {
    for (const w of this._waiters) w();
  }

  // Waits (bounded) until pred(this) is truthy; returns its value.
  until(pred, ms = IO_TIMEOUT, what = 'SSE condition') {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        const v = pred(this);
        if (v) {
          clearTimeout(timer);
          this._waiters.delete(check);
          resolve(v);
        } else if (this.ended) {
          clearTimeout(timer);
          this._waiters.delete(check);
          reject(new Error(`SSE stream ended while waiting for ${what}; got:\n${this.text.slice(-2000)}`));
        }
      };
      timer = setTimeout(() => {
        this._waiters.delete(check);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; got:\n${this.text.slice(-2000)}`));
      }, ms);
      this._waiters.add(check);
      check();
    });
  }

  // The events once there are at least n (bounded wait).
  waitEvents(n, ms = IO_TIMEOUT) {
    return this.until((r) => r.events.length >= n && r.events, ms, `${n} SSE events`);
  }

  // Waits (bounded) for the server to end the stream.
  waitEnd(ms = IO_TIMEOUT) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        if (this.ended) {
          clearTimeout(timer);
          this._waiters.delete(check);
          resolve(this);
        }
      };
      timer = setTimeout(() => {
        this._waiters.delete(check);
        reject(new Error(`SSE stream still open after ${ms} ms`));
      }, ms);
      this._waiters.add(check);
      check();
    });
  }

  close() {
    try {
      this.req.destroy();
    } catch {}
  }
}

// ---- WebSocket -------------------------------------------------------------

// A `ws` client that queues what it receives: messages as {data: Buffer,
// binary}, and the close as {code, reason}.
export class WsClient {
  // opts: passed to ws (headers, protocols, ca, autoPong, ...).
  static open(url, opts = {}) {
    const c = new WsClient();
    const { protocols, ...wsopts } = opts;
    c.ws = new WebSocket(url, protocols, { handshakeTimeout: IO_TIMEOUT, ...wsopts });
    c.messages = [];
    c.pings = [];
    c.closeInfo = null;
    c.errors = [];
    c._waiters = new Set();
    c.ws.on('message', (data, binary) => {
      c.messages.push({ data: Buffer.from(data), binary });
      c._notify();
    });
    c.ws.on('ping', (d) => {
      c.pings.push(Buffer.from(d));
      c._notify();
    });
    c.ws.on('close', (code, reason) => {
      c.closeInfo = { code, reason: reason.toString() };
      c._notify();
    });
    c.ws.on('error', (e) => {
      c.errors.push(e);
      c._notify();
    });
    return withTimeout(new Promise((resolve, reject) => {
      c.ws.once('open', () => resolve(c));
      c.ws.once('unexpected-response', (req, res) => reject(new Error(`WebSocket handshake: HTTP ${res.statusCode}`)));
      c.ws.once('error', reject);
    }), IO_TIMEOUT + 1000, `WebSocket open ${url}`);
  }

  _notify() {
    for (const w of this._waiters) w();
  }

  until(pred, ms = IO_TIMEOUT, what = 'WebSocket condition') {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        const v = pred(this);
        if (v) {
          clearTimeout(timer);
          this._waiters.delete(check);
          resolve(v);
        }
      };
      timer = setTimeout(() => {
        this._waiters.delete(check);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; got ${this.messages.length} messages, close ${JSON.stringify(this.closeInfo)}`));
      }, ms);
      this._waiters.add(check);
      check();
    });
  }

  // The first n messages once they are in (bounded).
  waitMessages(n, ms = IO_TIMEOUT) {
    return this.until((c) => c.messages.length >= n && c.messages.slice(0, n), ms, `${n} WebSocket messages`);
  }

  // Messages parsed as JSON (format=json).
  json() {
    return this.messages.map((m) => JSON.parse(m.data.toString()));
  }

  texts() {
    return this.messages.map((m) => m.data.toString());
  }

  waitClose(ms = IO_TIMEOUT) {
    return this.until((c) => c.closeInfo, ms, 'the WebSocket close');
  }

  send(data, opts = {}) {
    return new Promise((resolve, reject) => this.ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
  }

  close(code, reason) {
    this.ws.close(code, reason);
  }

  terminate() {
    this.ws.terminate();
  }
}

// ---- a TCP proxy that can cut connections ----------------------------------

// Forwards 127.0.0.1:<its port> to target port; cut() destroys every open
// pair of sockets (a network failure as the client sees it); heads holds
// the request heads the clients sent, in order, to check what a
// reconnecting client sent.
export class CutProxy {
  static async open(t, targetPort) {
    const p = new CutProxy();
    p.targetPort = targetPort;
    p.pairs = new Set();
    p.heads = [];
    p.server = net.createServer((client) => {
      const upstream = net.connect(targetPort, '127.0.0.1');
      const pair = { client, upstream };
      p.pairs.add(pair);
      // Request heads (keep-alive connections carry several); after an
      // upgrade the bytes are frames, which never look like a request line.
      let seen = '';
      let sniffed = 0;
      client.on('data', (d) => {
        if (sniffed > 1 << 20) return;
        sniffed += d.length;
        seen += d.toString('latin1');
        for (;;) {
          const m = /(?:^|\r\n)([A-Z]+ \S+ HTTP\/1\.[01]\r\n[\s\S]*?)\r\n\r\n/.exec(seen);
          if (!m) break;
          p.heads.push(m[1]);
          seen = seen.slice(m.index + m[0].length);
        }
        if (seen.length > 65536) seen = seen.slice(-65536);
      });
      client.pipe(upstream);
      upstream.pipe(client);
      const end = () => {
        client.destroy();
        upstream.destroy();
        p.pairs.delete(pair);
      };
      client.on('error', end);
      upstream.on('error', end);
      client.on('close', end);
      upstream.on('close', end);
    });
    await new Promise((resolve) => p.server.listen(0, '127.0.0.1', resolve));
    p.port = p.server.address().port;
    if (t) t.after(() => p.close());
    return p;
  }

  url(pth = '/') {
    return `http://127.0.0.1:${this.port}${pth}`;
  }

  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// The value of header `name` in a raw request head (case-insensitive).
export function headValue(head, name) {
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    if (i > 0 && line.slice(0, i).trim().toLowerCase() === name.toLowerCase()) return line.slice(i + 1).trim();
  }
  return null;
}

// Bytes that are not valid UTF-8 (so the server sends them as binary/base64).
export const BINARY = Buffer.from([0xff, 0x00, 0x80, 0xc3, 0x28, 0x01, 0xfe]);
