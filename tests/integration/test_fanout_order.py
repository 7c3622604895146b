"""Where a publish's answer falls among the writes of fan-outs.

The server writes output first queued, first written, and a large fan-out
over several loop passes with input read in between. A publish is answered
before its own fan-out but after the output queued before it. So with one
worker and 200 subscribers (more than one pass writes), by the time the
answer to message i arrives, every subscriber already has message i-1
(loopback TCP puts written bytes in the reader's socket before the write
returns): a publisher that sends one message at a time is never more than
one message ahead of the fan-out, and its next message reaches the store
while the last is written.

Long-polls end at their first message. A lone publish to waiting
long-polls is therefore answered after all of them, and a poll answers when
its turn to be written comes, with every message that reached it by then;
the long-poll tests check both, the second with several publishes in
flight so that polls do collect more than one.

With several publishes in flight on a worker, their answers go before
their fan-outs. The burst tests check what must hold whatever the timing:
every publish answered with its ID, every subscriber given every message
once, in ID order.

All of it holds with relaxed durability too, where the worker commits its
own publishes at the end of its loop pass instead of handing them to the
writer thread (RelaxedFanoutOrderTest)."""

import os
import re
import select
import sys
import time
import unittest
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app, build_request

SUBSCRIBERS = 200  # more than one loop pass writes (FLUSH_PER_PASS, 64)
FANOUT_SUBSCRIBERS = 500
FANOUT_MESSAGES = 20
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

    @staticmethod
    def read_now(c):
        """Append what the socket holds right now to c.buf, without waiting."""
        while select.select([c.sock], [], [], 0)[0]:
            data = c.sock.recv(65536)
            if not data:
                return
            c.buf += data

    def test_answer_follows_the_last_fanout(self):
        srv = self.start(self.PLAIN_APP, args=("-w", "1"))
        subs = [self.subscribe_sse(srv, "order") for _ in range(FANOUT_SUBSCRIBERS)]
        pub = self.conn(srv)
        # Each subscriber is registered once a message published now reaches
        # it: publish one and read it everywhere (bounded by the read timeout).
        self.assertEqual(pub.request("POST", "/topics/order", body=b"warm-up").status, 200)
        for c in subs:
            c.read_until(b"data: warm-up\n\n")
            self.assertEqual(len(c.buf), 0)
        # The first subscriber is written last of a fan-out (a topic's
        # newest subscriber comes first).  Looking at it and two others
        # only keeps the client quick enough to send each publish while the
        # last fan-out is still being written.
        looked_at = (subs[0], subs[len(subs) // 2], subs[-1])
        for i in range(FANOUT_MESSAGES):
            r = pub.request("POST", "/topics/order", body=b"m%d" % i)
            self.assertEqual(r.status, 200, r)
            if i == 0:
                continue
            for c in looked_at:
                self.read_now(c)
                self.assertIn(b"data: m%d\n\n" % (i - 1), c.buf,
                              "the answer to message %d came before the fan-out of message "
                              "%d was written" % (i, i - 1))
        for n, c in enumerate(subs):
            got = [c.read_until(b"\n\n") for _ in range(FANOUT_MESSAGES)]
            self.assertEqual([EVENT.match(e).group(2) for e in got],
                             [b"m%d" % i for i in range(FANOUT_MESSAGES)], "subscriber %d" % n)

    def hold_long_polls(self, srv, topic, since):
        """SUBSCRIBERS long-polls on topic from `since`, each held by the
        server when this returns (the metrics count them)."""
        polls = []
        for _ in range(SUBSCRIBERS):
            c = self.conn(srv)
            c.send(build_request("GET", "/topics/%s?since=%s" % (topic, quote(since))))
            polls.append(c)
        probe = self.conn(srv)
        want = 'sluice_connections{transport="longpoll"} %d\n' % SUBSCRIBERS
        for _ in range(200):
            if want in probe.request("GET", "/metrics").body.decode():
                return polls
            time.sleep(0.05)
        self.fail("the server did not hold %d long-polls" % SUBSCRIBERS)

    def test_lone_publish_to_long_polls_is_answered_after_them(self):
        srv = self.start(self.PLAIN_APP, args=("-w", "1"))
        pub = self.conn(srv)
        r = pub.request("POST", "/topics/lp", body=b"warm-up")
        self.assertEqual(r.status, 200, r)
        polls = self.hold_long_polls(srv, "lp", r.json()["id"])
        r = pub.request("POST", "/topics/lp", body=b"m0")
        self.assertEqual(r.status, 200, r)
        readable, _, _ = select.select([c.sock for c in polls], [], [], 0)
        self.assertEqual(len(readable), SUBSCRIBERS,
                         "%d of %d long-polls were answered when the publish was"
                         % (len(readable), SUBSCRIBERS))
        for c in polls:
            answer = c.read_response()
            self.assertEqual(answer.status, 200, answer)
            body = answer.json()
            self.assertEqual([m["data"] for m in body["messages"]], ["m0"], body)
            self.assertEqual(body["last_id"], r.json()["id"])

    def test_long_polls_take_every_message_that_reached_them(self):
        srv = self.start(self.PLAIN_APP, args=("-w", "1"))
        pubs = [self.conn(srv) for _ in range(MESSAGES)]
        r = pubs[0].request("POST", "/topics/lpb", body=b"warm-up")
        self.assertEqual(r.status, 200, r)
        polls = self.hold_long_polls(srv, "lpb", r.json()["id"])
        bodies = [b"m%d" % i for i in range(MESSAGES)]
        for c, body in zip(pubs, bodies):
            c.send(build_request("POST", "/topics/lpb", body=body))
        ids = {}
        for c, body in zip(pubs, bodies):
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            ids[resp.json()["id"]] = body.decode()
        in_order = [ids[i] for i in sorted(ids, key=lambda i: int(i.split("-")[-1]))]
        for n, c in enumerate(polls):
            got = []
            for _ in range(MESSAGES):  # each answer carries at least one
                answer = c.read_response()
                self.assertEqual(answer.status, 200, answer)
                body = answer.json()
                self.assertTrue(body["messages"], body)
                got += [(m["id"], m["data"]) for m in body["messages"]]
                self.assertEqual(body["last_id"], got[-1][0], body)
                if len(got) >= MESSAGES:
                    break
                c.send(build_request("GET", "/topics/lpb?since=" + quote(body["last_id"])))
            self.assertEqual([d for _, d in got], in_order, "poll %d" % n)
            self.assertEqual([ids[i] for i, _ in got], in_order, "poll %d" % n)

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
