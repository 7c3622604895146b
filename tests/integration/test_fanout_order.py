"""The publisher's answer follows its message's fan-out: with one worker, by
the time `POST /topics/T` answers, the message has been written to every
subscriber of T (loopback TCP queues written bytes in the reader's socket
before the write returns). A client that publishes one message at a time
therefore never overlaps its next publish with the fan-out of the last.

The check is a zero-timeout select() over all subscriber sockets right
after the answer arrives: each must already be readable. With the answer
written first, the server would still be writing to most of 200
subscribers when the client looks."""

import os
import select
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, build_request

SUBSCRIBERS = 200
MESSAGES = 5


class FanoutOrderTest(SluiceTestCase):
    def subscribe_sse(self, srv, topic):
        c = self.conn(srv)
        c.send(build_request("GET", "/topics/" + topic, [("Accept", "text/event-stream")]))
        _, status, _, _, raw = c.read_head()
        self.assertEqual(status, 200, raw)
        return c

    def test_answer_after_local_fanout(self):
        srv = self.start(args=("-w", "1"))
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


if __name__ == "__main__":
    unittest.main()
