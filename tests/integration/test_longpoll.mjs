// Long-polling and short polling (GET /topics/{topic} without Upgrade or
// an event-stream Accept): the JSON answer, waiting until a message comes
// or the timeout passes, since= and last_id paging with limit=, the gap
// flag, base64 for binary, a poll loop that loses and repeats nothing
// while messages are being published, SIGTERM answering waiting polls, and
// the same over TLS (node https with a private CA, and curl --cacert).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import {
  BINARY, app, makeCert, publish, request, sleep, startServer, tmpdir, waitFor, withTimeout,
} from './lib.mjs';

let srv;
let certs;
before(async () => {
  certs = makeCert(tmpdir());
  // sse_app.lua: the default app's routes plus a retention of 3 for small.*
  srv = await startServer(null, { app: app('sse_app.lua'), tls: certs });
});
after(() => srv?.kill());

let topicSeq = 0;
const topic = (p = 't') => `lp.${p}.${process.pid}.${++topicSeq}`;

// GET /topics/{tp}?{query}; returns {status, headers, json}.
async function poll(tp, query = '', opts = {}) {
  const base = opts.https ? srv.httpsUrl('') : srv.url('');
  const r = await request(`${base}/topics/${tp}${query ? `?${query}` : ''}`, { ca: certs.ca, timeout: opts.timeout || 20000 });
  let json = null;
  try {
    json = JSON.parse(r.body.toString());
  } catch {}
  return { status: r.status, headers: r.headers, json, body: r.body };
}

const q = encodeURIComponent;

describe('short poll (timeout=0)', () => {
  test('an empty topic answers at once with no messages and a cursor', async () => {
    const tp = topic();
    const r = await poll(tp, 'timeout=0');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.deepEqual(r.json.messages, []);
    assert.equal(typeof r.json.last_id, 'string');
    assert.equal(r.json.gap, undefined);
    // the cursor is a valid resume point: what comes next is delivered, no gap
    const id = await publish(srv, tp, 'next');
    const r2 = await poll(tp, `timeout=0&since=${q(r.json.last_id)}`);
    assert.deepEqual(r2.json.messages.map((m) => m.id), [id]);
    assert.equal(r2.json.gap, undefined);
    assert.equal(r2.json.last_id, id);
  });

  test('messages after since=, with id, topic, event, data; base64 for binary', async () => {
    const tp = topic();
    const first = await publish(srv, tp, 'zero');
    const id1 = await publish(srv, tp, 'one', { event: 'ev' });
    const id2 = await publish(srv, tp, BINARY);
    const id3 = await publish(srv, tp, 'quote " backslash \\ newline \n tab \t ✓');
    const r = await poll(tp, `timeout=0&since=${q(first)}`);
    assert.equal(r.status, 200);
    const [a, b, c] = r.json.messages;
    assert.equal(r.json.messages.length, 3);
    assert.deepEqual(a, { id: id1, topic: tp, event: 'ev', data: 'one' });
    assert.equal(b.id, id2);
    assert.equal(b.encoding, 'base64');
    assert.deepEqual(Buffer.from(b.data, 'base64'), BINARY);
    assert.equal(c.data, 'quote " backslash \\ newline \n tab \t ✓');
    assert.equal(c.encoding, undefined);
    assert.equal(r.json.last_id, id3);
    assert.equal(r.json.gap, undefined);
  });

  test('without since=, a short poll does not replay the backlog', async () => {
    const tp = topic();
    await publish(srv, tp, 'old');
    const r = await poll(tp, 'timeout=0');
    assert.deepEqual(r.json.messages, []);
  });

  test('limit= pages through the backlog via last_id, nothing lost or repeated', async () => {
    const tp = topic();
    const ids = [];
    for (let i = 0; i < 10; i++) ids.push(await publish(srv, tp, `m${i}`));
    const got = [];
    let since = ids[0];
    for (let round = 0; round < 10; round++) {
      const r = await poll(tp, `timeout=0&limit=3&since=${q(since)}`);
      assert.ok(r.json.messages.length <= 3);
      if (r.json.messages.length === 0) break;
      got.push(...r.json.messages.map((m) => m.id));
      assert.equal(r.json.last_id, r.json.messages.at(-1).id);
      since = r.json.last_id;
    }
    assert.deepEqual(got, ids.slice(1));
  });

  test('an unknown since= answers every retained message with "gap":true', async () => {
    const tp = topic();
    const ids = [await publish(srv, tp, 'a'), await publish(srv, tp, 'b')];
    // well-formed but from elsewhere, malformed, and a seq never issued
    // here.  ("<epoch>-0" is not among them: it means "before everything",
    // an empty store's cursor, see hub_id_parse.)
    for (const bad of ['zzzzzz-1', 'garbage', 'abc-999999999']) {
      const r = await poll(tp, `timeout=0&since=${q(bad)}`);
      assert.equal(r.json.gap, true, bad);
      assert.deepEqual(r.json.messages.map((m) => m.id), ids, bad);
    }
    // a gap on a topic with nothing retained still says so, at once
    const r = await poll(topic(), `timeout=5&since=${q('zzzzzz-1')}`);
    assert.equal(r.json.gap, true);
    assert.deepEqual(r.json.messages, []);
  });

  test('an ID from another server run is unknown: gap', async (t) => {
    const other = await startServer(t, {});
    const foreign = await publish(other, 'x', 'elsewhere');
    assert.equal(await other.stop(), 0);
    const tp = topic();
    const id = await publish(srv, tp, 'here');
    const r = await poll(tp, `timeout=0&since=${q(foreign)}`);
    assert.equal(r.json.gap, true);
    assert.deepEqual(r.json.messages.map((m) => m.id), [id]);
  });

  test('an ID older than the retained backlog: gap, then the retained ones', async () => {
    const tp = `small.${topic()}`; // backlog 3
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push(await publish(srv, tp, `m${i}`));
    const r = await poll(tp, `timeout=0&since=${q(ids[0])}`);
    assert.equal(r.json.gap, true);
    assert.deepEqual(r.json.messages.map((m) => m.id), ids.slice(3));
    const r2 = await poll(tp, `timeout=0&since=${q(ids[2])}`);
    assert.equal(r2.json.gap, undefined, 'nothing after ids[2] was dropped');
    assert.deepEqual(r2.json.messages.map((m) => m.id), ids.slice(3));
  });

  test('bad parameters: 400 with a JSON error', async () => {
    for (const query of ['timeout=abc', 'timeout=-1', 'limit=0', 'limit=x', 'timeout=']) {
      const r = await poll(topic(), query);
      assert.equal(r.status, 400, query);
      assert.ok(r.json && typeof r.json.error === 'string', query);
    }
    const r = await poll('bad%20topic', 'timeout=0');
    assert.equal(r.status, 400);
  });
});

describe('long poll', () => {
  test('waits until a message is published, then answers with it', async () => {
    const tp = topic();
    const since = (await poll(tp, 'timeout=0')).json.last_id;
    let answered = false;
    const p = poll(tp, `timeout=30&since=${q(since)}`, { timeout: 40000 }).then((r) => {
      answered = true;
      return r;
    });
    await sleep(300);
    assert.equal(answered, false, 'the poll waits');
    const id = await publish(srv, tp, 'wake up', { event: 'w' });
    const r = await withTimeout(p, 10000, 'the long-poll answer');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.messages, [{ id, topic: tp, event: 'w', data: 'wake up' }]);
    assert.equal(r.json.last_id, id);
  });

  test('without since= a waiting poll gets what is published after it', async () => {
    const tp = topic();
    await publish(srv, tp, 'before');
    const p = poll(tp, 'timeout=30', { timeout: 40000 });
    await sleep(200);
    const id = await publish(srv, tp, 'after');
    const r = await withTimeout(p, 10000, 'the long-poll answer');
    assert.deepEqual(r.json.messages.map((m) => m.id), [id]);
  });

  test('the timeout passes: an empty answer with the same cursor', async () => {
    const tp = topic();
    const since = await publish(srv, tp, 'x');
    const r = await poll(tp, `timeout=1&since=${q(since)}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.messages, []);
    assert.equal(r.json.last_id, since);
  });

  test('a backlog after since= answers at once even with a long timeout', async () => {
    const tp = topic();
    const a = await publish(srv, tp, 'a');
    const b = await publish(srv, tp, 'b');
    const r = await withTimeout(poll(tp, `timeout=60&since=${q(a)}`), 10000, 'an immediate answer');
    assert.deepEqual(r.json.messages.map((m) => m.id), [b]);
  });

  test('several waiting polls on one topic all get the message', async () => {
    const tp = topic();
    const ps = [0, 1, 2, 3].map(() => poll(tp, 'timeout=30', { timeout: 40000 }));
    await sleep(300);
    const id = await publish(srv, tp, 'fan-out');
    for (const r of await withTimeout(Promise.all(ps), 10000, 'every poll')) {
      assert.deepEqual(r.json.messages.map((m) => m.id), [id]);
    }
  });

  test('a poll loop while messages are published loses and repeats nothing', async () => {
    const tp = topic();
    const N = 150;
    let cursor = (await poll(tp, 'timeout=0')).json.last_id;
    const pub = (async () => {
      for (let i = 0; i < N; i++) await publish(srv, tp, String(i));
    })();
    const got = [];
    const deadline = Date.now() + 60000;
    while (got.length < N && Date.now() < deadline) {
      const r = await poll(tp, `timeout=5&limit=7&since=${q(cursor)}`);
      assert.equal(r.status, 200);
      assert.equal(r.json.gap, undefined);
      got.push(...r.json.messages.map((m) => Number(m.data)));
      cursor = r.json.last_id;
    }
    await withTimeout(pub, 60000, 'publisher');
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i));
  });

  test('SIGTERM answers waiting polls and exits 0', async (t) => {
    const s = await startServer(t, {});
    const p = request(s.url('/topics/waiting?timeout=60'), { timeout: 20000 });
    await sleep(300);
    assert.equal(await s.stop(), 0);
    const r = await withTimeout(p, 10000, 'the answer').catch((e) => e);
    // answered (an empty 200) rather than left hanging
    assert.ok(!(r instanceof Error), `the poll got an answer: ${r}`);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body).messages, []);
  });
});

describe('TLS', () => {
  test('short and long poll over HTTPS with a private CA', async () => {
    const tp = topic();
    const a = await publish(srv, tp, 'a');
    const b = await publish(srv.httpsUrl(''), tp, BINARY, { ca: certs.ca });
    const r = await poll(tp, `timeout=0&since=${q(a)}`, { https: true });
    assert.equal(r.json.messages[0].id, b);
    assert.equal(r.json.messages[0].encoding, 'base64');
    const p = poll(tp, `timeout=30&since=${q(b)}`, { https: true, timeout: 40000 });
    await sleep(200);
    const c = await publish(srv, tp, 'c');
    const r2 = await withTimeout(p, 10000, 'the long-poll answer');
    assert.deepEqual(r2.json.messages.map((m) => m.id), [c]);
  });

  test('curl --cacert long-polls over HTTPS', async () => {
    const tp = topic();
    const a = await publish(srv, tp, 'first');
    const b = await publish(srv, tp, 'second');
    const res = spawnSync('curl', ['-sS', '--max-time', '15', '--cacert', certs.cert,
      srv.httpsUrl(`/topics/${tp}?timeout=5&since=${q(a)}`)], { timeout: 20000 });
    assert.equal(res.status, 0, res.stderr.toString());
    const v = JSON.parse(res.stdout.toString());
    assert.deepEqual(v.messages.map((m) => [m.id, m.data]), [[b, 'second']]);
    const bad = spawnSync('curl', ['-sS', '--max-time', '15', srv.httpsUrl(`/topics/${tp}?timeout=0`)], { timeout: 20000 });
    assert.notEqual(bad.status, 0, 'curl without the CA refuses the certificate');
  });
});

describe('message sizes', () => {
  test('a message of 1 MiB (the maximum) is published and polled intact', async () => {
    const tp = topic();
    const since = (await poll(tp, 'timeout=0')).json.last_id;
    const big = Buffer.alloc(1024 * 1024, 'p');
    const id = await publish(srv, tp, big);
    const r = await poll(tp, `timeout=0&since=${q(since)}`);
    assert.equal(r.json.messages[0].id, id);
    assert.equal(r.json.messages[0].data.length, big.length);
    const over = await request(srv.url(`/topics/${tp}`), { method: 'POST', body: Buffer.alloc(1024 * 1024 + 1, 'p') });
    assert.equal(over.status, 413);
    await waitFor(() => srv.alive(), 1000, 'server alive');
  });
});
