"""Event names (docs/protocol.md, "Topics and event names"): 1 to 128 bytes
of valid UTF-8 without control characters.  One check, in the hub, on every
path a name can take: an HTTP publish (400), sluice.publish (nil, err), a
WebSocket client's message published by the app, an on_publish transform,
a filter (the message is not delivered to that subscriber).  What is
refused is counted in sluice_invalid_events_total{source=...} and logged at
most once per 10 s per source.

Why: `?event=%FF` used to be stored, and then every client that read it
broke (a WebSocket text frame that is not UTF-8 fails the connection; a
JSON parser refuses it) on every resume until retention dropped it."""

import json
import os
import re
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app
from test_lua_api import WS, SSE, http, poll

# Percent-encoded names a client could send, each refused.
BAD = {
    "not UTF-8": "%FF",
    "lone continuation byte": "a%80b",
    "overlong NUL": "%C0%80",
    "surrogate": "%ED%A0%80",
    "NUL": "a%00b",
    "CR": "a%0Db",
    "tab": "a%09b",
    "escape": "%1B%5B31m",
    "DEL": "a%7Fb",
    "C1 NEL": "a%C2%85b",
    "C1 CSI": "%C2%9B",
    "too long": "e" * 129,
    "reserved suffix": "x.base64",
}
GOOD = {"ascii": "greet", "UTF-8": "caf%C3%A9", "emoji": "%F0%9F%8E%89", "NBSP": "a%C2%A0b",
        "128 bytes": "e" * 128, "spaces": "a%20b"}


def invalid_events(server):
    body = http(server, "GET", "/metrics").text
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'^sluice_invalid_events_total\{source="(\w+)"\} (\d+)$', body, re.M)}


class DefaultAppEventTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start()

    def test_bad_names_400_and_not_stored(self):
        for what, name in BAD.items():
            with self.subTest(what):
                r = http(self.s, "POST", "/topics/ev?event=" + name, b"x")
                self.assertJsonError(r, 400)
                self.assertEqual(r.json()["error"], "bad event name")
        r = http(self.s, "GET", "/topics/ev?since=0-0&timeout=0")
        self.assertEqual(r.json()["messages"], [])

    def test_good_names_reach_every_transport(self):
        ws = WS.connect(self, self.s, "/topics/ev2?format=json")
        raw = WS.connect(self, self.s, "/topics/ev2")
        sse = SSE.connect(self, self.s, "/topics/ev2")
        ids = []
        for what, name in GOOD.items():
            r = http(self.s, "POST", "/topics/ev2?event=" + name, what.encode())
            self.assertEqual(r.status, 200, (what, r))
            ids.append(r.json()["id"])
        want = [urllib.parse.unquote(n) for n in GOOD.values()]
        got = [ws.recv_json() for _ in GOOD]
        self.assertEqual([m["event"] for m in got], want)
        self.assertEqual([raw.recv_text() for _ in GOOD], list(GOOD))
        self.assertEqual([sse.next_event()["event"] for _ in GOOD], want)
        r = http(self.s, "GET", "/topics/ev2?since=0-0&timeout=0")
        self.assertEqual([m["event"] for m in r.json()["messages"]], want)


class AppEventTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(app("events.lua"))

    def test_valid_event(self):
        for name in BAD.values():
            self.assertEqual(http(self.s, "GET", "/valid_event?name=" + name).body, b"false", name)
        for name in GOOD.values():
            self.assertEqual(http(self.s, "GET", "/valid_event?name=" + name).body, b"true", name)
        self.assertEqual(http(self.s, "GET", "/valid_event").body, b"false")

    def test_publish_returns_nil_err(self):
        before = invalid_events(self.s).get("publish", 0)
        for what, name in BAD.items():
            with self.subTest(what):
                r = http(self.s, "POST", "/pub/t1?event=" + name, b"x")
                self.assertEqual((r.status, r.json()), (400, {"err": "invalid event name"}), r)
        self.assertEqual(poll(self.s, "t1")["messages"], [])
        self.assertEqual(invalid_events(self.s)["publish"], before + len(BAD))
        # logged, but not once per refusal
        lines = self.s.find_logs(r"invalid event name .*source=publish")
        self.assertTrue(1 <= len(lines) <= 2, lines)
        self.assertIn("topic=t1", lines[0])

    def test_websocket_client_message(self):
        sub = WS.connect(self, self.s, "/sub/wsev?format=json")
        pub = WS.connect(self, self.s, "/sub/wsev")
        pub.send_binary(b"\xff\xfe|payload")
        self.assertEqual(pub.recv_text(), "refused: invalid event name")
        pub.send_text("fine|payload2")
        m = sub.recv_json()
        self.assertEqual((m["event"], m["data"]), ("fine", "payload2"))
        self.assertEqual(invalid_events(self.s)["publish"], 1)

    def test_on_publish_sets_bad_event(self):
        for what, name in BAD.items():
            with self.subTest(what):
                r = http(self.s, "POST", "/pub/op.a", ("ev:" + name).encode())
                self.assertEqual(r.status, 400, r)
                self.assertEqual(r.json(), {"err": "on_publish returned an invalid event name"})
        r = http(self.s, "POST", "/pub/op.a", b"ev:ok")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([m["event"] for m in poll(self.s, "op.a")["messages"]], ["ok"])
        self.assertEqual(invalid_events(self.s)["on_publish"], len(BAD))
        self.assertTrue(self.s.find_logs(r"warn invalid event name .*source=on_publish"),
                        self.s.log_text())

    def test_filter_sets_bad_event(self):
        filtered = WS.connect(self, self.s, "/sub/fl?format=json&filter=1")
        plain = WS.connect(self, self.s, "/sub/fl?format=json")
        for name in ("%FF", "a%0Ab", "%C2%85"):
            r = http(self.s, "POST", "/pub/fl", ("fev:" + name).encode())
            self.assertEqual(r.status, 200, r)
            # the unfiltered subscriber gets the message as published
            self.assertEqual(plain.recv_json()["data"], "fev:" + name)
        r = http(self.s, "POST", "/pub/fl", b"fev:good")
        m = filtered.recv_json()  # the three before it were not delivered to it
        self.assertEqual((m["event"], m["data"]), ("good", "fev:good"))
        self.assertEqual(invalid_events(self.s)["filter"], 3)
        lines = self.s.find_logs(r"warn invalid event name .*source=filter")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("topic=fl", lines[0])


if __name__ == "__main__":
    unittest.main()
