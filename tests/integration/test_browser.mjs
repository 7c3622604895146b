// A real browser as the client: Debian's Chromium, headless, driven by
// playwright-core.  sluice serves the page itself (apps/browser_app.lua,
// GET /page), whose script opens the browser's own `WebSocket` and
// `EventSource` on a topic and records what they receive; node publishes
// with fetch and reads the record back.  Covers text and binary WebSocket
// frames, JSON envelopes, what the browser sends being published, named
// and base64 SSE events, the sluice.gap event with ?last_event_id=, the
// browser's own EventSource reconnect with Last-Event-ID after the
// connection is cut (through lib.mjs's CutProxy), and the same page over
// HTTPS (wss + EventSource) with the test certificate trusted by SPKI pin.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  CutProxy, WsClient, app, headValue, launchChromium, makeCert, publish, startServer, tmpdir,
} from './lib.mjs';


let srv;
let certs;
let browser;

before(async () => {
  certs = makeCert(tmpdir());
  srv = await startServer(null, { app: app('browser_app.lua'), tls: certs });
  browser = await launchChromium({ trust: certs }); // trusted by its public-key pin
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await srv?.kill();
});

let topicSeq = 0;
const topic = (p = 't') => `br.${p}.${process.pid}.${++topicSeq}`;

async function openPage(t, url) {
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const res = await page.goto(url, { timeout: 15000 });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-type'], /text\/html/);
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'running', null, { timeout: 15000 });
  assert.deepEqual(errors, []);
  return page;
}

const rec = (page) => page.evaluate(() => window.received);

async function waitRec(page, pred, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await rec(page);
    if (pred(r)) return r;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(r).slice(0, 1500)}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

describe('Chromium', () => {
  test('the browser WebSocket and EventSource receive what node publishes', async (t) => {
    const tp = topic();
    const page = await openPage(t, srv.url(`/page?topic=${tp}`));
    await waitRec(page, (r) => r.wsOpen && r.sseOpens >= 1, 'both open');
    const id1 = await publish(srv, tp, 'hello browser ✓');
    const id2 = await publish(srv, tp, 'two\nlines', { event: 'news' });
    await publish(srv, tp, Buffer.from([0xff, 0x00, 0x80, 0x41]));
    const r = await waitRec(page, (x) => x.ws.length >= 2 && x.wsBinary.length >= 1 && x.sse.length >= 1
      && x.named.length >= 1 && x.base64.length >= 1, 'every message');
    assert.deepEqual(r.ws, ['hello browser ✓', 'two\nlines']);
    assert.deepEqual(r.wsBinary, [[0xff, 0x00, 0x80, 0x41]]);
    assert.deepEqual(r.sse, [{ data: 'hello browser ✓', id: id1 }]);
    assert.deepEqual(r.named, [{ data: 'two\nlines', id: id2 }]);
    assert.deepEqual(r.base64, [[0xff, 0x00, 0x80, 0x41]]);
    assert.equal(r.wsClose, null);
  });

  test('what the browser sends over its WebSocket is published', async (t) => {
    const tp = topic();
    const watcher = await WsClient.open(srv.wsUrl(`/topics/${tp}?format=json`));
    t.after(() => watcher.terminate());
    const page = await openPage(t, srv.url(`/page?topic=${tp}`));
    await waitRec(page, (r) => r.wsOpen && r.sseOpens >= 1, 'both open');
    await page.evaluate(() => window.wsSend('from chromium'));
    await page.evaluate(() => window.wsSendBytes([0xfe, 0x01]));
    await watcher.waitMessages(2, 15000);
    const [a, b] = watcher.json();
    assert.equal(a.data, 'from chromium');
    assert.equal(b.encoding, 'base64');
    assert.deepEqual([...Buffer.from(b.data, 'base64')], [0xfe, 0x01]);
    // the page's own EventSource sees them too
    const r = await waitRec(page, (x) => x.sse.length >= 1 && x.base64.length >= 1, 'its own messages on SSE');
    assert.equal(r.sse[0].data, 'from chromium');
    assert.equal(r.sse[0].id, a.id);
    assert.deepEqual(r.base64[0], [0xfe, 0x01]);
  });

  test('WebSocket JSON envelopes in the browser', async (t) => {
    const tp = topic();
    const page = await openPage(t, srv.url(`/page?topic=${tp}&format=json`));
    await waitRec(page, (r) => r.wsOpen, 'open');
    const id = await publish(srv, tp, 'enveloped', { event: 'news' });
    const r = await waitRec(page, (x) => x.ws.length >= 1, 'an envelope');
    assert.deepEqual(JSON.parse(r.ws[0]), { id, topic: tp, event: 'news', data: 'enveloped' });
  });

  test('EventSource with ?last_event_id=: replay, and sluice.gap for an unknown ID', async (t) => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(srv, tp, `m${i}`));
    const page = await openPage(t, srv.url(`/page?topic=${tp}&resume=${encodeURIComponent(ids[0])}`));
    let r = await waitRec(page, (x) => x.sse.length >= 2, 'the replay');
    assert.deepEqual(r.sse.map((e) => e.id), ids.slice(1));
    assert.deepEqual(r.gaps, []);
    const page2 = await openPage(t, srv.url(`/page?topic=${tp}&resume=unknown-1`));
    r = await waitRec(page2, (x) => x.gaps.length >= 1 && x.sse.length >= 3, 'gap and replay');
    assert.deepEqual(r.gaps, [{ topic: tp }]);
    assert.deepEqual(r.sse.map((e) => e.id), ids);
  });

  test("the browser's EventSource reconnects with Last-Event-ID after a cut and loses nothing", async (t) => {
    const tp = topic();
    const proxy = await CutProxy.open(t, srv.port);
    const page = await openPage(t, proxy.url(`/page?topic=${tp}`));
    await waitRec(page, (r) => r.sseOpens >= 1, 'open');
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(srv, tp, `m${i}`));
    await waitRec(page, (r) => r.sse.length >= 3, '3 events');
    proxy.cut();
    await waitRec(page, (r) => r.sseErrors >= 1, 'the error event');
    for (let i = 3; i < 6; i++) ids.push(await publish(srv, tp, `m${i}`));
    await waitRec(page, (r) => r.sseOpens >= 2, 'the reconnect', 20000);
    ids.push(await publish(srv, tp, 'm6'));
    const r = await waitRec(page, (x) => x.sse.length >= 7, 'all 7 events');
    await new Promise((res) => setTimeout(res, 100));
    assert.deepEqual((await rec(page)).sse.map((e) => e.id), ids);
    assert.deepEqual(r.sse.map((e) => e.data), ids.map((_, i) => `m${i}`));
    const sseHeads = proxy.heads.filter((h) => /^GET \/topics\//.test(h) && /text\/event-stream/i.test(h));
    assert.ok(sseHeads.length >= 2, proxy.heads.join('\n---\n'));
    assert.equal(headValue(sseHeads.at(-1), 'last-event-id'), ids[2]);
  });

  test('the same page over HTTPS: wss and EventSource', async (t) => {
    const tp = topic();
    const page = await openPage(t, srv.httpsUrl(`/page?topic=${tp}`));
    await waitRec(page, (r) => r.wsOpen && r.sseOpens >= 1, 'both open over TLS');
    const id = await publish(srv, tp, 'secure');
    await page.evaluate(() => window.wsSend('secure from browser'));
    const r = await waitRec(page, (x) => x.ws.length >= 2 && x.sse.length >= 2, 'messages over TLS');
    assert.deepEqual(r.ws, ['secure', 'secure from browser']);
    assert.equal(r.sse[0].id, id);
    assert.equal(r.sse[1].data, 'secure from browser');
  });
});
