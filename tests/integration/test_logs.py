"""Logs an operator can use (issue 30 #3): when a stream ends, one line
with its transport, address, topics, duration, bytes and messages sent and
why it ended (the client left, a slow-consumer cut-off, the admin closed
it, the server stopped), in the text form and the JSON form; lines of
every worker carry a timestamp an operator sorts on."""

import base64
import json
import os
import re
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RawConn, SluiceTestCase, app, build_request

ADMIN_RE = re.compile(r"admin listening on ([0-9.]+):(\d+)")


class StreamEndLogTest(SluiceTestCase):
    def sse(self, srv, topic, rcvbuf=None):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect(("127.0.0.1", srv.port))
        c = RawConn(s)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/topics/" + topic, headers={"Accept": "text/event-stream"}))
        self.assertEqual(c.read_head()[1], 200)
        return c

    def publish(self, srv, topic, body):
        with srv.conn() as c:
            r = c.request("POST", "/topics/" + topic, body=body)
        self.assertEqual(r.status, 200, r)

    def ended(self, srv, pred, what):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for line in srv.json_logs():
                if line.get("msg") == "stream ended" and pred(line):
                    return line
            time.sleep(0.05)
        self.fail("no 'stream ended' line for %s:\n%s" % (what, srv.log_text()[-4000:]))

    def test_json_lines(self):
        srv = self.start(app=app("ws_slow_consumer.lua"), log_format="json",
                         args=["-w", "2", "--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        admin = ADMIN_RE.search(srv.log_text())
        # 1. The client leaves after three messages.
        a = self.sse(srv, "log.a")
        for i in range(3):
            self.publish(srv, "log.a", b"message %d" % i)
        a.read_until(b"data: message 2\n\n")
        time.sleep(0.2)
        a_port = a.local_port()
        a.close()
        line = self.ended(srv, lambda l: l.get("remote", "").endswith(":%d" % a_port), "the SSE client")
        self.assertEqual(line["transport"], "sse")
        self.assertEqual(line["topics"], "log.a")
        self.assertEqual(line["messages"], 3)
        self.assertGreater(line["bytes"], 3 * len("data: message 0\n\n"))
        self.assertGreaterEqual(line["duration"], 0.2)
        self.assertEqual(line["reason"], "peer")
        self.assertEqual(line["level"], "info")
        self.assertRegex(line["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

        # 2. Closed through the admin API.
        b = self.sse(srv, "log.b")
        with RawConn.tcp(admin.group(1), int(admin.group(2))) as c:
            conns = c.get("/api/connections").json()["connections"]
            cid = [x["id"] for x in conns if x["topics"] == ["log.b"]][0]
            self.assertEqual(c.request("POST", "/api/connections/%s/close" % cid).status, 200)
        b.wait_closed()
        line = self.ended(srv, lambda l: l.get("topics") == "log.b", "the admin's close")
        self.assertEqual(line["reason"], "admin")

        # 3. A slow consumer (max_output_buffer 256 KiB): cut off.
        slow = self.sse(srv, "log.slow", rcvbuf=4096)
        chunk = b"x" * 32768
        for i in range(400):  # until the kernel's buffers and the queue are full
            self.publish(srv, "log.slow", chunk)
            if i % 10 == 9 and "subscriber cut off" in srv.log_text():
                break
        line = self.ended(srv, lambda l: l.get("topics") == "log.slow", "the slow consumer")
        self.assertEqual(line["reason"], "slow_consumer")
        self.assertGreater(line["messages"], 0)
        del slow

        # 4. A WebSocket client that closes with 1000.
        ws = RawConn.tcp("127.0.0.1", srv.port)
        self.addCleanup(ws.close)
        key = base64.b64encode(os.urandom(16)).decode()
        ws.send(build_request("GET", "/topics/log.ws", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13"}))
        self.assertEqual(ws.read_head()[1], 101)
        self.publish(srv, "log.ws", b"hi")
        ws.read_exact(4)  # the frame: 2 bytes of header, "hi"
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
        ws.send(b"\x88\x82" + mask + payload)
        ws.wait_closed()
        line = self.ended(srv, lambda l: l.get("topics") == "log.ws", "the WebSocket client")
        self.assertEqual((line["transport"], line["reason"], line["messages"]), ("websocket", "peer", 1))

        # 5. Still open when the server stops.
        self.sse(srv, "log.d")
        time.sleep(0.1)
        self.assertEqual(srv.stop(), 0)
        line = self.ended(srv, lambda l: l.get("topics") == "log.d", "the stop")
        self.assertEqual(line["reason"], "shutdown")
        # Lines of both workers; each one JSON with a timestamp.
        for l in srv.json_logs():
            self.assertIn("ts", l)

    def test_workers_lines_in_time_order(self):
        """Two workers logging at once (access lines of concurrent
        clients): the lines come out in timestamp order, in both forms."""
        import threading
        for fmt in ("json", "text"):
            srv = self.start(log_format=fmt, args=["-w", "2"])

            def client():
                for _ in range(150):
                    with srv.conn() as c:
                        c.get("/healthz")

            threads = [threading.Thread(target=client) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(srv.stop(), 0)
            lines = [l for l in srv.logs() if l.strip()]
            stamps = [json.loads(l)["ts"] if fmt == "json" else l.split(" ", 1)[0] for l in lines]
            self.assertGreater(len(stamps), 900)
            late = [(a, b) for a, b in zip(stamps, stamps[1:]) if b < a]
            self.assertEqual(late, [], "%s: %d lines out of order" % (fmt, len(late)))

    def test_text_line(self):
        srv = self.start()
        a = self.sse(srv, "log.text")
        self.publish(srv, "log.text", b"one")
        a.read_until(b"data: one\n\n")
        a.close()
        srv.wait_log(r"stream ended transport=sse remote=127\.0\.0\.1:\d+ topics=log\.text "
                     r"ntopics=1 duration=[0-9.]+ bytes=\d+ messages=1 reason=peer")


if __name__ == "__main__":
    unittest.main()
