"""The publisher's answer follows its message's fan-out when that fan-out is
large: with one worker and 200 subscribers, by the time `POST /topics/T`
answers, the message has been written to every subscriber of T (loopback
TCP queues written bytes in the reader's socket before the write returns).
A client that publishes one message at a time therefore never overlaps its
next publish with the fan-out of the last. (A fan-out to a few subscribers,
16 at most, is answered first instead: it is written before the next
publish could arrive, and answering first spares the loop a sleep.)

The check is a zero-timeout select() over all subscriber sockets right
after the answer arrives: each must already be readable. With the answer
written first, the server would still be writing to most of 200
subscribers when the client looks.

With several publishes in flight on a worker, their answers go first and
their fan-outs after (so the publishers' next messages reach the next group
commit sooner). Which order the server picked is timing, not behaviour; the
burst tests check what must hold either way: every publish answered with
its ID, every subscriber given every message once, in ID order.

All of it holds with relaxed durability too, where the worker commits its
own publishes at the end of its loop pass instead of handing them to the
writer thread (RelaxedFanoutOrderTest)."""

import os
import re
import select
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app, build_request

SUBSCRIBERS = 200
MESSAGES = 5
PUBLISHERS = 16
ROUNDS = 10
BURST_SUBSCRIBERS = 20
EVENT = re.compile(rb"id: ([^\n]+)\ndata: ([^\n]*)\n\n")


class FanoutOrderTest(SluiceTestCase):
    PLAIN_APP = None  # the default app
    LUA_APP = app("fanout_app.lua")

    def subscribe_sse(self, srv, topic):
        c = self.conn(srv)
        c.send(build_request("GET", "/topics/" + topic, [("Accept", "text/event-stream")]))
        _, status, _, _, raw = c.read_head()
        self.assertEqual(status, 200, raw)
        return c

    def test_answer_after_local_fanout(self):
        srv = self.start(self.PLAIN_APP, args=("-w", "1"))
        subs = [self.subscribe_sse(srv, "order") for _ in range(SUBSCRIBERS)]
        pub = self.conn(srv)
        # Each subscriber is registered once a message published now reaches
        # it: publish one and read it everywhere (bounded by the read timeout).
        self.assertEqual(pub.request("POST", "/topics/order", body=b"warm-up").status, 200)
        for c in subs:
            c.read_until(b"data: warm-up\n\n")
            self.assertEqual(len(c.buf), 0)
        for i in range(MESSAGES):
            r = pub.request("POST", "/topics/order", body=b"m%d" % i)
            self.assertEqual(r.status, 200, r)
            readable, _, _ = select.select([c.sock for c in subs], [], [], 0)
            self.assertEqual(len(readable), SUBSCRIBERS,
                             "message %d: %d of %d subscribers had it when the publish was answered"
                             % (i, len(readable), SUBSCRIBERS))
            for c in subs:
                event = c.read_until(b"\n\n")
                self.assertIn(b"data: m%d\n" % i, event)

    def burst(self, path, app_file=None):
        """ROUNDS times, PUBLISHERS connections each send one POST to path
        before any answer is read. Every subscriber must get every message
        once, with the ID its publish was answered with, all subscribers in
        the same order, and each round before the next (whose publishes
        were sent after the round was answered)."""
        srv = self.start(app_file, args=("-w", "1"))
        subs = [self.subscribe_sse(srv, "burst") for _ in range(BURST_SUBSCRIBERS)]
        pubs = [self.conn(srv) for _ in range(PUBLISHERS)]
        self.assertEqual(pubs[0].request("POST", path, body=b"warm-up").status, 200)
        for c in subs:
            c.read_until(b"data: warm-up\n\n")
        answered = {}
        for r in range(ROUNDS):
            bodies = [b"r%d-p%d" % (r, i) for i in range(PUBLISHERS)]
            for c, body in zip(pubs, bodies):
                c.send(build_request("POST", path, body=body))
            for c, body in zip(pubs, bodies):
                resp = c.read_response()
                self.assertEqual(resp.status, 200, resp)
                answered[body] = resp.json()["id"].encode()
        self.assertEqual(len(set(answered.values())), len(answered), answered)
        first = None
        for n, c in enumerate(subs):
            got = []
            while len(got) < len(answered):
                event = c.read_until(b"\n\n")
                m = EVENT.match(event)
                self.assertIsNotNone(m, event)
                got.append((m.group(2), m.group(1)))
            self.assertEqual(dict(got), answered, "subscriber %d" % n)
            rounds = [int(body.split(b"-")[0][1:]) for body, _ in got]
            self.assertEqual(rounds, sorted(rounds), "subscriber %d" % n)
            first = first or got
            self.assertEqual(got, first, "subscriber %d" % n)

    def test_burst_of_publishes(self):
        self.burst("/topics/burst", self.PLAIN_APP)

    def test_burst_of_lua_publishes(self):
        self.burst("/lua/burst", self.LUA_APP)


class RelaxedFanoutOrderTest(FanoutOrderTest):
    PLAIN_APP = LUA_APP = app("fanout_relaxed.lua")


if __name__ == "__main__":
    unittest.main()
