// The JS client (clients/js/sluice.js) in Node against the real binary:
// delivery in order with event names and binary data, publish; WebSocket
// refused by a real nginx -> SSE; SSE buffered by a real nginx ->
// long-poll; a network drop (connections cut by a proxy), a change of
// transport mid-stream, and a server restart with nothing lost or repeated.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, test } from 'node:test';
import WebSocket from 'ws';
import { Sluice } from '../../clients/js/sluice.js';
import { CutProxy, sleep, startServer, tmpdir, waitFor } from './lib.mjs';
import { Nginx, haveNginx } from './nginx.mjs';

let seq = 0;
const topic = (p) => `cl.${p}.${process.pid}.${++seq}`;

// Collects a subscription's events.
function record(sub) {
  const r = { messages: [], opens: [], gaps: [], errors: [] };
  sub.on('message', (m) => r.messages.push(m));
  sub.on('open', (e) => r.opens.push(e.transport));
  sub.on('gap', (e) => r.gaps.push(e));
  sub.on('error', (e) => r.errors.push(e));
  return r;
}

// Publishes n numbered messages ("prefix-i"), each retried with its own
// Idempotency-Key until the server takes it (it may be restarting).
async function publishSeries(client, t, prefix, n, pause = 0, from = 0) {
  for (let i = from; i < from + n; i++) {
    for (let attempt = 0; ; attempt++) {
      try {
        await client.publish(t, `${prefix}-${i}`, { idempotencyKey: `${prefix}-${i}` });
        break;
      } catch (e) {
        if (attempt > 200) throw e;
        await sleep(50);
      }
    }
    if (pause) await sleep(pause);
  }
}

function assertExactly(r, prefix, n) {
  const got = r.messages.map((m) => m.data);
  const want = Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  assert.deepEqual(got, want);
  assert.equal(new Set(r.messages.map((m) => m.id)).size, n, 'no ID twice');
}

const opts = { WebSocket, backoff: { min: 50, max: 500 } };

// integration.test_client_node18 runs this file on Node.js 18, the oldest
// the client supports: make sure it really is that Node.
const wantMajor = process.env.SLUICE_NODE_MAJOR;
if (wantMajor) assert.equal(process.versions.node.split('.')[0], wantMajor, `Node ${process.version}`);

describe(`clients/js in Node ${process.version}`, () => {
  test('WebSocket: order, event names, binary, publish', async (t) => {
    const srv = await startServer(t);
    const c = new Sluice(srv.url(''), opts);
    const tp = topic('ws');
    const sub = c.subscribe(tp);
    t.after(() => sub.close());
    const r = record(sub);
    await waitFor(() => r.opens.length, 10000, 'open');
    assert.equal(r.opens[0], 'websocket');
    await publishSeries(c, tp, 'm', 20);
    await c.publish(tp, 'named', { event: 'note' });
    await c.publish(tp, new Uint8Array([0xff, 0x00, 0x80]));
    await waitFor(() => r.messages.length === 22, 10000, '22 messages');
    assert.equal(r.messages[20].event, 'note');
    assert.deepEqual([...r.messages[21].data], [0xff, 0x00, 0x80]);
    assert.equal(sub.lastId, r.messages[21].id);
    await assert.rejects(c.publish('bad topic!', 'x'), (e) => e.status === 400);
  });

  test('SSE and long-poll directly, binary over SSE, gap', async (t) => {
    const srv = await startServer(t);
    const c = new Sluice(srv.url(''), opts);
    for (const tr of ['sse', 'longpoll']) {
      const tp = topic(tr);
      const sub = c.subscribe(tp, { transports: [tr], lastEventId: 'unknown-1' });
      t.after(() => sub.close());
      const r = record(sub);
      await waitFor(() => r.opens.length, 10000, 'open');
      await c.publish(tp, 'a', { event: 'e1' });
      await c.publish(tp, new Uint8Array([1, 0xfe]));
      await waitFor(() => r.messages.length === 2, 10000, `2 messages over ${tr}`);
      assert.equal(r.opens[0], tr);
      assert.equal(r.messages[0].event, 'e1');
      assert.deepEqual([...r.messages[1].data], [1, 0xfe]);
      assert.ok(r.gaps.length >= 1, `gap over ${tr}`);
    }
  });

  test('a message published as JSON: data is text on every transport, json its value', async (t) => {
    const srv = await startServer(t);
    const c = new Sluice(srv.url(''), opts);
    for (const tr of ['websocket', 'sse', 'longpoll']) {
      const tp = topic(`json-${tr}`);
      const sub = c.subscribe(tp, { transports: [tr], pollTimeout: 5 });
      t.after(() => sub.close());
      const r = record(sub);
      await waitFor(() => r.opens.length, 10000, 'open');
      const res = await fetch(srv.url(`/topics/${tp}`), {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"n": [1, 2]}' });
      assert.equal(res.status, 200);
      await waitFor(() => r.messages.length === 1, 10000, `the message over ${tr}`);
      const m = r.messages[0];
      assert.equal(typeof m.data, 'string', tr);
      assert.deepEqual(JSON.parse(m.data), { n: [1, 2] }, tr);
      // SSE carries the text alone; the JSON forms say it is JSON.
      if (tr === 'sse') assert.equal(m.json, undefined);
      else assert.deepEqual(m.json, { n: [1, 2] }, tr);
    }
  });

  test('presence events on every transport', async (t) => {
    const dir = tmpdir(t);
    const appFile = path.join(dir, 'presence.lua');
    fs.writeFileSync(appFile, `local sluice = require "sluice"
sluice.route("GET", "/topics/:t", function(req)
  local opts = { presence_events = true }
  if req.query.member then opts.presence = { id = req.query.member, info = { n = 1 } } end
  return req:subscribe(req.params.t, opts)
end)
sluice.route("POST", "/topics/:t", function(req)
  return sluice.json(200, { id = sluice.publish(req.params.t, req.body) })
end)
`);
    const srv = await startServer(t, { app: appFile });
    const c = new Sluice(srv.url(''), opts);
    const tp = topic('presence');
    const recs = ['websocket', 'sse', 'longpoll'].map((tr) => {
      const sub = c.subscribe(tp, { transports: [tr], pollTimeout: 5 });
      t.after(() => sub.close());
      const r = record(sub);
      r.presence = [];
      sub.on('presence', (p) => r.presence.push(p));
      return r;
    });
    await waitFor(() => recs.every((r) => r.opens.length), 10000, 'open');
    const alice = c.subscribe(tp, { transports: ['sse'], path: '/topics/', url: `/topics/${tp}?member=alice` });
    await waitFor(() => recs.every((r) => r.presence.length >= 1), 10000, 'join');
    alice.close();
    await waitFor(() => recs.every((r) => r.presence.length >= 2), 10000, 'leave');
    for (const r of recs) {
      assert.deepEqual(r.presence.map((p) => [p.type, p.member, p.topic]), [['join', 'alice', tp], ['leave', 'alice', tp]]);
      assert.deepEqual(r.presence[0].info, { n: 1 });
      assert.equal(r.messages.length, 0);
    }
  });

  test('WebSocket refused by nginx -> SSE', { skip: !haveNginx() && 'nginx not installed (dev.sh test_deps: nginx-light)' }, async (t) => {
    const srv = await startServer(t);
    const ngx = await Nginx.start(t, srv.port, 'no-upgrade');
    const c = new Sluice(ngx.url(''), opts);
    const tp = topic('noup');
    const sub = c.subscribe(tp, { transports: ['websocket', 'sse', 'longpoll'] });
    t.after(() => sub.close());
    const r = record(sub);
    await waitFor(() => r.opens.length, 15000, 'open');
    assert.equal(r.opens[0], 'sse');
    assert.equal(r.errors[0].transport, 'websocket');
    await publishSeries(c, tp, 'x', 10);
    await waitFor(() => r.messages.length === 10, 10000, '10 messages');
    assertExactly(r, 'x', 10);
  });

  test('SSE buffered by nginx -> long-poll', { skip: !haveNginx() && 'nginx not installed (dev.sh test_deps: nginx-light)' }, async (t) => {
    const srv = await startServer(t);
    const ngx = await Nginx.start(t, srv.port, 'buffer-sse');
    const c = new Sluice(ngx.url(''), opts);
    const tp = topic('buf');
    const sub = c.subscribe(tp, { sseTimeout: 1500, pollTimeout: 5 });
    t.after(() => sub.close());
    const r = record(sub);
    await waitFor(() => r.opens.length, 15000, 'open');
    assert.equal(r.opens[0], 'longpoll');
    assert.ok(r.errors.some((e) => e.transport === 'sse'), 'SSE was given up');
    await publishSeries(c, tp, 'y', 10);
    await waitFor(() => r.messages.length === 10, 15000, '10 messages');
    assertExactly(r, 'y', 10);
  });

  test('network drops and a transport change mid-stream: nothing lost or repeated', async (t) => {
    const srv = await startServer(t);
    // A proxy that can cut every connection and, once told, refuses the
    // WebSocket Upgrade (the client then goes on over SSE).
    const pairs = new Set();
    let blockWs = false;
    const proxy = net.createServer((client) => {
      client.once('data', (first) => {
        if (blockWs && /\r\nupgrade:\s*websocket/i.test(first.toString('latin1'))) {
          client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
          return;
        }
        const up = net.connect(srv.port, '127.0.0.1');
        const pair = { client, up };
        pairs.add(pair);
        up.write(first);
        client.pipe(up);
        up.pipe(client);
        const end = () => { client.destroy(); up.destroy(); pairs.delete(pair); };
        for (const s of [client, up]) { s.on('error', end); s.on('close', end); }
      });
      client.on('error', () => {});
    });
    await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    t.after(() => { for (const p of pairs) { p.client.destroy(); p.up.destroy(); } proxy.close(); });
    const cut = () => { for (const p of pairs) { p.client.destroy(); p.up.destroy(); } pairs.clear(); };

    const direct = new Sluice(srv.url(''), opts);
    const c = new Sluice(`http://127.0.0.1:${proxy.address().port}`, opts);
    const tp = topic('drop');
    const sub = c.subscribe(tp);
    t.after(() => sub.close());
    const r = record(sub);
    await waitFor(() => r.opens.length, 10000, 'open');
    const N = 120;
    const pub = publishSeries(direct, tp, 'z', N, 5);
    await waitFor(() => r.messages.length >= 20, 15000, '20 messages');
    cut();
    await waitFor(() => r.messages.length >= 50, 15000, '50 messages');
    cut();
    await waitFor(() => r.messages.length >= 70, 15000, '70 messages');
    blockWs = true;
    cut();
    await pub;
    await waitFor(() => r.messages.length >= N, 20000, `${N} messages`);
    await sleep(300);
    assertExactly(r, 'z', N);
    assert.ok(r.opens.filter((x) => x === 'websocket').length >= 3, `reconnected: ${r.opens}`);
    assert.equal(r.opens.at(-1), 'sse', `went on over SSE: ${r.opens}`);
  });

  test('server restart: nothing lost or repeated', async (t) => {
    const data = tmpdir(t);
    let srv = await startServer(null, { dataDir: data });
    const port = srv.port;
    t.after(() => srv.kill());
    const c = new Sluice(srv.url(''), opts);
    const tp = topic('restart');
    const subs = ['websocket', 'sse', 'longpoll'].map((tr) => c.subscribe(tp, { transports: [tr], pollTimeout: 5 }));
    t.after(() => subs.forEach((s) => s.close()));
    const recs = subs.map(record);
    await waitFor(() => recs.every((r) => r.opens.length), 10000, 'open');
    const N = 60;
    const pub = publishSeries(c, tp, 'r', N, 10);
    await waitFor(() => recs[0].messages.length >= 15, 15000, '15 messages');
    assert.equal(await srv.stop(), 0);
    await sleep(300);
    srv = await startServer(null, { dataDir: data, listen: [`127.0.0.1:${port}`] });
    await pub;
    for (const [i, r] of recs.entries()) {
      await waitFor(() => r.messages.length >= N, 30000, `${N} messages on subscriber ${i}`);
    }
    await sleep(300);
    for (const r of recs) assertExactly(r, 'r', N);
  });
});
