// sluice.js: the browser and Node client of sluice (no dependencies).
//
// One Subscription follows a topic over the first transport of an ordered
// list that works (WebSocket, SSE, long-poll), and falls to the next when
// one cannot connect (a proxy that refuses the Upgrade, a network that
// buffers the SSE stream).  It remembers the ID of the last message it
// handed over and resumes from it on every reconnect and every change of
// transport, so the server replays exactly what was missed; IDs already
// seen are dropped, so nothing is handed over twice.  Reconnects wait an
// exponential backoff with full jitter.  See clients/js/README.md.

const TRANSPORTS = ['websocket', 'sse', 'longpoll'];
const G = globalThis;

class Emitter {
  constructor() { this._h = {}; }
  on(type, fn) { (this._h[type] ||= []).push(fn); return this; }
  off(type, fn) { this._h[type] = (this._h[type] || []).filter((f) => f !== fn); return this; }
  _emit(type, ev) {
    for (const f of this._h[type] || []) {
      try { f(ev); } catch (e) { if (type !== 'error') this._emit('error', { error: e, transport: ev && ev.transport }); }
    }
  }
}

function b64(s) {
  if (typeof G.Buffer === 'function') return new Uint8Array(G.Buffer.from(s, 'base64'));
  const bin = G.atob(s), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// A message in the JSON shape (WebSocket JSON frames, long-poll items).
// One published as JSON comes embedded ("encoding":"json"): data stays
// text on every transport (SSE has no mark), json is the value.
function fromJSON(o, topic) {
  const m = { id: o.id, topic: o.topic || topic, event: o.event == null ? null : o.event,
    data: o.encoding === 'base64' ? b64(o.data) : o.encoding === 'json' ? JSON.stringify(o.data) : o.data };
  if (o.encoding === 'json') m.json = o.data;
  return m;
}

export class Subscription extends Emitter {
  constructor(client, topic, o) {
    super();
    this.client = client;
    this.topic = topic;
    this.o = o;
    this.lastId = o.lastEventId || null;
    this.transport = null;
    this.closed = false;
    this._order = (o.transports || TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
    this._i = 0;         // index of the transport in use or being tried
    this._fails = 0;     // connection attempts failed in a row
    this._seen = new Set();
    this._seenQ = [];
    this._stop = null;   // ends the current connection
    this._timer = null;
    Promise.resolve().then(() => this._connect());
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._timer);
    if (this._stop) this._stop();
    this._emit('close', { transport: this.transport });
  }

  _deliver(m) {
    if (this.closed || m.id == null) return;
    if (this._seen.has(m.id)) return;
    this._seen.add(m.id);
    this._seenQ.push(m.id);
    if (this._seenQ.length > 1000) this._seen.delete(this._seenQ.shift());
    this.lastId = m.id;
    if (m.event === 'sluice.join' || m.event === 'sluice.leave') {
      // Presence (docs/protocol.md, "Presence events"): {topic, id, info}.
      let p = {};
      try { p = JSON.parse(m.data); } catch (e) {}
      return this._emit('presence', { type: m.event.slice(7), topic: p.topic || m.topic, member: p.id, info: p.info, id: m.id });
    }
    this._emit('message', m);
  }

  _url(transport, extra) {
    const base = this.client.url.replace(/\/$/, '');
    let u = this.o.url || base + (this.o.path || '/topics/') + encodeURIComponent(this.topic);
    if (/^\//.test(u)) u = base + u;
    const q = [];
    for (const k in extra) if (extra[k] != null) q.push(k + '=' + encodeURIComponent(extra[k]));
    if (q.length) u += (u.includes('?') ? '&' : '?') + q.join('&');
    if (transport === 'websocket') u = u.replace(/^http/, 'ws');
    return u;
  }

  _connect() {
    if (this.closed) return;
    const name = this._order[this._i];
    this.transport = name;
    let opened = false, ended = false;
    const up = () => {
      if (opened || ended || this.closed) return;
      opened = true;
      this._fails = 0;
      this._emit('open', { transport: name });
    };
    const down = (error) => {
      if (ended || this.closed) return;
      ended = true;
      if (this._stop) { const s = this._stop; this._stop = null; s(); }
      this._emit('error', { transport: name, error, opened });
      if (!opened) {
        // Could not connect this way: the next transport at once; after a
        // full round the first one again, with backoff.
        this._fails++;
        this._i = (this._i + 1) % this._order.length;
        return this._retry(this._i === 0 ? this._fails : 0);
      }
      this._retry(1); // it was up: the same transport again, soon
    };
    try {
      this._stop = this['_' + name](up, down);
    } catch (e) {
      down(e);
    }
  }

  _retry(attempt) {
    if (this.closed) return;
    const b = this.o.backoff || {}, min = b.min ?? 250, max = b.max ?? 15000;
    const cap = attempt ? Math.min(max, min * 2 ** Math.min(attempt - 1, 16)) : 0;
    const wait = Math.floor(Math.random() * cap); // full jitter
    this._emit('reconnect', { transport: this._order[this._i], delay: wait });
    this._timer = setTimeout(() => this._connect(), wait);
  }

  _websocket(up, down) {
    const WS = this.client.WebSocket;
    if (!WS) throw new Error('no WebSocket implementation');
    const ws = new WS(this._url('websocket', { format: 'json', last_event_id: this.lastId }));
    ws.onopen = up;
    ws.onmessage = (e) => {
      let o;
      try { o = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data)); } catch (err) {
        return this._emit('error', { transport: 'websocket', error: err });
      }
      if (o.gap) this._emit('gap', { topic: o.topic, transport: 'websocket' });
      else this._deliver(fromJSON(o, this.topic));
    };
    ws.onerror = () => {};
    ws.onclose = (e) => down(new Error('websocket closed: ' + e.code + (e.reason ? ' ' + e.reason : '')));
    this._ws = ws;
    return () => { ws.onclose = ws.onmessage = null; try { ws.close(); } catch (e) {} };
  }

  _sse(up, down) {
    const ctl = new AbortController();
    const o = this.o, headers = { accept: 'text/event-stream', ...(o.headers || {}) };
    if (this.lastId) headers['last-event-id'] = this.lastId;
    // A network that buffers the stream holds even its first line (the
    // server sends `retry:` at once): no byte within sseTimeout is a failure.
    let first = setTimeout(() => { ctl.abort(); down(new Error('sse: no data (buffered?)')); }, o.sseTimeout ?? 5000);
    const fin = (err) => { clearTimeout(first); down(err); };
    this.client.fetch(this._url('sse'), { headers, signal: ctl.signal, cache: 'no-store' }).then(async (res) => {
      if (res.status !== 200 || !res.body) throw new Error('sse: status ' + res.status);
      const rd = res.body.getReader(), dec = new TextDecoder();
      let buf = '', ev = { data: [] };
      for (;;) {
        const { value, done } = await rd.read();
        if (done) throw new Error('sse: stream ended');
        if (first) { clearTimeout(first); first = null; up(); }
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(buf[i] === '\r' && buf[i + 1] === '\n' ? i + 2 : i + 1);
          if (line === '') { this._sseEvent(ev); ev = { data: [] }; continue; }
          const c = line.indexOf(':');
          if (c === 0) continue;
          const f = c < 0 ? line : line.slice(0, c);
          let v = c < 0 ? '' : line.slice(c + 1);
          if (v[0] === ' ') v = v.slice(1);
          if (f === 'data') ev.data.push(v);
          else if (f === 'id') ev.id = v;
          else if (f === 'event') ev.event = v;
        }
      }
    }).catch((err) => { if (!ctl.signal.aborted || first) fin(err); });
    return () => { clearTimeout(first); first = null; ctl.abort(); };
  }

  _sseEvent(ev) {
    if (!ev.data.length && !ev.event) return;
    const data = ev.data.join('\n');
    let name = ev.event || null;
    if (name === 'sluice.gap') {
      let t = this.topic;
      try { t = JSON.parse(data).topic; } catch (e) {}
      return this._emit('gap', { topic: t, transport: 'sse' });
    }
    if (ev.id == null) return;
    let d = data;
    if (name && name.endsWith('.base64')) {
      d = b64(data);
      name = name.slice(0, -7);
      if (name === 'message') name = null;
    }
    this._deliver({ id: ev.id, topic: this.topic, event: name, data: d });
  }

  _longpoll(up, down) {
    let stopped = false, ctl = null;
    const o = this.o;
    const poll = async () => {
      // The first poll is a short one (timeout=0): it answers at once, so
      // the transport is known to work (`open`) and, without a resume
      // point, it names "now": the subscription starts here, not when the
      // first long-poll lands.
      let first = true;
      while (!stopped) {
        ctl = new AbortController();
        const res = await this.client.fetch(
          this._url('longpoll', { since: this.lastId, timeout: first ? 0 : o.pollTimeout ?? 25, format: 'json' }),
          { headers: o.headers || {}, signal: ctl.signal, cache: 'no-store' });
        if (res.status !== 200) throw new Error('longpoll: status ' + res.status);
        const j = await res.json();
        up();
        if (j.gap) this._emit('gap', { topic: this.topic, transport: 'longpoll' });
        for (const m of j.messages || []) this._deliver(fromJSON(m, this.topic));
        // An empty answer names "now": resume there, nothing is missed.
        if (!(j.messages || []).length && j.last_id && !this.lastId) this.lastId = j.last_id;
        first = false;
      }
    };
    poll().catch((err) => { if (!stopped) down(err); });
    return () => { stopped = true; if (ctl) ctl.abort(); };
  }
}

export class Sluice {
  // url: the server's base URL ("https://example.com"; "" in a browser:
  // this page's origin).  opts.WebSocket, opts.fetch: implementations to
  // use instead of the globals (Node 18-21: WebSocket from the `ws` package).
  constructor(url = '', opts = {}) {
    if (!url && G.location) url = G.location.origin;
    this.url = url;
    this.opts = opts;
    this.WebSocket = opts.WebSocket || G.WebSocket;
    this.fetch = opts.fetch || G.fetch.bind(G);
  }

  subscribe(topic, opts = {}) {
    return new Subscription(this, topic, { ...this.opts, ...opts });
  }

  // Resolves to {id} once the message is durable; rejects with an Error
  // whose .status is the HTTP status.  opts.event, opts.idempotencyKey.
  async publish(topic, data, opts = {}) {
    const headers = { ...(this.opts.headers || {}), ...(opts.headers || {}) };
    if (opts.idempotencyKey) headers['idempotency-key'] = opts.idempotencyKey;
    const path = opts.url || this.url.replace(/\/$/, '') + (this.opts.path || '/topics/') + encodeURIComponent(topic);
    const res = await this.fetch(path + (opts.event ? '?event=' + encodeURIComponent(opts.event) : ''),
      { method: 'POST', headers, body: data });
    const j = await res.json().catch(() => ({}));
    if (res.status !== 200) {
      const e = new Error(j.error || 'publish failed: ' + res.status);
      e.status = res.status;
      throw e;
    }
    return j;
  }
}

export default Sluice;
