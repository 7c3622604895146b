// README.md's nginx configuration ("Behind nginx"), read from the README
// and run in a real nginx (Debian's nginx-light) in front of sluice:
// WebSocket goes through (the Upgrade is passed on), an SSE event reaches
// the client as it is published (not held in a buffer), long-polls answer,
// and through each the JS client gets every message once, in order.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import WebSocket from 'ws';
import { Sluice } from '../../clients/js/sluice.js';
import { sleep, startServer, waitFor } from './lib.mjs';
import { Nginx, haveNginx } from './nginx.mjs';

const skip = !haveNginx() && 'nginx not installed (dev.sh test_deps: nginx-light)';

describe('behind nginx, as README.md says', { skip }, () => {
  test('WebSocket, SSE and long-poll through nginx', async (t) => {
    const srv = await startServer(t);
    const ngx = await Nginx.start(t, srv.port, 'readme');
    const c = new Sluice(ngx.url(''), { WebSocket, backoff: { min: 50, max: 500 } });
    const direct = new Sluice(srv.url(''));
    for (const tr of ['websocket', 'sse', 'longpoll']) {
      const tp = `ngx.${tr}.${process.pid}`;
      const sub = c.subscribe(tp, { transports: [tr], sseTimeout: 3000, pollTimeout: 5 });
      t.after(() => sub.close());
      const got = [];
      const opens = [];
      sub.on('message', (m) => got.push({ data: m.data, at: Date.now() }));
      sub.on('open', (e) => opens.push(e.transport));
      await waitFor(() => opens.length, 10000, `${tr} open through nginx`);
      for (let i = 0; i < 10; i++) {
        const sent = Date.now();
        await direct.publish(tp, `${tr}-${i}`);
        // Each message arrives before the next is published: nothing waits
        // in a proxy buffer.
        await waitFor(() => got.length > i, 5000, `${tr} message ${i} through nginx`);
        assert.ok(got[i].at - sent < 3000, `${tr} message ${i} took ${got[i].at - sent} ms`);
      }
      await sleep(200);
      assert.deepEqual(got.map((g) => g.data), Array.from({ length: 10 }, (_, i) => `${tr}-${i}`));
      assert.equal(opens[0], tr, `${tr} itself worked through nginx: ${opens}`);
    }
  });
});
