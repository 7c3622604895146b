// The feed example (examples/feed) in Chromium: its page runs on sluice's
// JS client (clients/js, served by the app as /sluice.js).  Covers: the
// page subscribes over SSE and shows the timer's messages in order; after
// its connection is cut (lib.mjs's CutProxy) the client reconnects by
// itself, resumes from the last ID it showed (Last-Event-ID on the new
// request), and the page goes on with no message lost or shown twice.
// Behind a real nginx (nginx.mjs) the client in the browser falls back:
// WebSocket refused by the proxy -> SSE; SSE buffered by it -> long-poll.
// Every wait is bounded.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { CutProxy, launchChromium, SOURCE_DIR, startServer } from './lib.mjs';
import { Nginx, haveNginx } from './nginx.mjs';

const WAIT = 15000;

let srv;
let browser;

before(async () => {
  process.env.FEED_INTERVAL = '0.1'; // ten messages a second: the test is short
  srv = await startServer(null, { app: path.join(SOURCE_DIR, 'examples', 'feed', 'app.lua') });
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await srv?.kill();
});

// The messages the page shows, oldest first: [{id, n}].
function shown(page) {
  return page.evaluate(() => [...document.querySelectorAll('#log li.msg')].reverse().map((li) => {
    const text = li.textContent;
    return { id: text.split('#').pop(), n: JSON.parse(text.slice(text.indexOf('{'), text.lastIndexOf('}') + 1)).n };
  }));
}

async function waitCount(page, n) {
  await page.waitForFunction((want) => document.querySelectorAll('#log li.msg').length >= want, n,
    { timeout: WAIT });
  return shown(page);
}

test('the page follows the feed through the JS client and resumes after a cut', async (t) => {
  const proxy = await CutProxy.open(t, srv.port);
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const res = await page.goto(proxy.url('/'), { timeout: WAIT });
  assert.equal(res.status(), 200);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected (sse)',
    null, { timeout: WAIT });
  const before = await waitCount(page, 5);

  proxy.cut();
  await page.waitForFunction(() => document.getElementById('status').textContent === 'reconnecting',
    null, { timeout: WAIT });
  const all = await waitCount(page, before.length + 10);
  assert.deepEqual(errors, [], 'no script errors on the page');

  // In order, consecutive, each once: nothing lost or repeated across the cut.
  const ns = all.map((m) => m.n);
  assert.deepEqual(ns, ns.map((_, i) => ns[0] + i), `consecutive: ${ns}`);
  assert.equal(new Set(all.map((m) => m.id)).size, all.length, 'every ID once');
  // The second subscribe request resumed from the last ID the page showed.
  const feeds = proxy.heads.filter((h) => /^GET \/feed/.test(h));
  assert.ok(feeds.length >= 2, feeds.join('\n---\n'));
  assert.match(feeds[1], /last-event-id: [0-9a-z]+-\d+/i);
});

// In the page (served through `base`): the client subscribes to the feed
// with every transport in order; resolves with the transport it opened on,
// the transports given up before, and the n of the first 5 messages.
async function subscribeInPage(t, base, options) {
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  assert.equal((await page.goto(base, { timeout: WAIT })).status(), 200);
  return page.evaluate(async (o) => {
    const { Sluice } = await import('/sluice.js');
    const failed = [];
    const ns = [];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no messages: ${failed}`)), 20000);
      const sub = new Sluice().subscribe('feed.ticks', { url: '/feed', ...o });
      let opened = null;
      sub.on('error', (e) => { if (!opened) failed.push(e.transport); });
      sub.on('open', (e) => { opened = opened || e.transport; });
      sub.on('message', (m) => {
        ns.push(JSON.parse(m.data).n);
        if (ns.length === 5) {
          clearTimeout(timer);
          sub.close();
          resolve({ opened, failed, ns });
        }
      });
    });
  }, options);
}

const noNginx = !haveNginx() && 'nginx not installed (dev.sh test_deps: nginx-light)';

test('in the browser, WebSocket refused by nginx -> SSE', { skip: noNginx }, async (t) => {
  const ngx = await Nginx.start(t, srv.port, 'no-upgrade');
  const r = await subscribeInPage(t, ngx.url('/'), { transports: ['websocket', 'sse', 'longpoll'] });
  assert.equal(r.opened, 'sse', JSON.stringify(r));
  assert.deepEqual(r.failed, ['websocket']);
  assert.deepEqual(r.ns, r.ns.map((_, i) => r.ns[0] + i));
});

test('in the browser, SSE buffered by nginx -> long-poll', { skip: noNginx }, async (t) => {
  const ngx = await Nginx.start(t, srv.port, 'buffer-sse');
  const r = await subscribeInPage(t, ngx.url('/'),
    { transports: ['websocket', 'sse', 'longpoll'], sseTimeout: 1500, pollTimeout: 5 });
  assert.equal(r.opened, 'longpoll', JSON.stringify(r));
  assert.deepEqual(r.failed, ['websocket', 'sse']);
  assert.deepEqual(r.ns, r.ns.map((_, i) => r.ns[0] + i));
});
