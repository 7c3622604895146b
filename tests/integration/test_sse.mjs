// Server-Sent Events, driven two ways: a raw reader (lib.mjs SseReader)
// that checks the wire format exactly (head, `retry:`, id/event/data
// lines, heartbeat comments, base64 for binary, the sluice.gap event), and
// the npm `eventsource` client (the WHATWG EventSource in node), which must
// reconnect by itself with Last-Event-ID and lose nothing.  Also: resume
// with no gap/no duplicate at the seam, several topics on one connection
// resuming from one ID, SIGTERM ends the streams, and all of it over TLS.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventSource } from 'eventsource';
import {
  BINARY, CutProxy, SseReader, app, fetchWithCa, headValue, makeCert, publish, sleep, startServer, tmpdir,
  waitFor, withTimeout,
} from './lib.mjs';

let srv;
let certs;
before(async () => {
  certs = makeCert(tmpdir());
  srv = await startServer(null, { app: app('sse_app.lua'), tls: certs });
});
after(() => srv?.kill());

let topicSeq = 0;
const topic = (p = 't') => `sse.${p}.${process.pid}.${++topicSeq}`;

async function sse(t, url, opts) {
  const r = await SseReader.open(url, opts);
  t.after(() => r.close());
  return r;
}

// An npm EventSource whose events (every type named in `types`, plus
// errors and opens) are collected in order.
function eventSource(t, url, types = [], init = {}) {
  const es = new EventSource(url, init);
  t.after(() => es.close());
  const rec = { es, events: [], errors: 0, opens: 0 };
  es.onopen = () => rec.opens++;
  es.onerror = () => rec.errors++;
  for (const type of ['message', ...types]) {
    es.addEventListener(type, (e) => rec.events.push({ type: e.type, data: e.data, lastEventId: e.lastEventId }));
  }
  return rec;
}

describe('wire format', () => {
  test('head, retry hint, events with id/event/data lines', async (t) => {
    const tp = topic();
    const r = await sse(t, srv.url(`/topics/${tp}`));
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/event-stream/);
    assert.equal(r.headers['cache-control'], 'no-cache');
    assert.equal(r.headers['x-accel-buffering'], 'no');
    assert.equal(r.headers['content-length'], undefined);
    await r.until((x) => x.retry !== null, 5000, 'the retry line');
    assert.ok(r.text.startsWith('retry: 2000\n'), JSON.stringify(r.text.slice(0, 40)));
    const id1 = await publish(srv, tp, 'hello');
    const id2 = await publish(srv, tp, 'line one\nline two\n\nline four', { event: 'multi' });
    const id3 = await publish(srv, tp, '');
    const id4 = await publish(srv, tp, 'crlf\r\nand cr\rend');
    const id5 = await publish(srv, tp, ': not a comment\nid: not an id', { event: 'tricky' });
    await r.waitEvents(5);
    assert.deepEqual(r.events.map((e) => e.id), [id1, id2, id3, id4, id5]);
    assert.deepEqual(r.events.map((e) => e.event), ['message', 'multi', 'message', 'message', 'tricky']);
    assert.equal(r.events[0].data, 'hello');
    assert.equal(r.events[1].data, 'line one\nline two\n\nline four');
    assert.equal(r.events[2].data, '');
    assert.equal(r.events[3].data, 'crlf\nand cr\nend', 'SSE line breaks are normalised to LF');
    assert.equal(r.events[4].data, ': not a comment\nid: not an id');
    // the exact bytes of one event
    assert.ok(r.text.includes(`id: ${id2}\nevent: multi\ndata: line one\ndata: line two\ndata:\ndata: line four\n\n`), r.text);
    assert.ok(r.text.includes(`id: ${id1}\ndata: hello\n\n`), r.text);
  });

  test('binary data goes base64 with the event name suffixed .base64', async (t) => {
    const tp = topic();
    const r = await sse(t, srv.url(`/topics/${tp}`));
    await publish(srv, tp, BINARY);
    await publish(srv, tp, BINARY, { event: 'blob' });
    await r.waitEvents(2);
    assert.equal(r.events[0].event, 'message.base64');
    assert.equal(r.events[1].event, 'blob.base64');
    for (const e of r.events) assert.deepEqual(Buffer.from(e.data, 'base64'), BINARY);
    // valid UTF-8 stays as it is
    await publish(srv, tp, 'ünïcødé ✓');
    await r.waitEvents(3);
    assert.deepEqual([r.events[2].event, r.events[2].data], ['message', 'ünïcødé ✓']);
  });

  test('a heartbeat comment comes within 15 s on an idle stream', async (t) => {
    const r = await sse(t, srv.url(`/topics/${topic()}`));
    await r.until((x) => x.comments.length >= 1, 25000, 'a heartbeat comment');
    assert.ok(/\n:[^\n]*\n/.test(r.text), JSON.stringify(r.text));
    assert.equal(r.ended, false);
  });

  test('a message of 1 MiB (the maximum size) reaches an idle subscriber', async (t) => {
    const tp = topic();
    const r = await sse(t, srv.url(`/topics/${tp}`));
    await r.until((x) => x.retry !== null, 5000, 'the retry line');
    const big = 'b'.repeat(1024 * 1024);
    const id = await publish(srv, tp, big);
    await r.waitEvents(1, 20000);
    assert.equal(r.events[0].id, id);
    assert.equal(r.events[0].data.length, big.length);
    assert.equal(r.ended, false);
  });

  test('bad topic: 400 JSON, no stream', async (t) => {
    const r = await SseReader.open(srv.url('/topics/no%20spaces'));
    await r.waitEnd();
    assert.equal(r.status, 400);
    assert.match(r.headers['content-type'], /application\/json/);
    assert.ok(JSON.parse(r.text).error);
  });

  test('several subscribers each get every message in order', async (t) => {
    const tp = topic();
    const readers = await Promise.all([0, 1, 2].map(() => sse(t, srv.url(`/topics/${tp}`))));
    const ids = [];
    for (let i = 0; i < 50; i++) ids.push(await publish(srv, tp, `m${i}`));
    for (const r of readers) {
      await r.waitEvents(50);
      assert.deepEqual(r.events.map((e) => e.id), ids);
    }
  });
});

describe('resume', () => {
  test('Last-Event-ID header: replay after the ID, then live', async (t) => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await publish(srv, tp, `m${i}`));
    const r = await sse(t, srv.url(`/topics/${tp}`), { headers: { 'Last-Event-ID': ids[1] } });
    await r.waitEvents(3);
    ids.push(await publish(srv, tp, 'm5'));
    await r.waitEvents(4);
    await sleep(100);
    assert.deepEqual(r.events.map((e) => e.id), ids.slice(2));
    assert.ok(!r.events.some((e) => e.event === 'sluice.gap'));
  });

  test('?last_event_id= works like the header', async (t) => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(srv, tp, `m${i}`));
    const r = await sse(t, srv.url(`/topics/${tp}?last_event_id=${encodeURIComponent(ids[0])}`));
    await r.waitEvents(2);
    assert.deepEqual(r.events.map((e) => e.data), ['m1', 'm2']);
  });

  test('seam: resuming while messages are being published loses and repeats nothing', async (t) => {
    const tp = topic();
    const N = 150;
    const ids = [];
    const pub = (async () => {
      for (let i = 0; i < N; i++) ids.push(await publish(srv, tp, String(i)));
    })();
    await waitFor(() => ids.length >= 20, 10000, '20 publishes');
    const from = ids.length - 1;
    const r = await sse(t, srv.url(`/topics/${tp}`), { headers: { 'Last-Event-ID': ids[from] } });
    await withTimeout(pub, 60000, 'publisher');
    await r.waitEvents(N - from - 1, 20000);
    await sleep(200);
    assert.deepEqual(r.events.map((e) => Number(e.data)), Array.from({ length: N - from - 1 }, (_, i) => from + 1 + i));
  });

  test('unknown ID: event sluice.gap {"topic":...}, then every retained message', async (t) => {
    const tp = topic();
    const ids = [await publish(srv, tp, 'r0'), await publish(srv, tp, 'r1')];
    const r = await sse(t, srv.url(`/topics/${tp}`), { headers: { 'Last-Event-ID': 'abcdef-12' } });
    await r.waitEvents(3);
    assert.equal(r.events[0].event, 'sluice.gap');
    assert.deepEqual(JSON.parse(r.events[0].data), { topic: tp });
    assert.deepEqual(r.events.slice(1).map((e) => e.id), ids);
  });

  test('an ID from another server run is unknown: gap', async (t) => {
    const other = await startServer(t, {});
    const foreign = await publish(other, 'x', 'elsewhere');
    assert.equal(await other.stop(), 0);
    const tp = topic();
    const id = await publish(srv, tp, 'here');
    const r = await sse(t, srv.url(`/topics/${tp}`), { headers: { 'Last-Event-ID': foreign } });
    await r.waitEvents(2);
    assert.equal(r.events[0].event, 'sluice.gap');
    assert.equal(r.events[1].id, id);
  });

  test('an ID older than the retained backlog: gap, then the retained ones', async (t) => {
    const tp = `small.${topic()}`; // backlog 3 in sse_app.lua
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push(await publish(srv, tp, `m${i}`));
    const r = await sse(t, srv.url(`/topics/${tp}`), { headers: { 'Last-Event-ID': ids[1] } });
    await r.waitEvents(4);
    assert.equal(r.events[0].event, 'sluice.gap');
    assert.deepEqual(r.events.slice(1).map((e) => e.id), ids.slice(3));
  });

  test('one connection on several topics resumes from the one ID it last saw', async (t) => {
    const a = topic('a');
    const b = topic('b');
    const r = await sse(t, srv.url(`/multi?topics=${a},${b}`));
    const ids = [];
    ids.push(await publish(srv, a, 'a1'));
    ids.push(await publish(srv, b, 'b1'));
    ids.push(await publish(srv, a, 'a2'));
    await r.waitEvents(3);
    assert.deepEqual(r.events.map((e) => e.id), ids);
    r.close();
    // messages while away, on both topics
    ids.push(await publish(srv, b, 'b2'));
    ids.push(await publish(srv, a, 'a3'));
    const r2 = await sse(t, srv.url(`/multi?topics=${a},${b}`), { headers: { 'Last-Event-ID': r.lastEventId } });
    await r2.waitEvents(2);
    ids.push(await publish(srv, b, 'b3'));
    await r2.waitEvents(3);
    await sleep(100);
    // over several topics each event's data is the JSON object naming its
    // topic (docs/protocol.md, "Several topics on one stream")
    const got = r2.events.map((e) => JSON.parse(e.data));
    assert.deepEqual(got.map((m) => m.data), ['b2', 'a3', 'b3']);
    assert.deepEqual(got.map((m) => m.topic), [b, a, b]);
    assert.deepEqual(got.map((m) => m.id), ids.slice(3));
    assert.deepEqual(r2.events.map((e) => e.id), ids.slice(3));
  });
});

describe('npm eventsource client', () => {
  test('messages, named events, lastEventId', async (t) => {
    const tp = topic();
    const rec = eventSource(t, srv.url(`/topics/${tp}`), ['news']);
    await waitFor(() => rec.opens >= 1, 10000, 'open');
    const id1 = await publish(srv, tp, 'plain');
    const id2 = await publish(srv, tp, 'two\nlines', { event: 'news' });
    await waitFor(() => rec.events.length >= 2, 10000, '2 events');
    assert.deepEqual(rec.events, [
      { type: 'message', data: 'plain', lastEventId: id1 },
      { type: 'news', data: 'two\nlines', lastEventId: id2 },
    ]);
  });

  test('sluice.gap can be listened for', async (t) => {
    const tp = topic();
    await publish(srv, tp, 'retained');
    const rec = eventSource(t, srv.url(`/topics/${tp}?last_event_id=nope`), ['sluice.gap']);
    await waitFor(() => rec.events.length >= 2, 10000, 'gap and message');
    assert.equal(rec.events[0].type, 'sluice.gap');
    assert.deepEqual(JSON.parse(rec.events[0].data), { topic: tp });
    assert.equal(rec.events[1].data, 'retained');
  });

  // The connection is cut under the client by a TCP proxy (what a network
  // failure or a restarted load balancer does): no server-side hook is
  // needed, and the server cannot tell it from a real failure.  The client
  // reconnects after the server's retry hint with Last-Event-ID and gets
  // what was published meanwhile, once each.
  test('reconnects after a cut connection with Last-Event-ID and loses nothing', async (t) => {
    const tp = topic();
    const proxy = await CutProxy.open(t, srv.port);
    const rec = eventSource(t, proxy.url(`/topics/${tp}`));
    await waitFor(() => rec.opens >= 1, 10000, 'open');
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(srv, tp, `m${i}`));
    await waitFor(() => rec.events.length >= 3, 10000, '3 events');
    proxy.cut();
    await waitFor(() => rec.errors >= 1, 10000, 'the client to see the cut');
    for (let i = 3; i < 6; i++) ids.push(await publish(srv, tp, `m${i}`));
    await waitFor(() => rec.opens >= 2, 15000, 'the reconnect');
    await waitFor(() => rec.events.length >= 6, 10000, 'the missed events');
    ids.push(await publish(srv, tp, 'm6'));
    await waitFor(() => rec.events.length >= 7, 10000, 'a live event');
    await sleep(100);
    assert.deepEqual(rec.events.map((e) => e.lastEventId), ids);
    assert.deepEqual(rec.events.map((e) => e.data), ids.map((_, i) => `m${i}`));
    assert.equal(proxy.heads.length, 2);
    assert.equal(headValue(proxy.heads[0], 'last-event-id'), null);
    assert.equal(headValue(proxy.heads[1], 'last-event-id'), ids[2]);
  });

  test('reconnects after the server ends the stream (slow-consumer cut)', async (t) => {
    // A second way for the stream to end, from the server's side: the
    // client stops reading (its proxy pauses), the server's queue for it
    // passes the output limit and the server ends the stream; once the
    // proxy resumes, the client reads what was queued, sees the end,
    // reconnects with the last ID it got and catches up.
    const s = await startServer(t, { app: app('ws_slow_consumer.lua') });
    const tp = topic();
    const proxy = await CutProxy.open(t, s.port);
    const rec = eventSource(t, proxy.url(`/topics/${tp}`), ['sluice.gap']);
    await waitFor(() => rec.opens >= 1, 10000, 'open');
    for (const { upstream } of proxy.pairs) upstream.pause();
    const mark = s.mark();
    const cut = () => s.lines.slice(mark).some((l) => /sse subscriber cut off/.test(l));
    const chunk = 'x'.repeat(32 * 1024);
    let n = 0;
    for (; n < 2000 && !cut(); n++) await publish(s, tp, `${n}:${chunk}`);
    assert.ok(cut(), 'the server cut the stream');
    for (const { upstream } of proxy.pairs) upstream.resume();
    await waitFor(() => rec.opens >= 2, 20000, 'the reconnect');
    await publish(s, tp, `${n}:last`);
    await waitFor(() => rec.events.some((e) => e.data === `${n}:last`), 20000, 'the last message');
    await sleep(100);
    // the few messages published after the cut are still retained (backlog
    // 16 in that app): everything arrives once, in order, without a gap
    assert.ok(!rec.events.some((e) => e.type === 'sluice.gap'), 'no gap');
    const got = rec.events.map((e) => Number(e.data.split(':')[0]));
    assert.deepEqual(got, Array.from({ length: n + 1 }, (_, i) => i));
    // it resumed from an event it had: one before the cut
    const resumeId = headValue(proxy.heads[1], 'last-event-id');
    const k = rec.events.findIndex((e) => e.lastEventId === resumeId);
    assert.ok(k >= 0 && k < n, `resumed from ${resumeId} (#${k})`);
  });
});

describe('shutdown', () => {
  test('SIGTERM ends SSE streams and exits 0', async (t) => {
    const s = await startServer(t, {});
    const r = await sse(t, s.url('/topics/bye'));
    const r2 = await sse(t, s.url('/topics/bye2'), { headers: { 'Last-Event-ID': 'x' } });
    await r.until((x) => x.retry !== null, 5000, 'retry line');
    assert.equal(await s.stop(), 0);
    await r.waitEnd();
    await r2.waitEnd();
  });
});

describe('TLS', () => {
  test('raw SSE over HTTPS with a private CA', async (t) => {
    const tp = topic();
    const r = await sse(t, srv.httpsUrl(`/topics/${tp}`), { ca: certs.ca });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/event-stream/);
    const id = await publish(srv, tp, 'secure', { event: 'e' });
    await publish(srv, tp, BINARY);
    await r.waitEvents(2);
    assert.deepEqual([r.events[0].id, r.events[0].event, r.events[0].data], [id, 'e', 'secure']);
    assert.equal(r.events[1].event, 'message.base64');
  });

  test('npm eventsource over HTTPS: resume with Last-Event-ID and gap', async (t) => {
    const tp = topic();
    const ids = [await publish(srv, tp, 'a'), await publish(srv, tp, 'b')];
    const f = fetchWithCa(certs.ca);
    const rec = eventSource(t, srv.httpsUrl(`/topics/${tp}?last_event_id=${encodeURIComponent(ids[0])}`), ['sluice.gap'], { fetch: f });
    await waitFor(() => rec.events.length >= 1, 10000, 'the replayed event');
    ids.push(await publish(srv, tp, 'c'));
    await waitFor(() => rec.events.length >= 2, 10000, 'the live event');
    assert.deepEqual(rec.events.map((e) => e.data), ['b', 'c']);
    const g = eventSource(t, srv.httpsUrl(`/topics/${tp}?last_event_id=unknown`), ['sluice.gap'], { fetch: f });
    await waitFor(() => g.events.length >= 4, 10000, 'gap and 3 events');
    assert.deepEqual(g.events.map((e) => e.type), ['sluice.gap', 'message', 'message', 'message']);
  });

  test('an untrusted certificate fails (the test really verifies)', async (t) => {
    await assert.rejects(SseReader.open(srv.httpsUrl('/topics/x')), /self[- ]signed|certificate/i);
  });
});
