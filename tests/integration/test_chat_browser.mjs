// The chat example (examples/chat) in a real browser: Debian's Chromium,
// headless, driven by playwright-core.  sluice serves the page itself
// (GET /); each browser context is one user with its own sessionStorage.
// Covers: two users in one room talking through the page's UI (log in,
// type, send, the other page shows it, and back), the recent history a
// late joiner sees, the page's reconnect after its connection is cut (it
// resumes with ?last_event_id= and shows what it missed exactly once,
// through lib.mjs's CutProxy), a token that opens its own room only, the
// page renewing its token when the server closes its socket at expiry
// (4001) and resuming without a loss or a duplicate, and the server's
// refusal of a too long message shown on the page.
//
// Why it is shaped so: the test only uses what a user has (the form, the
// button, the list of messages), so it checks the page and the server
// together, the way the example is meant to be used.  Every wait is
// bounded.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CutProxy, launchChromium, request, SOURCE_DIR, startServer } from './lib.mjs';

const WAIT = 15000;

let srv;
let browser;

before(async () => {
  srv = await startServer(null, { app: path.join(SOURCE_DIR, 'examples', 'chat', 'app.lua') });
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await srv?.kill();
});

let roomSeq = 0;
const newRoom = () => `r${process.pid}x${++roomSeq}`;

// A fresh browser context (one user) with the chat page of `base` open.
async function openChat(t, base = srv.url('/')) {
  const context = await browser.newContext();
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  t.after(() => assert.deepEqual(errors, [], 'no script errors on the page'));
  const res = await page.goto(base, { timeout: WAIT });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-type'], /text\/html/);
  return page;
}

async function join(page, name, room) {
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join');
  await waitStatus(page, 'connected');
}

function waitStatus(page, s) {
  return page.waitForFunction((want) => document.getElementById('status').textContent === want, s,
    { timeout: WAIT });
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

// [[from, text], ...] of the chat lines the page shows.
function shown(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages li.message')].map((li) => [
    li.querySelector('.from').textContent, li.querySelector('.text').textContent]));
}

async function waitShown(page, n) {
  await page.waitForFunction((k) => document.querySelectorAll('#messages li.message').length >= k, n,
    { timeout: WAIT });
  return shown(page);
}

describe('chat page in Chromium', () => {
  test('two users in one room talk through the page', async (t) => {
    const room = newRoom();
    const alice = await openChat(t);
    const bob = await openChat(t);
    await join(alice, 'alice', room);
    await join(bob, 'bob', room);

    await say(alice, 'hello bob, from the browser ✓');
    assert.deepEqual(await waitShown(bob, 1), [['alice', 'hello bob, from the browser ✓']]);
    await say(bob, 'hi alice <b>not bold</b>');
    const want = [['alice', 'hello bob, from the browser ✓'], ['bob', 'hi alice <b>not bold</b>']];
    assert.deepEqual(await waitShown(alice, 2), want);
    assert.deepEqual(await waitShown(bob, 2), want);
    // text is shown as text, never as markup
    assert.equal(await alice.locator('#messages b').count(), 0);
    assert.equal(await alice.inputValue('#text'), '', 'the input is cleared after sending');
  });

  test('a late joiner sees the recent history; other rooms stay apart', async (t) => {
    const room = newRoom();
    const other = newRoom();
    const alice = await openChat(t);
    await join(alice, 'alice', room);
    await say(alice, 'one');
    await say(alice, 'two');
    await waitShown(alice, 2);
    const elsewhere = await openChat(t);
    await join(elsewhere, 'dora', other);
    await say(elsewhere, 'in the other room');
    await waitShown(elsewhere, 1);

    const carol = await openChat(t);
    await join(carol, 'carol', room);
    assert.deepEqual(await waitShown(carol, 2), [['alice', 'one'], ['alice', 'two']]);
    await say(carol, 'three');
    assert.deepEqual(await waitShown(alice, 3), [['alice', 'one'], ['alice', 'two'], ['carol', 'three']]);
    assert.deepEqual(await shown(elsewhere), [['dora', 'in the other room']]);
  });

  test('after a cut the page reconnects and shows what it missed, once', async (t) => {
    const room = newRoom();
    const proxy = await CutProxy.open(t, srv.port);
    const alice = await openChat(t);
    const bob = await openChat(t, proxy.url('/'));
    await join(alice, 'alice', room);
    await join(bob, 'bob', room);
    await say(alice, 'before the cut');
    await waitShown(bob, 1);

    proxy.cut();
    await waitStatus(bob, 'reconnecting');
    await say(alice, 'while bob was away');
    await waitStatus(bob, 'connected'); // the page retries after 2 s
    await say(alice, 'after the reconnect');
    assert.deepEqual(await waitShown(bob, 3), [
      ['alice', 'before the cut'], ['alice', 'while bob was away'], ['alice', 'after the reconnect']]);
    // it resumed from the last ID it had seen
    const resumed = proxy.heads.filter((h) => /^GET \/rooms\//.test(h));
    assert.equal(resumed.length, 2, resumed.join('\n---\n'));
    assert.match(resumed[1], /last_event_id=[0-9a-z]+-\d+/);
    // nothing shown twice, and nothing of the cut shown as an error
    assert.deepEqual(await shown(bob), [
      ['alice', 'before the cut'], ['alice', 'while bob was away'], ['alice', 'after the reconnect']]);
    assert.equal(await bob.locator('#messages li.error').count(), 0);
  });

  test('a token opens one room only', async (t) => {
    const page = await openChat(t);
    // what the page's login gives: a token for the room asked for
    const status = await page.evaluate(async () => {
      const r = await fetch('/login', { method: 'POST', body: JSON.stringify({ name: 'eve', room: 'mine' }) });
      const { token } = await r.json();
      const own = await fetch(`/rooms/mine?token=${token}&timeout=0`);
      const other = await fetch(`/rooms/theirs?token=${token}&timeout=0`);
      const post = await fetch('/rooms/theirs/messages',
        { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: 'hi' });
      return [own.status, other.status, post.status];
    });
    assert.deepEqual(status, [200, 403, 403]);
  });

  test('when its token expires the page gets a new one and goes on, missing nothing', async (t) => {
    // A server whose tokens last 2 s: the socket is closed with 4001 at
    // expiry and the page logs in again and resumes.
    process.env.CHAT_TOKEN_TTL = '2';
    let short;
    try {
      short = await startServer(t, { app: path.join(SOURCE_DIR, 'examples', 'chat', 'app.lua') });
    } finally {
      delete process.env.CHAT_TOKEN_TTL;
    }
    const room = newRoom();
    // alice posts over HTTP, with a fresh token each time (hers expire too)
    const post = async (text) => {
      const login = await request(short.url('/login'),
        { method: 'POST', body: JSON.stringify({ name: 'alice', room }) });
      const { token } = JSON.parse(login.body);
      const r = await request(short.url(`/rooms/${room}/messages`),
        { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: text });
      assert.equal(r.status, 200, r.body.toString());
    };
    const proxy = await CutProxy.open(t, short.port);
    const bob = await openChat(t, proxy.url('/'));
    await join(bob, 'bob', room);
    await post('first');
    await waitShown(bob, 1);
    // bob's socket expires (about 2 s after it opened) and is opened again
    // with a new token, resuming from the last ID; alice talks meanwhile
    const opens = () => proxy.heads.filter((h) => /^GET \/rooms\//.test(h));
    const deadline = Date.now() + WAIT;
    const want = [['alice', 'first']];
    while (opens().length < 3 && Date.now() < deadline) {
      const text = `during ${want.length}`;
      await post(text);
      want.push(['alice', text]);
      await new Promise((r) => setTimeout(r, 150));
    }
    assert.ok(opens().length >= 3, `bob's page reopened its socket: ${opens().length}`);
    await post('last');
    want.push(['alice', 'last']);
    assert.deepEqual(await waitShown(bob, want.length), want);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await shown(bob), want, 'nothing twice');
    const [first, second] = opens();
    const token = (h) => /token=([^&\s]+)/.exec(h)[1];
    assert.notEqual(token(first), token(second), 'a new token for the new socket');
    assert.match(second, /last_event_id=[0-9a-z]+-\d+/);
    assert.equal(await bob.locator('#messages li.error').count(), 0);
    assert.ok(short.logText().includes('status=101'));
  });

  test('the server refuses a too long message and the page says so', async (t) => {
    const room = newRoom();
    const alice = await openChat(t);
    const bob = await openChat(t);
    await join(alice, 'alice', room);
    await join(bob, 'bob', room);
    // the input's maxlength stops typing, not a script: set the value directly
    await alice.evaluate(() => {
      document.getElementById('text').value = 'x'.repeat(501);
    });
    await alice.click('#send');
    await alice.waitForFunction(() => /too long/.test(document.querySelector('#messages li.error')?.textContent || ''),
      null, { timeout: WAIT });
    await say(alice, 'short enough');
    assert.deepEqual(await waitShown(bob, 1), [['alice', 'short enough']]);
    // alice's page shows her own message when it comes back from the
    // server, which can be after bob's (a loaded machine): wait for it too
    assert.deepEqual(await waitShown(alice, 1), [['alice', 'short enough']]);
  });
});
