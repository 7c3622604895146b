// WebSocket transport, driven by the npm `ws` client (a strict RFC 6455
// implementation): delivery as text/binary frames and as JSON envelopes,
// client messages published, resume (?last_event_id=, Last-Event-ID) with
// no gap and no duplicate at the seam, the gap signal, the close handshake,
// server pings and dead-peer detection, SIGTERM -> 1001, the Lua
// per-connection API (conn:send/conn:close, subprotocol, filter), and the
// same over TLS (wss with a private CA).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import {
  BINARY, WsClient, app, makeCert, publish, request, sleep, startServer, tmpdir, waitFor, withTimeout,
} from './lib.mjs';

let srv;
let certs;
before(async () => {
  certs = makeCert(tmpdir());
  srv = await startServer(null, { app: app('ws_app.lua'), tls: certs });
});
after(() => srv?.kill());

let topicSeq = 0;
const topic = (p = 't') => `ws.${p}.${process.pid}.${++topicSeq}`;

async function open(t, url, opts) {
  const c = await WsClient.open(url, opts);
  t.after(() => c.terminate());
  return c;
}

describe('delivery', () => {
  test('text and binary frames, one message per frame, in publish order', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wsUrl(`/topics/${tp}`));
    await publish(srv, tp, 'hello');
    await publish(srv, tp, 'héllo wörld ✓', { event: 'greet' });
    await publish(srv, tp, BINARY);
    await publish(srv, tp, '');
    await publish(srv, tp, 'a\nb\r\nc');
    const m = await c.waitMessages(5);
    assert.deepEqual(m.map((x) => x.binary), [false, false, true, false, false]);
    assert.equal(m[0].data.toString(), 'hello');
    assert.equal(m[1].data.toString(), 'héllo wörld ✓');
    assert.deepEqual(m[2].data, BINARY);
    assert.equal(m[3].data.length, 0);
    assert.equal(m[4].data.toString(), 'a\nb\r\nc');
  });

  test('?format=json gives envelopes with id, topic, event, data (base64 for binary)', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json`));
    const id1 = await publish(srv, tp, 'plain');
    const id2 = await publish(srv, tp, '{"x":[1,"two"]}', { event: 'update' });
    const id3 = await publish(srv, tp, BINARY, { event: 'blob' });
    await c.waitMessages(3);
    assert.ok(c.messages.every((m) => !m.binary), 'JSON envelopes are text frames');
    const [a, b, d] = c.json();
    assert.equal(a.id, id1);
    assert.equal(a.topic, tp);
    assert.equal(a.data, 'plain');
    assert.ok(a.event === null || a.event === undefined, `no event: ${JSON.stringify(a)}`);
    assert.equal(a.encoding, undefined);
    assert.deepEqual(b, { id: id2, topic: tp, event: 'update', data: '{"x":[1,"two"]}' });
    assert.equal(d.id, id3);
    assert.equal(d.event, 'blob');
    assert.equal(d.encoding, 'base64');
    assert.deepEqual(Buffer.from(d.data, 'base64'), BINARY);
  });

  test('several subscribers each get every message in order', async (t) => {
    const tp = topic();
    const clients = await Promise.all([0, 1, 2].map(() => open(t, srv.wsUrl(`/topics/${tp}?format=json`))));
    const ids = [];
    for (let i = 0; i < 40; i++) ids.push(await publish(srv, tp, `m${i}`));
    for (const c of clients) {
      await c.waitMessages(40);
      assert.deepEqual(c.json().map((e) => e.id), ids);
      assert.deepEqual(c.json().map((e) => e.data), ids.map((_, i) => `m${i}`));
    }
  });

  test('topics are separate', async (t) => {
    const a = topic();
    const b = topic();
    const ca = await open(t, srv.wsUrl(`/topics/${a}`));
    const cb = await open(t, srv.wsUrl(`/topics/${b}`));
    await publish(srv, b, 'for b');
    await publish(srv, a, 'for a');
    await ca.waitMessages(1);
    await cb.waitMessages(1);
    await sleep(100);
    assert.deepEqual(ca.texts(), ['for a']);
    assert.deepEqual(cb.texts(), ['for b']);
  });

  test('what a client sends (text or binary) is published to the topic', async (t) => {
    const tp = topic();
    const sender = await open(t, srv.wsUrl(`/topics/${tp}`));
    const other = await open(t, srv.wsUrl(`/topics/${tp}?format=json`));
    await sender.send('from client ✓');
    await sender.send(BINARY, { binary: true });
    await other.waitMessages(2);
    const [x, y] = other.json();
    assert.equal(x.data, 'from client ✓');
    assert.equal(x.topic, tp);
    assert.ok(x.id);
    assert.equal(y.encoding, 'base64');
    assert.deepEqual(Buffer.from(y.data, 'base64'), BINARY);
    // the sender is a subscriber too: it gets its own messages back
    const back = await sender.waitMessages(2);
    assert.equal(back[0].data.toString(), 'from client ✓');
    assert.equal(back[1].binary, true);
    assert.deepEqual(back[1].data, BINARY);
    // and they are in the backlog for a poll
    const r = await request(srv.url(`/topics/${tp}?timeout=0&since=${encodeURIComponent(x.id)}`));
    const v = JSON.parse(r.body);
    assert.equal(v.messages.length, 1);
    assert.equal(v.messages[0].id, y.id);
  });

  test('a message of exactly 1 MiB from a client is accepted and delivered', async (t) => {
    const tp = topic();
    const sender = await open(t, srv.wsUrl(`/topics/${tp}`));
    const big = Buffer.alloc(1024 * 1024, 'x');
    await sender.send(big.toString());
    const [m] = await sender.waitMessages(1, 20000);
    assert.equal(m.data.length, big.length);
    assert.ok(m.data.equals(big));
    assert.equal(sender.closeInfo, null);
  });

  test('a client message over 1 MiB closes with 1009', async (t) => {
    const c = await open(t, srv.wsUrl(`/topics/${topic()}`));
    c.send(Buffer.alloc(1024 * 1024 + 1, 'y').toString()).catch(() => {});
    const ci = await c.waitClose(20000);
    assert.equal(ci.code, 1009);
  });

  test('bad topic and bad upgrade are refused before the upgrade', async (t) => {
    await assert.rejects(WsClient.open(srv.wsUrl('/topics/bad%20topic')), /HTTP 400/);
    await assert.rejects(WsClient.open(srv.wsUrl(`/topics/${'x'.repeat(201)}`)), /HTTP 400/);
    const r = await request(srv.url(`/topics/${topic()}`), {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '8', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    assert.equal(r.status, 426);
    assert.equal(r.headers['sec-websocket-version'], '13');
  });
});

describe('resume', () => {
  test('?last_event_id= replays after the ID, then live, no duplicate', async (t) => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await publish(srv, tp, `m${i}`));
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(ids[1])}`));
    await c.waitMessages(3);
    ids.push(await publish(srv, tp, 'm5'));
    await c.waitMessages(4);
    await sleep(100);
    assert.deepEqual(c.json().map((e) => e.id), ids.slice(2));
    assert.deepEqual(c.json().map((e) => e.data), ['m2', 'm3', 'm4', 'm5']);
  });

  test('Last-Event-ID header works too, raw frames', async (t) => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 4; i++) ids.push(await publish(srv, tp, `m${i}`));
    const c = await open(t, srv.wsUrl(`/topics/${tp}`), { headers: { 'Last-Event-ID': ids[2] } });
    await c.waitMessages(1);
    await publish(srv, tp, 'live');
    await c.waitMessages(2);
    await sleep(100);
    assert.deepEqual(c.texts(), ['m3', 'live']);
  });

  test('resuming from the newest ID gets only live messages', async (t) => {
    const tp = topic();
    const last = await publish(srv, tp, 'old');
    const c = await open(t, srv.wsUrl(`/topics/${tp}?last_event_id=${encodeURIComponent(last)}`));
    await publish(srv, tp, 'new');
    await c.waitMessages(1);
    await sleep(100);
    assert.deepEqual(c.texts(), ['new']);
  });

  test('no resume point: only messages published after subscribing', async (t) => {
    const tp = topic();
    await publish(srv, tp, 'before');
    const c = await open(t, srv.wsUrl(`/topics/${tp}`));
    await publish(srv, tp, 'after');
    await c.waitMessages(1);
    await sleep(100);
    assert.deepEqual(c.texts(), ['after']);
  });

  test('seam: resuming while messages are being published loses and repeats nothing', async (t) => {
    const tp = topic();
    const N = 150;
    const ids = [];
    // a publisher that runs during the (re)subscription
    const pub = (async () => {
      for (let i = 0; i < N; i++) ids.push(await publish(srv, tp, String(i)));
    })();
    await waitFor(() => ids.length >= 20, 10000, '20 publishes');
    const from = ids.length - 1; // resume after message #from
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(ids[from])}`));
    await withTimeout(pub, 60000, 'publisher');
    await c.waitMessages(N - from - 1, 20000);
    await sleep(200);
    const got = c.json().map((e) => Number(e.data));
    const want = Array.from({ length: N - from - 1 }, (_, i) => from + 1 + i);
    assert.deepEqual(got, want);
  });

  test('unknown ID with ?format=json: a gap frame, then every retained message', async (t) => {
    const tp = topic();
    const ids = [await publish(srv, tp, 'r0'), await publish(srv, tp, 'r1')];
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=zzzzzzzz-5`));
    await c.waitMessages(3);
    const [g, a, b] = c.json();
    assert.deepEqual(g, { gap: true, topic: tp });
    assert.deepEqual([a.id, b.id], ids);
    await publish(srv, tp, 'live');
    await c.waitMessages(4);
    assert.equal(c.json()[3].data, 'live');
  });

  test('unknown ID on raw frames: every retained message, no gap frame', async (t) => {
    const tp = topic();
    await publish(srv, tp, 'r0');
    await publish(srv, tp, 'r1');
    const c = await open(t, srv.wsUrl(`/topics/${tp}?last_event_id=not-an-id`));
    await c.waitMessages(2);
    await sleep(100);
    assert.deepEqual(c.texts(), ['r0', 'r1']);
  });

  test('an ID from another server run is unknown: gap, then everything retained', async (t) => {
    const other = await startServer(t, {});
    const foreign = await publish(other, 'x', 'elsewhere');
    const tp = topic();
    const ids = [await publish(srv, tp, 'a'), await publish(srv, tp, 'b')];
    assert.notEqual(foreign.split('-')[0], ids[0].split('-')[0], 'each run has its own epoch');
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(foreign)}`));
    await c.waitMessages(3);
    assert.deepEqual(c.json(), [
      { gap: true, topic: tp },
      { id: ids[0], topic: tp, event: c.json()[1].event, data: 'a' },
      { id: ids[1], topic: tp, event: c.json()[2].event, data: 'b' },
    ]);
    assert.equal(await other.stop(), 0);
  });

  test('an ID older than the retained backlog: gap, then the retained messages', async (t) => {
    const tp = `small.${topic()}`; // backlog 3 in ws_app.lua
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push(await publish(srv, tp, `m${i}`));
    const c = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(ids[0])}`));
    await c.waitMessages(4);
    const got = c.json();
    assert.deepEqual(got[0], { gap: true, topic: tp });
    assert.deepEqual(got.slice(1).map((e) => e.id), ids.slice(3));
    // resuming from the oldest retained one's predecessor... is the
    // last dropped one: nothing was missed, so no gap
    const c2 = await open(t, srv.wsUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(ids[2])}`));
    await c2.waitMessages(3);
    await sleep(100);
    assert.deepEqual(c2.json().map((e) => e.id), ids.slice(3));
  });
});

describe('close handshake and liveness', () => {
  test('the server echoes the client close code', async (t) => {
    for (const code of [1000, 1001, 4321]) {
      const c = await open(t, srv.wsUrl(`/topics/${topic()}`));
      c.close(code, 'client says bye');
      const ci = await c.waitClose();
      assert.equal(ci.code, code);
    }
  });

  test('a ping from the client gets a pong with the same payload', async (t) => {
    const c = await open(t, srv.wsUrl(`/topics/${topic()}`));
    const got = new Promise((resolve) => c.ws.once('pong', (d) => resolve(Buffer.from(d))));
    c.ws.ping(Buffer.from('are you there'));
    assert.equal((await withTimeout(got, 5000, 'pong')).toString(), 'are you there');
  });

  describe('idle connections (about a minute)', { concurrency: true }, () => {
    test('the server pings an idle connection, which stays open when it answers', async (t) => {
      const tp = topic();
      const c = await open(t, srv.wsUrl(`/topics/${tp}`));
      await c.until((x) => x.pings.length >= 1, 45000, 'a server ping');
      await c.until((x) => x.pings.length >= 2, 45000, 'a second server ping');
      assert.equal(c.closeInfo, null);
      await publish(srv, tp, 'still here');
      await c.waitMessages(1);
    });

    test('a peer that does not answer pings is dropped', async (t) => {
      const c = await open(t, srv.wsUrl(`/topics/${topic()}`), { autoPong: false });
      await c.until((x) => x.pings.length >= 1, 45000, 'a server ping');
      const ci = await c.waitClose(45000);
      assert.notEqual(ci.code, 1000, 'dropped, not a normal close');
    });
  });

  test('a slow subscriber over the output limit is closed with 1013', async (t) => {
    const slowSrv = await startServer(t, { app: app('ws_slow_consumer.lua') });
    const tp = topic();
    const slow = await open(t, slowSrv.wsUrl(`/topics/${tp}`));
    const fast = await open(t, slowSrv.wsUrl(`/topics/${tp}`));
    slow.ws.pause(); // stop reading: the kernel buffers fill, then the server's queue
    const mark = slowSrv.mark();
    // Random bytes: permessage-deflate (on by default in ws) cannot shrink
    // them, so the backlog grows as fast as without compression.
    const chunk = randomBytes(64 * 1024);
    let n = 0;
    for (; n < 1000; n++) {
      // the fast reader keeps up (lockstep), so only the stalled one is cut
      await fast.waitMessages(n, 30000);
      await publish(slowSrv, tp, chunk);
      if (slowSrv.lines.slice(mark).some((l) => /cut off/.test(l))) break;
    }
    await slowSrv.waitLog(/websocket subscriber cut off/, 10000, mark);
    slow.ws.resume();
    const ci = await slow.waitClose(15000);
    assert.equal(ci.code, 1013);
    assert.ok(slow.messages.length < n + 1, 'it did not get everything');
    await fast.waitMessages(n + 1, 20000);
    assert.equal(fast.closeInfo, null);
  });

  test('SIGTERM closes WebSockets with 1001 and exits 0', async (t) => {
    const s = await startServer(t, {});
    const c = await open(t, s.wsUrl('/topics/shutdown'));
    const c2 = await open(t, s.wsUrl('/topics/shutdown?format=json'));
    const code = await s.stop();
    assert.equal((await c.waitClose()).code, 1001);
    assert.equal((await c2.waitClose()).code, 1001);
    assert.equal(code, 0);
  });
});

describe('Lua per-connection API', () => {
  test('conn:send answers the sender only, text or binary', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wsUrl(`/echo/${tp}`));
    const watcher = await open(t, srv.wsUrl(`/topics/${tp}`));
    await c.send('hi');
    await c.send(Buffer.from('raw'), { binary: true });
    await c.send('bin');
    await c.send('transport');
    const m = await c.waitMessages(4);
    assert.deepEqual(m.map((x) => [x.data.toString('latin1'), x.binary]), [
      ['echo:text:hi', false], ['echo:binary:raw', false], ['\x01\x02\xff', true], ['websocket', false],
    ]);
    await sleep(100);
    assert.equal(watcher.messages.length, 0, 'on_message replaces publishing');
  });

  test('conn:close(4000, "bye") from on_message closes with that code and reason', async (t) => {
    // its own server: a crash here must not take the other tests with it
    const s = await startServer(t, { app: app('ws_app.lua') });
    const c = await open(t, s.wsUrl(`/echo/${topic()}`));
    await c.send('close');
    const ci = await c.waitClose();
    assert.deepEqual(ci, { code: 4000, reason: 'bye' });
    await sleep(200);
    assert.ok(s.alive(), `the server survives:\n${s.logText(20)}`);
    const c2 = await open(t, s.wsUrl(`/topics/${topic()}`));
    c2.close(1000);
    assert.equal((await c2.waitClose()).code, 1000);
  });

  test('the app picks a subprotocol among those offered', async (t) => {
    const c = await open(t, srv.wsUrl(`/proto/${topic()}`), { protocols: ['x.other', 'chat.v1'] });
    assert.equal(c.ws.protocol, 'chat.v1');
    await assert.rejects(WsClient.open(srv.wsUrl(`/proto/${topic()}`), { protocols: ['nope'] }), /HTTP 400/);
    await assert.rejects(WsClient.open(srv.wsUrl(`/proto/${topic()}`)), /HTTP 400/);
  });

  test('format = "json" from the app', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wsUrl(`/json/${tp}`));
    const id = await publish(srv, tp, 'enveloped');
    await c.waitMessages(1);
    assert.equal(c.json()[0].id, id);
  });

  test('a filter drops and changes messages per subscriber', async (t) => {
    const tp = topic();
    const f = await open(t, srv.wsUrl(`/filtered/${tp}`));
    const fj = await open(t, srv.wsUrl(`/filtered/${tp}?format=json`));
    const plain = await open(t, srv.wsUrl(`/topics/${tp}`));
    const ids = [];
    for (const d of ['keep', 'drop', 'up:shout', 'last']) ids.push(await publish(srv, tp, d));
    await f.waitMessages(3);
    await fj.waitMessages(3);
    await plain.waitMessages(4);
    await sleep(100);
    assert.deepEqual(f.texts(), ['keep', 'UP:SHOUT', 'last']);
    assert.deepEqual(fj.json().map((e) => [e.id, e.data]), [[ids[0], 'keep'], [ids[2], 'UP:SHOUT'], [ids[3], 'last']]);
    assert.deepEqual(plain.texts(), ['keep', 'drop', 'up:shout', 'last']);
  });
});

describe('TLS (wss)', () => {
  test('subscribe, receive text and binary, publish from the client, close', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wssUrl(`/topics/${tp}`), { ca: certs.ca });
    const j = await open(t, srv.wssUrl(`/topics/${tp}?format=json`), { ca: certs.ca, servername: 'localhost' });
    const id = await publish(srv, tp, 'over tls');
    await publish(srv, tp, BINARY);
    await c.send('client over tls');
    const m = await c.waitMessages(3);
    assert.equal(m[0].data.toString(), 'over tls');
    assert.deepEqual([m[1].binary, m[1].data], [true, BINARY]);
    assert.equal(m[2].data.toString(), 'client over tls');
    await j.waitMessages(3);
    assert.equal(j.json()[0].id, id);
    c.close(1000);
    assert.equal((await c.waitClose()).code, 1000);
  });

  test('resume with a gap over wss', async (t) => {
    const tp = topic();
    const ids = [await publish(srv, tp, 'a'), await publish(srv, tp, 'b')];
    const c = await open(t, srv.wssUrl(`/topics/${tp}?format=json&last_event_id=${encodeURIComponent(ids[0])}`), { ca: certs.ca });
    await c.waitMessages(1);
    assert.deepEqual(c.json().map((e) => e.id), [ids[1]]);
    const g = await open(t, srv.wssUrl(`/topics/${tp}?format=json&last_event_id=bogus`), { ca: certs.ca });
    await g.waitMessages(3);
    assert.deepEqual(g.json()[0], { gap: true, topic: tp });
  });

  test('a large message over wss both ways', async (t) => {
    const tp = topic();
    const c = await open(t, srv.wssUrl(`/topics/${tp}`), { ca: certs.ca });
    const big = Buffer.alloc(700 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0x7f;
    await c.send(big, { binary: true });
    const [m] = await c.waitMessages(1, 20000);
    assert.ok(m.data.equals(big));
    assert.equal(m.binary, false, 'ASCII data is valid UTF-8: delivered as text');
  });

  test('an untrusted certificate is refused by the client (the test really verifies)', async () => {
    await assert.rejects(WsClient.open(srv.wssUrl('/topics/x')), /self[- ]signed|certificate/i);
  });
});
