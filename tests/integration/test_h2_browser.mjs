// HTTP/2 in a real browser (Debian's Chromium through playwright-core): a
// page served by sluice over HTTPS opens 20 EventSources and one WebSocket
// to its own origin; over HTTP/2 (ALPN h2) all of them open and receive.
// The same page over plain HTTP/1.1 shows why that matters: Chromium opens
// at most 6 connections per origin, so only 6 EventSources get through and
// the other 14 wait.  A WebSocket opened over that HTTP/2 connection
// negotiates permessage-deflate, and messages are compressed both ways.
// apps/h2_browser_app.lua serves the page.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { app, deflateRoundTrip, launchChromium, openDeflateWs, makeCert, metric as metricOf, publish, sleep, startServer, tmpdir } from './lib.mjs';

const N = 20;

let srv;
let browser;

before(async () => {
  const certs = makeCert(tmpdir());
  srv = await startServer(null, { app: app('h2_browser_app.lua'), tls: certs });
  browser = await launchChromium({ trust: certs }); // trusted by its public-key pin
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await srv?.kill();
});

async function openPage(t, url) {
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const res = await page.goto(url, { timeout: 15000 });
  assert.equal(res.status(), 200);
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'running');
  return page;
}

const rec = (page) => page.evaluate(() => window.received);

const metric = (name) => metricOf(srv, name);

describe('HTTP/2 in Chromium', () => {
  test('20 EventSources and a WebSocket on one origin over HTTPS all receive', async (t) => {
    const tp = `h2br.${process.pid}.a`;
    const page = await openPage(t, srv.httpsUrl(`/many?topic=${tp}&n=${N}`));
    await page.waitForFunction((n) => window.received.opened.length === n && window.received.wsOpen,
      N, { timeout: 15000 });
    assert.equal((await rec(page)).protocol, 'h2');
    for (let i = 0; i < N; i++) await publish(srv, `${tp}.${i}`, `hello ${i}`);
    await publish(srv, `${tp}.ws`, 'hello ws');
    await page.waitForFunction((n) => window.received.got.every((g, i) => g.includes(`hello ${i}`)) &&
      window.received.ws.includes('hello ws') && window.received.got.length === n, N,
    { timeout: 15000 });
    // The streams are HTTP/2 streams of sluice: 20 SSE and the WebSocket,
    // which Chromium opens with RFC 8441's extended CONNECT on the same
    // connection since the server offers it.
    assert.ok(await metric('sluice_http2_streams') >= N + 1, `${await metric('sluice_http2_streams')} streams`);
    assert.equal(await metric('sluice_http2_connections'), 1);
  });

  test('a WebSocket over HTTP/2 (RFC 8441) negotiates permessage-deflate, compressed both ways', async (t) => {
    // Chromium opens a page's WebSocket with the extended CONNECT on the
    // page's HTTP/2 connection, and offers permessage-deflate there as it
    // does over HTTP/1.1: the offer travels in the CONNECT's headers.
    const tp = `h2br.${process.pid}.z`;
    const page = await openPage(t, srv.httpsUrl(`/many?topic=${tp}&n=0`));
    assert.equal((await rec(page)).protocol, 'h2');
    await page.waitForFunction(() => window.received.wsOpen);
    const streams = await metric('sluice_http2_streams_total');
    const accepted = await metric('sluice_ws_deflate_negotiations_total{result="accepted"}');
    const ext = await openDeflateWs(page, srv.httpsUrl(`/topics/${tp}.dfl`).replace(/^https:/, 'wss:'));
    assert.match(ext, /permessage-deflate/);
    assert.equal(await metric('sluice_ws_deflate_negotiations_total{result="accepted"}'), accepted + 1);
    // An HTTP/2 stream (over HTTP/1.1 it would be a connection of its
    // own): the page's WebSocket and this one are both open streams.
    assert.ok(await metric('sluice_http2_streams_total') > streams);
    assert.ok(await metric('sluice_http2_streams') >= 2, `${await metric('sluice_http2_streams')} streams`);
    const body = JSON.stringify({ items: Array.from({ length: 60 }, (_, i) => ({ id: i, name: `item ${i}`, ok: true })) });
    await deflateRoundTrip(page, srv, `${tp}.dfl`, body);
  });

  test('the same page over HTTP/1.1 stalls at 6 connections', async (t) => {
    const tp = `h2br.${process.pid}.b`;
    const page = await openPage(t, srv.url(`/many?topic=${tp}&n=${N}`));
    assert.equal((await rec(page)).protocol, 'http/1.1');
    await page.waitForFunction(() => window.received.opened.length >= 5 && window.received.wsOpen);
    for (let i = 0; i < N; i++) await publish(srv, `${tp}.${i}`, `hello ${i}`);
    await sleep(2000); // what can arrive has arrived by now
    const r = await rec(page);
    const got = r.got.filter((g, i) => g.includes(`hello ${i}`)).length;
    assert.ok(r.opened.length <= 6, `opened ${r.opened.length}`);
    assert.ok(got <= 6 && got >= 5, `received on ${got} of ${N}`);
  });
});
