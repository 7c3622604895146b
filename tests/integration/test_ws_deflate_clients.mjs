// permessage-deflate (RFC 7692) with real clients that compress: npm's ws
// (perMessageDeflate on, threshold 0 so that it compresses everything it
// sends) and Chromium (which offers the extension on every WebSocket).
// Both get the server's compressed frames (the negotiated extension is
// checked, and /metrics shows the compressed forms built), send
// compressed messages that the server inflates and publishes, and a zip
// bomb from ws gets 1009.  The frames' RSV1 bit is checked byte by byte in
// test_ws_deflate.py.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { deflateRoundTrip, launchChromium, openDeflateWs, metric as metricOf, WsClient, app, publish, startServer } from './lib.mjs';


let srv;
before(async () => {
  srv = await startServer(null, { app: app('browser_app.lua') });
});
after(async () => {
  await srv?.kill();
});

let seq = 0;
const topic = () => `dfl.${process.pid}.${++seq}`;

const metric = (name) => metricOf(srv, name);

const json4k = () => JSON.stringify({ items: Array.from({ length: 60 }, (_, i) => ({ id: i, name: `item ${i}`, tags: ['a', 'b'] })) }).slice(0, 4096);

describe('ws (npm) with perMessageDeflate', () => {
  test('negotiates, receives and sends compressed messages', async (t) => {
    const tp = topic();
    const c = await WsClient.open(srv.wsUrl(`/topics/${tp}`), { perMessageDeflate: { threshold: 0 } });
    t.after(() => c.terminate());
    assert.match(c.ws.extensions, /permessage-deflate/);
    const before = await metric('sluice_ws_deflate_messages_total{kind="compressed"}');
    const inflatedBefore = await metric('sluice_ws_deflate_messages_total{kind="inflated"}');
    const body = json4k();
    await publish(srv, tp, body);
    await c.waitMessages(1, 10000);
    assert.equal(c.messages[0].data.toString(), body);
    assert.ok(await metric('sluice_ws_deflate_messages_total{kind="compressed"}') > before);
    // What it sends (compressed by ws) comes back through the topic.
    for (let i = 0; i < 5; i++) await c.send(`${body}#${i}`);
    await c.waitMessages(6, 10000);
    assert.deepEqual(c.texts().slice(1), [0, 1, 2, 3, 4].map((i) => `${body}#${i}`));
    assert.ok(await metric('sluice_ws_deflate_messages_total{kind="inflated"}') >= inflatedBefore + 5);
  });

  test('a zip bomb past limits.max_ws_message gets 1009; another client goes on', async (t) => {
    const tp = topic();
    const other = await WsClient.open(srv.wsUrl(`/topics/${tp}`), { perMessageDeflate: true });
    t.after(() => other.terminate());
    const c = await WsClient.open(srv.wsUrl(`/topics/${tp}.bomb`), { perMessageDeflate: { threshold: 0 } });
    t.after(() => c.terminate());
    c.send(Buffer.alloc(8 * 1024 * 1024)).catch(() => {}); // 8 MiB of zeros: about 8 KiB on the wire
    const ci = await c.waitClose(15000);
    assert.equal(ci.code, 1009);
    await publish(srv, tp, 'still served');
    await other.waitMessages(1, 10000);
    assert.equal(other.texts()[0], 'still served');
  });
});

describe('Chromium', () => {
  let browser;
  before(async () => {
    browser = await launchChromium();
  });
  after(async () => {
    if (browser) await browser.close().catch(() => {});
  });

  test('negotiates permessage-deflate and gets compressed frames both ways', async (t) => {
    const tp = topic();
    const context = await browser.newContext();
    t.after(() => context.close().catch(() => {}));
    const page = await context.newPage();
    await page.goto(srv.url(`/page?topic=${tp}.page`));
    const ext = await openDeflateWs(page, srv.wsUrl(`/topics/${tp}`));
    assert.match(ext, /permessage-deflate/);
    // Chromium compresses what it sends: inflated, published, back to it.
    await deflateRoundTrip(page, srv, tp, json4k());
  });
});
