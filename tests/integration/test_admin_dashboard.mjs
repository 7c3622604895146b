// The admin dashboard in Chromium (playwright-core, Debian's chromium):
// the page served by --admin-listen, behind a token given once on its URL
// (then a cookie), goes live over the admin stats stream through the JS
// client, and under a load (WebSocket and SSE subscribers, a steady stream
// of publishes) its numbers change: the DOM is read twice and compared,
// and a screenshot is saved in the test's temp dir (its path is printed).
// A second part uses the JS client itself in the browser (served by the
// admin listener as /sluice.js) against the public listener.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { launchChromium, publish, sleep, startServer, tmpdir, WsClient } from './lib.mjs';

const TOKEN = 'dash-token-42';

let srv, browser, dir, adminPort;

before(async () => {
  dir = tmpdir();
  fs.writeFileSync(path.join(dir, 'token'), TOKEN + '\n');
  srv = await startServer(null, { args: ['-w', '2', '--admin-listen', '127.0.0.1:0', '--admin-token-file', path.join(dir, 'token')] });
  const line = await srv.waitLog(/admin listening on/);
  adminPort = Number(/admin listening on [0-9.]+:(\d+)/.exec(line)[1]);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await srv?.kill();
});

async function openPage(t, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const res = await page.goto(url, { timeout: 15000 });
  return { page, res, errors };
}

const text = (page, id) => page.evaluate((x) => document.getElementById(x).textContent, id);

describe('admin dashboard in Chromium', () => {
  test('without the token: 401', async (t) => {
    const { res } = await openPage(t, `http://127.0.0.1:${adminPort}/`);
    assert.equal(res.status(), 401);
  });

  test('live numbers change under a load; screenshot', async (t) => {
    const { page, res, errors } = await openPage(t, `http://127.0.0.1:${adminPort}/?token=${TOKEN}`);
    assert.equal(res.status(), 200);
    await page.waitForFunction(() => document.getElementById('link').textContent === 'live', null, { timeout: 15000 });
    await page.waitForFunction(() => document.getElementById('conn-total').textContent !== '–', null, { timeout: 15000 });
    const before0 = { conns: await text(page, 'conn-websocket'), published: await text(page, 'published') };

    // The load: 8 WebSocket and 4 SSE subscribers, publishes for ~5 s.
    const tp = `dash.load.${process.pid}`;
    const wss = [];
    for (let i = 0; i < 8; i++) wss.push(await WsClient.open(srv.wsUrl(`/topics/${tp}`)));
    t.after(() => wss.forEach((w) => w.terminate()));
    const sse = [];
    for (let i = 0; i < 4; i++) {
      const ctl = new AbortController();
      const r = await fetch(srv.url(`/topics/${tp}.sse`), { headers: { accept: 'text/event-stream' }, signal: ctl.signal });
      r.body.getReader().read().catch(() => {});
      sse.push(ctl);
    }
    t.after(() => sse.forEach((c) => c.abort()));
    let stop = false;
    let sent = 0;
    const load = (async () => {
      while (!stop) {
        await publish(srv, tp, `m${sent++}`);
        await sleep(20);
      }
    })();
    t.after(async () => { stop = true; await load; });

    await page.waitForFunction(() => Number(document.getElementById('conn-websocket').textContent) >= 8, null, { timeout: 15000 });
    await page.waitForFunction(() => parseFloat(document.getElementById('pub-rate').textContent) > 0, null, { timeout: 15000 });
    const a = { published: await text(page, 'published'), delivered: await text(page, 'delivered') };
    await sleep(2500);
    const b = { published: await text(page, 'published'), delivered: await text(page, 'delivered'),
      rate: await text(page, 'pub-rate'), dRate: await text(page, 'del-rate'), ws: await text(page, 'conn-websocket'),
      sse: await text(page, 'conn-sse'), busiest: await page.evaluate(() => document.querySelector('#topics tbody').textContent) };
    assert.notEqual(a.published, b.published, 'publish total moved');
    assert.notEqual(a.delivered, b.delivered, 'delivery total moved');
    assert.notEqual(before0.published, b.published);
    assert.ok(parseFloat(b.rate) > 0, `publish rate ${b.rate}`);
    assert.ok(parseFloat(b.dRate) >= parseFloat(b.rate), `delivery rate ${b.dRate}`);
    assert.equal(Number(b.ws), 8);
    assert.equal(Number(b.sse), 4);
    assert.match(b.busiest, new RegExp(tp.replace(/\./g, '\\.')));
    // The chart has drawn something.
    const painted = await page.evaluate(() => {
      const c = document.getElementById('rates');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
      return n;
    });
    assert.ok(painted > 500, `chart pixels: ${painted}`);
    // The connections table lists them, and closing one works from the page.
    await page.click('#refresh');
    await page.waitForFunction(() => document.querySelectorAll('#connections tbody tr').length >= 12, null, { timeout: 15000 });
    const shot = path.join(tmpdir(), 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 10000);
    console.log(`dashboard screenshot: ${shot} (published ${a.published} -> ${b.published}, ${b.rate}/s)`);
    if (process.env.SLUICE_KEEP_SCREENSHOT) fs.copyFileSync(shot, process.env.SLUICE_KEEP_SCREENSHOT);
    assert.deepEqual(errors, []);
  });

  test('the JS client in the browser: WebSocket, then SSE when WebSocket fails', async (t) => {
    // The client as the admin listener serves it, run in a page of the
    // public listener's origin (the dashboard's CSP allows only its own).
    const src = await (await fetch(`http://127.0.0.1:${adminPort}/sluice.js`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    const { page, errors } = await openPage(t, srv.url('/healthz'));
    const tp = `dash.client.${process.pid}`;
    const pub = srv.url('');
    await page.evaluate(async ({ pub, tp, src }) => {
      const { Sluice } = await import(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
      window.got = { ws: [], sse: [], opens: [] };
      const c = new Sluice(pub, { backoff: { min: 50, max: 200 } });
      c.subscribe(tp).on('message', (m) => window.got.ws.push(m.data)).on('open', (e) => window.got.opens.push(e.transport));
      // A WebSocket URL that cannot connect: the client goes on over SSE.
      c.subscribe(tp, { transports: ['websocket', 'sse'], path: '/nowhere/' }).on('error', () => {});
      const s = c.subscribe(tp, { transports: ['websocket', 'sse'] });
      s.on('open', (e) => window.got.opens.push(e.transport));
      class Refused { constructor() { setTimeout(() => this.onclose?.({ code: 1006 }), 10); } close() {} }
      const c2 = new Sluice(pub, { WebSocket: Refused, backoff: { min: 50, max: 200 } });
      c2.subscribe(tp).on('message', (m) => window.got.sse.push(m.data)).on('open', (e) => window.got.opens.push('c2:' + e.transport));
    }, { pub, tp, src });
    await page.waitForFunction(() => window.got.opens.includes('websocket') && window.got.opens.includes('c2:sse'), null, { timeout: 15000 });
    for (let i = 0; i < 5; i++) await publish(srv, tp, `b${i}`);
    await page.waitForFunction(() => window.got.ws.length >= 5 && window.got.sse.length >= 5, null, { timeout: 15000 });
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(got.ws, ['b0', 'b1', 'b2', 'b3', 'b4']);
    assert.deepEqual(got.sse, ['b0', 'b1', 'b2', 'b3', 'b4']);
    assert.deepEqual(errors.filter((e) => !/WebSocket|nowhere|404/.test(e)), []);
  });
});
