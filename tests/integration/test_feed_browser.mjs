// The feed example (examples/feed) in Chromium: its page runs on sluice's
// JS client (clients/js, served by the app as /sluice.js).  Covers: the
// page subscribes over SSE and shows the timer's messages in order; after
// its connection is cut (lib.mjs's CutProxy) the client reconnects by
// itself, resumes from the last ID it showed (Last-Event-ID on the new
// request), and the page goes on with no message lost or shown twice.
// Every wait is bounded.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { CutProxy, SOURCE_DIR, startServer, waitFor } from './lib.mjs';

const CHROMIUM = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const WAIT = 15000;

let srv;
let browser;

before(async () => {
  await waitFor(() => fs.existsSync(CHROMIUM), 180000, `${CHROMIUM} to be installed`);
  process.env.FEED_INTERVAL = '0.1'; // ten messages a second: the test is short
  srv = await startServer(null, { app: path.join(SOURCE_DIR, 'examples', 'feed', 'app.lua') });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 60000 });
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
