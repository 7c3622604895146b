"""examples/auth-callout, run whole: the example's app and its stand-in
backend (examples/auth-callout/backend.py).  A subscriber the backend
allows gets its stream and the messages; one it refuses gets 403; with the
backend gone or too slow, 503 and the server serves everyone else
meanwhile; join and leave reach the backend as webhooks after the answer.
(The webhook queue's bound and its drops: test_lua_http.py.)"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SOURCE_DIR, SluiceTestCase, build_request, free_port

EXAMPLE = os.path.join(SOURCE_DIR, "examples", "auth-callout")


def start_backend(test):
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(EXAMPLE, "backend.py"), "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    test.addCleanup(p.wait, 10)
    test.addCleanup(p.kill)
    line = p.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not m:
        raise AssertionError("backend did not start: %r" % line)
    return p, "http://127.0.0.1:%s" % m.group(1)


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class AuthCalloutTest(SluiceTestCase):
    def setUp(self):
        self.backend, self.burl = start_backend(self)
        os.environ["AUTH_BACKEND"] = self.burl
        self.addCleanup(os.environ.pop, "AUTH_BACKEND", None)
        self.s = self.start(os.path.join(EXAMPLE, "app.lua"))

    def tearDown(self):
        self.assertStopsCleanly(self.s)  # (ASan: nothing leaked)

    def open_stream(self, topic, user):
        c = self.conn(self.s)
        c.send(build_request("GET", "/topics/" + topic, {"Accept": "text/event-stream",
                                                           "Authorization": "Bearer " + user}))
        return c

    def events(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            ev = get_json(self.burl + "/events")
            if len(ev) >= n or time.monotonic() > deadline:
                return ev
            time.sleep(0.05)

    def test_allowed_subscriber_gets_messages_and_webhooks(self):
        c = self.open_stream("news", "alice")
        head = c.read_until(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        ev = self.events(1)
        self.assertEqual([(e["event"], e["user"], e["topic"]) for e in ev],
                         [("join", "alice", "news")])
        with self.s.conn() as p:
            self.assertEqual(p.request("POST", "/topics/news", body=b"hello").status, 200)
        data = b""
        for _ in range(5):
            data += c.read_until(b"\n\n")
            if b"data: hello" in data:
                break
        self.assertIn(b"data: hello", data)
        c.close()
        ev = self.events(2)
        self.assertEqual([e["event"] for e in ev], ["join", "leave"])

    def test_refused_and_anonymous(self):
        with self.s.conn() as c:
            r = c.get("/topics/news", {"Authorization": "Bearer mallory"})
        self.assertEqual(r.status, 403, r)
        with self.s.conn() as c:
            r = c.get("/topics/private.plans", {"Authorization": "Bearer alice"})
        self.assertEqual(r.status, 403, r)
        with self.s.conn() as c:
            r = c.get("/topics/news")
        self.assertEqual(r.status, 401, r)
        # The admin reads the private topic: a poll answered at once never
        # goes live, so it sends neither join nor leave (before the fix, a
        # join and a leave); a held long-poll sends join, then leave, in
        # that order (one webhook at a time keeps the order).
        with self.s.conn() as c:
            r = c.get("/topics/private.plans?timeout=0", {"Authorization": "Bearer admin"})
        self.assertEqual(r.status, 200, r)
        with self.s.conn() as c:
            r = c.get("/topics/private.plans?timeout=1", {"Authorization": "Bearer admin"})
        self.assertEqual(r.status, 200, r)
        ev = self.events(2)
        self.assertEqual([(e["event"], e["user"]) for e in ev], [("join", "admin"), ("leave", "admin")])

    def test_backend_down_fails_closed(self):
        self.backend.kill()
        self.backend.wait(10)
        with self.s.conn() as c:
            r = c.get("/topics/news", {"Authorization": "Bearer alice"})
        self.assertEqual(r.status, 503, r)
        self.assertIn("authorization unavailable: cannot connect", r.json()["error"])


class SlowBackendTest(SluiceTestCase):
    """A backend that accepts and never answers: the callout times out
    (503) while the server keeps serving everyone else."""

    def setUp(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1024)
        self.addCleanup(self.lsock.close)
        os.environ["AUTH_BACKEND"] = "http://127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.addCleanup(os.environ.pop, "AUTH_BACKEND", None)
        self.s = self.start(os.path.join(EXAMPLE, "app.lua"))

    def test_timeout_then_503_and_others_served(self):
        c = self.conn(self.s)
        t0 = time.monotonic()
        c.send(build_request("GET", "/topics/news", {"Authorization": "Bearer alice"}))
        # Meanwhile another client is served at once.
        with self.s.conn() as p:
            self.assertEqual(p.request("POST", "/topics/news", body=b"x").status, 200)
        self.assertLess(time.monotonic() - t0, 1.5)
        r = c.read_response()
        self.assertEqual(r.status, 503, r)
        self.assertIn("timeout", r.json()["error"])


if __name__ == "__main__":
    unittest.main()
