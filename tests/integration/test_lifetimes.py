"""Lifetimes under hostile input: the reproductions of the crashes that a
free under a caller caused (issue 25, items 1-4), each of which must leave
the server serving.  They crash or corrupt memory on the code before the
deferred release (server_defer): under the ASan build they abort the
server, and the tests check that it is alive and answering afterwards.

- An Upgrade request with bytes behind it in the same packet: a first
  text frame (which must be published, to the subscribed topic), a close
  frame, a pipelined GET.
- A request with an Upgrade header that the app answers as plain HTTP,
  with a request pipelined behind it: both are answered.
- A WebSocket client that floods pings and never reads: it is cut off at
  the output limit, the server goes on.
- A Lua filter that closes the other subscribers of its topic in the
  middle of a fan-out; and a randomized app whose filter and callbacks
  close, send and publish during fan-outs.
"""

import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app, build_request
from test_ws_protocol import (OP_CLOSE, OP_PING, OP_TEXT, WsConn, close_payload,
                              frame)
import base64

APP = app("lifetimes.lua")


def upgrade_request(path):
    key = base64.b64encode(os.urandom(16)).decode()
    return build_request("GET", path, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                       ("Sec-WebSocket-Key", key),
                                       ("Sec-WebSocket-Version", "13")])


class LifetimeTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(app=APP, args=["-w", "1"])

    def alive(self):
        self.assertServes(self.s, "/healthz", b"ok")

    def open_ws(self, path, behind=b""):
        raw = self.conn(self.s)
        raw.send(upgrade_request(path) + behind)
        version, status, reason, hdrs, head = raw.read_head()
        self.assertEqual(status, 101, head)
        return WsConn(raw)

    # -- item 1 -----------------------------------------------------------

    def test_first_frame_in_the_upgrade_packet_is_published(self):
        ws = self.open_ws("/topics/first", frame(OP_TEXT, "hello"))
        op, payload = ws.read_message()
        self.assertEqual((op, payload), (OP_TEXT, b"hello"))
        self.assertNotIn("script error", self.s.log_text())
        self.alive()

    def test_close_frame_in_the_upgrade_packet(self):
        ws = self.open_ws("/topics/first", frame(OP_CLOSE, close_payload(1000)))
        ws.expect_close(1000)
        self.alive()

    def test_pipelined_get_behind_an_upgrade(self):
        # The bytes behind the Upgrade are WebSocket frames now: a GET is a
        # protocol error (unmasked, reserved opcode), closed with 1002.
        ws = self.open_ws("/topics/first", build_request("GET", "/healthz"))
        ws.expect_close(1002)
        self.alive()

    def test_many_frames_in_the_upgrade_packet_keep_their_order(self):
        frames = b"".join(frame(OP_TEXT, "m%d" % i) for i in range(20))
        ws = self.open_ws("/topics/order", frames)
        got = [ws.read_message()[1] for _ in range(20)]
        self.assertEqual(got, [b"m%d" % i for i in range(20)])
        self.alive()

    # -- item 2 -----------------------------------------------------------

    def test_upgrade_answered_as_http_then_pipelined(self):
        cases = [
            build_request("GET", "/healthz", [("Upgrade", "h2c"), ("Connection", "Upgrade")]),
            build_request("GET", "/topics/plain?timeout=0",
                          [("Upgrade", "foo"), ("Connection", "Upgrade")]),
            build_request("POST", "/topics/plain", [("Upgrade", "foo"),
                                                    ("Connection", "Upgrade")], body=b"x"),
        ]
        for req in cases:
            with self.subTest(req=req[:40]):
                c = self.conn(self.s)
                c.send(req + build_request("GET", "/healthz"))
                r1 = c.read_response()
                self.assertEqual(r1.status, 200, r1)
                r2 = c.read_response()
                self.assertEqual((r2.status, r2.body), (200, b"ok"), r2)
        self.alive()

    # -- item 3 -----------------------------------------------------------

    def test_ping_flood_from_a_client_that_never_reads(self):
        raw = self.conn(self.s)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.send(upgrade_request("/topics/flood"))
        version, status, reason, hdrs, head = raw.read_head()
        self.assertEqual(status, 101, head)
        ping = frame(OP_PING, b"p" * 125)
        batch = ping * 256
        deadline = time.monotonic() + 30
        raw.sock.settimeout(2)
        sent = 0
        # Until the server stops reading us (cut off) or 64 MiB went out.
        while time.monotonic() < deadline and sent < (64 << 20):
            try:
                raw.sock.sendall(batch)
            except (socket.timeout, BrokenPipeError, ConnectionResetError):
                break
            sent += len(batch)
        self.alive()
        self.assertTrue(self.s.alive())

    # -- item 4 -----------------------------------------------------------

    def test_filter_closes_other_subscribers_during_fanout(self):
        clients = []
        for i in range(8):
            ws = self.open_ws("/killer/k")
            ws.send(frame(OP_TEXT, "register"))
            self.assertEqual(ws.read_message()[1], b"registered")
            clients.append(ws)
        with self.s.conn() as c:
            r = c.request("POST", "/topics/k", body=b"kill")
        self.assertEqual(r.status, 200, r)
        for ws in clients:
            ws.expect_close(4000)
        self.alive()

    def test_randomized_changes_inside_callbacks(self):
        rng = random.Random(int(os.environ.get("SLUICE_CHAOS_SEED", "25")))
        clients = []
        deadline = time.monotonic() + 20
        for rnd in range(30):
            if time.monotonic() > deadline:
                break
            while len(clients) < 6:
                clients.append(self.open_ws("/chaos/c"))
            for ws in clients:
                ws.send_quietly(frame(OP_TEXT, "x" * rng.randint(1, 40)))
            with self.s.conn() as c:
                r = c.request("POST", "/topics/c", body=b"y" * rng.randint(1, 40))
            self.assertIn(r.status, (200, 503), r)
            # Drop the clients the app closed (their socket ends).
            keep = []
            for ws in clients:
                try:
                    gone = ws.raw.is_closed(timeout=0.05)
                except OSError:
                    gone = True
                if gone:
                    ws.close()
                else:
                    keep.append(ws)
            clients = keep
            if rng.random() < 0.3 and clients:
                clients.pop(rng.randrange(len(clients))).close()
        self.alive()



class LongPollFilterTest(SluiceTestCase):
    """Found by fuzz_conn: a long-poll with a filter and a resume point
    replays a stored message whose filter raises.  The error closes the
    poll inside its replay; the start then answered the ended session
    anyway (counted out twice: the long-poll gauge wrapped to 2^32-1, and
    a 200 was queued on a connection already closing)."""

    def test_filter_error_during_a_polls_replay(self):
        s = self.start(app=app("lp_filter.lua"), args=["-w", "1"])
        with s.conn() as c:
            self.assertEqual(c.request("POST", "/topics/a", body=b"Edata").status, 200)
        with s.conn() as c:
            c.send(build_request("GET", "/s/a?since=x&timeout=1"))
            c.wait_closed(10)  # ended by the script error, no answer owed
        with s.conn() as c:
            body = c.get("/metrics").body.decode()
        self.assertIn('sluice_connections{transport="longpoll"} 0\n', body)
        self.assertServes(s, "/healthz", b"ok")

if __name__ == "__main__":
    unittest.main()
