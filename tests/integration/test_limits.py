"""Limits: header block (431), URI (414), body (413), slow headers and
bodies (408 and close, counted in sluice_http_refused_total), idle keep-alive timeout, connection limit (503), instruction budget.
Both the default limits and limits set by the script's sluice.config."""

import os
import re
import select
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, RawConn, app, build_request, chunked)


def send_body_until_answer(c, data, piece=16384):
    """Send DATA in pieces, stopping early once the server answers (it may
    refuse a body it will not read)."""
    for i in range(0, len(data), piece):
        if c.readable(0):
            return
        if not c.send_quietly(data[i:i + piece]):
            return


class DefaultLimitsTest(SluiceTestCase):
    """The documented defaults: headers 16 KiB, URI 8 KiB, body 1 MiB."""

    def setUp(self):
        self.s = self.start(app("routes.lua"))

    def test_header_block_under_limit_ok(self):
        c = self.conn(self.s)
        r = c.get("/ping", [("X-Big", "a" * 8000)])
        self.assertEqual(r.status, 200, r)

    def test_header_block_too_large_431(self):
        c = self.conn(self.s)
        c.send_quietly(build_request("GET", "/ping", [("X-Big", "a" * 20000)]))
        r = c.read_response()
        self.assertJsonError(r, 431)
        self.assertTrue(r.closes(), r)
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_many_headers_too_large_431(self):
        c = self.conn(self.s)
        hdrs = [("X-H%d" % i, "v" * 40) for i in range(600)]  # ~30 KiB
        c.send_quietly(build_request("GET", "/ping", hdrs))
        r = c.read_response()
        self.assertJsonError(r, 431)
        self.assertServes(self.s)

    def test_uri_under_limit_ok(self):
        c = self.conn(self.s)
        r = c.get("/hello/" + "a" * 6000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"hello " + b"a" * 6000)

    def test_uri_too_long_414(self):
        c = self.conn(self.s)
        c.send_quietly(build_request("GET", "/hello/" + "a" * 10000))
        r = c.read_response()
        self.assertJsonError(r, 414)
        self.assertTrue(r.closes(), r)
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_body_content_length_too_large_413(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Content-Length", str(1024 * 1024 + 1))]))
        r = c.read_response()
        self.assertJsonError(r, 413)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)

    def test_body_chunked_too_large_413(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Transfer-Encoding", "chunked")]))
        send_body_until_answer(c, chunked(*[b"q" * 65536] * 20))  # 1.25 MiB
        r = c.read_response()
        self.assertJsonError(r, 413)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)


class ConfiguredLimitsTest(SluiceTestCase):
    """Small limits from sluice.config in apps/limits.lua."""

    def setUp(self):
        self.s = self.start(app("limits.lua"))

    def test_small_request_ok(self):
        c = self.conn(self.s)
        r = c.request("POST", "/len", [("X-Pad", "p" * 500)], b"b" * 4000)
        self.assertEqual((r.status, r.body), (200, b"4000"))

    def test_header_431(self):
        c = self.conn(self.s)
        c.send_quietly(build_request("GET", "/ping", [("X-Big", "a" * 4000)]))
        r = c.read_response()
        self.assertJsonError(r, 431)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)

    def test_uri_414(self):
        c = self.conn(self.s)
        c.send_quietly(build_request("GET", "/ping?x=" + "a" * 1000))
        r = c.read_response()
        self.assertJsonError(r, 414)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)

    def test_body_413_content_length(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Content-Length", "8000")]))
        r = c.read_response()
        self.assertJsonError(r, 413)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)

    def test_body_413_chunked(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Transfer-Encoding", "chunked")]))
        send_body_until_answer(c, chunked(*[b"q" * 1000] * 8), piece=1000)
        r = c.read_response()
        self.assertJsonError(r, 413)
        self.assertServes(self.s)

    def test_body_413_with_expect_no_100(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Content-Length", "8000"),
                                              ("Expect", "100-continue")]))
        r = c.read_response()
        self.assertNotEqual(r.status, 100, "100 Continue sent for a body over the limit")
        self.assertJsonError(r, 413)

    def test_slow_headers_408_then_close(self):
        c = self.conn(self.s)
        c.send(b"GET /pi")
        c.settimeout(10)
        r = c.read_response()
        self.assertJsonError(r, 408)
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_slow_headers_after_request_line(self):
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        r = c.read_response()
        self.assertJsonError(r, 408)
        c.wait_closed(10)

    def test_trickled_headers_still_time_out(self):
        # a slowloris: one byte at a time must not reset the header timer
        c = self.conn(self.s)
        data = build_request("GET", "/ping", [("X-Pad", "p" * 400)])
        deadline = time.monotonic() + 9
        i = 0
        while i < len(data) - 1 and time.monotonic() < deadline:
            if c.readable(0.2):
                break
            if not c.send_quietly(data[i:i + 1]):
                break
            i += 1
        self.assertLess(i, len(data) - 1, "whole request trickled in without a 408")
        got = c.wait_closed(10)
        self.assertTrue(got.startswith(b"HTTP/1.1 408"), got[:100])

    def refused(self, status):
        body = self.conn(self.s).get("/metrics").body.decode()
        m = re.search(r'^sluice_http_refused_total\{status="%d"\} (\d+)$' % status, body, re.M)
        self.assertIsNotNone(m, body)
        return int(m.group(1))

    def trickle_body(self, c, length, pause, seconds, chunked_body=False):
        """Sends a head announcing LENGTH body bytes, then one byte every
        PAUSE seconds for at most SECONDS or until the server answers;
        returns the seconds it took and what came back."""
        head = [("Transfer-Encoding", "chunked")] if chunked_body else \
            [("Content-Length", str(length))]
        c.send(build_request("POST", "/len", head))
        start = time.monotonic()
        sent = 0
        while sent < length and time.monotonic() - start < seconds:
            if c.readable(pause):
                break
            c.send_quietly(b"1\r\nx\r\n" if chunked_body else b"x")
            sent += 1
        return time.monotonic() - start, c.wait_closed(10)

    def test_trickled_body_times_out(self):
        # header_timeout is 1 s here: a byte every 0.3 s used to re-arm it
        # at every read and hold the connection for as long as it lasted
        before = self.refused(408)
        c = self.conn(self.s)
        took, got = self.trickle_body(c, 1000, 0.3, 6)
        self.assertTrue(got.startswith(b"HTTP/1.1 408"), got[:100])
        self.assertLess(took, 3.5)
        c = self.conn(self.s)
        took, got = self.trickle_body(c, 1000, 0.3, 6, chunked_body=True)
        self.assertTrue(got.startswith(b"HTTP/1.1 408"), got[:100])
        self.assertLess(took, 3.5)
        self.assertEqual(self.refused(408), before + 2)
        self.assertTrue(self.s.find_logs(r"access .*status=408"), self.s.log_text())
        self.assertServes(self.s)

    def test_body_at_a_fair_rate_passes(self):
        # 4,000 bytes over about 2.5 s (1,600 B/s): past header_timeout, but
        # above the minimum rate (1,024 B/s by default)
        c = self.conn(self.s)
        c.send(build_request("POST", "/len", [("Content-Length", "4000")]))
        for i in range(10):
            time.sleep(0.25)
            c.send(b"b" * 400)
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"4000"))

    def test_silent_connection_closed(self):
        c = self.conn(self.s)
        c.wait_closed(10)  # with or without a 408 body
        self.assertServes(self.s)

    def test_idle_keep_alive_closed(self):
        c = self.conn(self.s)
        r = c.get("/ping")
        self.assertEqual(r.status, 200)
        rest = c.wait_closed(10)
        self.assertNotIn(b"HTTP/1.1 200", rest)
        self.assertServes(self.s)

    def test_instruction_budget(self):
        c = self.conn(self.s)
        r = c.get("/loop/1000")
        self.assertEqual((r.status, r.body), (200, b"500500"))
        c = self.conn(self.s, timeout=30)
        r = c.get("/runaway")
        self.assertJsonError(r, 500)
        self.assertServes(self.s)


class ConnectionLimitTest(SluiceTestCase):
    """apps/connlimit.lua: max_connections = 3."""

    def setUp(self):
        self.s = self.start(app("connlimit.lua"))

    def _open_served(self, n):
        # The harness's readiness probe closed its connection just before
        # the test starts; until the server has read that close, the probe
        # still holds a slot.  A 503 is retried for that reason only, within
        # a bounded time.
        conns = []
        deadline = time.monotonic() + 10
        for i in range(n):
            while True:
                c = self.conn(self.s)
                try:
                    r = c.get("/ping")
                except (OSError, AssertionError) as e:  # refused at accept
                    r = e
                busy = not hasattr(r, "status") or r.status == 503
                if not busy or time.monotonic() > deadline:
                    break
                c.close()
                time.sleep(0.1)
            self.assertEqual(getattr(r, "status", r), 200, "connection %d: %r" % (i + 1, r))
            conns.append(c)
        return conns

    def _expect_503(self):
        c = self.conn(self.s)
        # the server may answer at accept time, before any request
        if not c.readable(1.0):
            c.send_quietly(build_request("GET", "/ping"))
        r = c.read_response()
        self.assertJsonError(r, 503)
        self.assertTrue(r.closes(), r)
        self.assertIsNotNone(r.header("date"), r)
        self.assertEqual(c.wait_closed(10), b"", "bytes after the 503 body")

    def test_over_limit_503(self):
        conns = self._open_served(3)
        self._expect_503()
        self._expect_503()
        # the admitted ones still work
        for c in conns:
            self.assertEqual(c.get("/ping").status, 200)

    def test_slot_freed_after_close(self):
        conns = self._open_served(3)
        self._expect_503()
        conns[0].close()
        deadline = time.monotonic() + 10
        while True:
            c = self.conn(self.s)
            if not c.readable(0.3):
                c.send_quietly(build_request("GET", "/ping"))
            try:
                r = c.read_response()
            except AssertionError:
                r = None
            if r is not None and r.status == 200:
                break
            self.assertLess(time.monotonic(), deadline,
                            "no slot freed after a close: %r" % r)
            c.close()
            time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
