// CORS in a real browser (Debian's Chromium through playwright-core): a page
// served by node on another port (another origin) uses sluice.  With the
// default app: its EventSource subscribes cross-origin and receives; its
// fetch POST (a publish) is refused (the server answers 403 and stores
// nothing; the browser reports a network error), unless the page's origin
// is listed in SLUICE_PUBLISH_ORIGINS, when the page publishes and reads the
// answer.  With an app whose cors lists only another origin, the page's
// WebSocket is refused at the handshake (cross-site WebSocket hijacking)
// and counted.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { launchChromium, metric, publish, request, startServer, tmpdir } from './lib.mjs';


const PAGE = `<!doctype html><html><head><meta charset="utf-8"></head><body>
<p id="status">running</p>
<script>
window.r = { sse: [], sseOpen: 0, sseErr: 0, ws: null, post: null };
window.subscribe = (base, topic) => {
  const es = new EventSource(base + "/topics/" + topic);
  es.onopen = () => { r.sseOpen++; };
  es.onerror = () => { r.sseErr++; };
  es.onmessage = (e) => r.sse.push(e.data);
};
window.post = async (base, topic, body) => {
  try {
    const res = await fetch(base + "/topics/" + topic, { method: "POST", body,
      headers: { "Content-Type": "application/json" } });
    r.post = { status: res.status, body: await res.text() };
  } catch (e) { r.post = { error: String(e) }; }
};
window.openWs = (url) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { r.ws = "open"; };
  ws.onclose = (e) => { if (r.ws !== "open") r.ws = "refused:" + e.code; };
};
</script></body></html>`;

let pageServer;
let pageOrigin;
let browser;

before(async () => {
  pageServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise((res) => pageServer.listen(0, '127.0.0.1', res));
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  pageServer?.close();
});

async function openPage(t) {
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  await page.goto(`${pageOrigin}/`);
  return page;
}

const base = (srv) => srv.url('/').replace(/\/$/, '');

describe('Chromium on another origin', () => {
  test('default app: EventSource subscribes; an unlisted origin cannot publish', async (t) => {
    const srv = await startServer(t, {});
    const page = await openPage(t);
    await page.evaluate(([b]) => window.subscribe(b, 'cx'), [base(srv)]);
    await page.waitForFunction(() => window.r.sseOpen >= 1);
    await publish(srv, 'cx', 'across origins');
    await page.waitForFunction(() => window.r.sse.length >= 1);
    assert.deepEqual(await page.evaluate(() => window.r.sse), ['across origins']);
    // The publish: refused by the server, a network error to the page.
    const refusedBefore = await metric(srv, 'sluice_cors_refused_total{kind="preflight"}');
    await page.evaluate(([b]) => window.post(b, 'cx', '{"from":"page"}'), [base(srv)]);
    await page.waitForFunction(() => window.r.post !== null);
    const post = await page.evaluate(() => window.r.post);
    assert.ok(post.error, `the page's publish went through: ${JSON.stringify(post)}`);
    assert.ok(await metric(srv, 'sluice_cors_refused_total{kind="preflight"}') > refusedBefore);
    const poll = JSON.parse((await request(srv.url('/topics/cx?timeout=0&since=0-0'))).body.toString());
    assert.deepEqual(poll.messages.map((m) => m.data), ['across origins']);
  });

  test('default app: an origin in SLUICE_PUBLISH_ORIGINS publishes', async (t) => {
    process.env.SLUICE_PUBLISH_ORIGINS = pageOrigin;
    let srv;
    try {
      srv = await startServer(t, {});
    } finally {
      delete process.env.SLUICE_PUBLISH_ORIGINS;
    }
    const page = await openPage(t);
    await page.evaluate(([b]) => window.post(b, 'cy', '{"from":"page"}'), [base(srv)]);
    await page.waitForFunction(() => window.r.post !== null);
    const post = await page.evaluate(() => window.r.post);
    assert.equal(post.status, 200, JSON.stringify(post));
    assert.match(post.body, /"id"/);
  });

  test('an app that lists other origins refuses the page\'s WebSocket', async (t) => {
    const dir = tmpdir(t);
    const app = path.join(dir, 'app.lua');
    fs.writeFileSync(app, `local sluice = require "sluice"
sluice.config{cors = {origins = {"https://only.example.com"}}}
sluice.route("GET", "/topics/:t", function(req) return req:subscribe(req.params.t) end)
sluice.route("GET", "/metrics", function() return 200, sluice.metrics() end)
`);
    const srv = await startServer(t, { app });
    const page = await openPage(t);
    await page.evaluate(([u]) => window.openWs(u), [srv.wsUrl('/topics/ws')]);
    await page.waitForFunction(() => window.r.ws !== null);
    assert.match(await page.evaluate(() => window.r.ws), /^refused:/);
    assert.equal(await metric(srv, 'sluice_cors_refused_total{kind="websocket"}'), 1);
    await srv.waitLog(/WebSocket origin not allowed/, 5000);
  });
});
