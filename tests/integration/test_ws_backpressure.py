"""A WebSocket client that publishes faster than storage commits (issue 25,
item 16): nothing it sends may be lost silently.  The server stops reading
such a client while SUB_MAX_PUBLISHING of its publishes wait for a commit,
so every message is published, in order.  On the code before, 150,000
messages sent gave about 120,000 published, with no close, no log line and
no counter.  The app (apps/small_queue.lua) keeps at most 100 publishes
waiting for storage, so the flood overfills it even on a fast disk; a
second case runs the default app with its default queue and several
clients at once.

The default app echoes a client's messages back to it (it is a subscriber
of the topic it publishes to), so the test counts what comes back, in
order, while it sends; /metrics must agree.
"""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app
from test_lifetimes import upgrade_request
from test_ws_protocol import OP_TEXT, frame

COUNT = int(os.environ.get("SLUICE_BACKPRESSURE_COUNT", "50000"))


def metric(server, name):
    with server.conn() as c:
        r = c.get("/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


class Reader(threading.Thread):
    """Reads the server's frames, checks they are m0, m1, ... in order."""

    def __init__(self, sock, count):
        super().__init__(daemon=True)
        self.sock, self.count = sock, count
        self.got, self.error, self.closed = 0, None, None

    def run(self):
        buf = bytearray()
        try:
            while self.got < self.count:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.error = "connection closed after %d" % self.got
                    return
                buf += chunk
                while len(buf) >= 2:
                    op, n, h = buf[0] & 0x0F, buf[1] & 0x7F, 2
                    if n == 126:
                        if len(buf) < 4:
                            break
                        n, h = struct.unpack("!H", buf[2:4])[0], 4
                    if len(buf) < h + n:
                        break
                    payload = bytes(buf[h:h + n])
                    del buf[:h + n]
                    if op == 8:
                        self.closed = payload
                        self.error = "close frame %r after %d" % (payload, self.got)
                        return
                    if op != OP_TEXT:
                        continue
                    want = b"m%d" % self.got
                    if payload != want:
                        self.error = "got %r, expected %r" % (payload, want)
                        return
                    self.got += 1
        except OSError as e:
            self.error = "read failed after %d: %s" % (self.got, e)


class BackpressureTest(SluiceTestCase):
    def test_fast_publisher_loses_nothing(self):
        self.flood(self.start(app=app("small_queue.lua")), "fast")

    def test_several_fast_publishers_default_queue(self):
        s = self.start()
        errors = []

        def flood(topic):
            try:
                self.flood(s, topic)
            except Exception as e:  # reported below, in the test's thread
                errors.append(repr(e))

        threads = [threading.Thread(target=flood, args=("fast%d" % i,), daemon=True)
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        self.assertFalse(any(t.is_alive() for t in threads), "a flood did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(metric(s, "sluice_publish_failures_total"), 0)

    def flood(self, s, topic):
        raw = self.conn(s)
        raw.send(upgrade_request("/topics/" + topic))
        version, status, reason, hdrs, head = raw.read_head()
        self.assertEqual(status, 101, head)
        before = metric(s, "sluice_messages_published_total")
        sock = raw.sock
        sock.settimeout(60)
        reader = Reader(sock, COUNT)
        reader.start()
        batch = []
        for i in range(COUNT):
            batch.append(frame(OP_TEXT, b"m%d" % i))
            if len(batch) == 2000:
                sock.sendall(b"".join(batch))
                batch = []
        if batch:
            sock.sendall(b"".join(batch))
        reader.join(120)
        self.assertIsNone(reader.error, reader.error)
        self.assertEqual(reader.got, COUNT)
        self.assertEqual(metric(s, "sluice_publish_failures_total"), 0)
        self.assertGreaterEqual(metric(s, "sluice_messages_published_total") - before, COUNT)


if __name__ == "__main__":
    unittest.main()
