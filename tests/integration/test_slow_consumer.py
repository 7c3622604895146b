"""Slow consumers: a subscriber that stops reading while many messages are
published must be cut off (WebSocket: close 1013 after what was queued;
SSE: the stream ends), the server's memory must stay bounded (it does not
queue the whole stream for the reader that does not read), and the other
subscribers of the same topic must still get every message, in order.

The slow clients are raw sockets with a small receive buffer that are
simply not read until the server logs the cut-off; the fast ones read in
threads.  Memory is VmRSS from /proc/PID/status, sampled while publishing,
with a generous bound (a fraction of what was published) so that only a
server that buffers the stream for the stalled reader fails; the bound is
not checked on an AddressSanitizer build (its quarantine keeps freed memory
resident).  The publisher stays a few messages ahead of the fast readers at
most, so they cannot be cut off however slowly the machine runs them.
"""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, SluiceTestCase, RawConn, ConnectionClosed, app, build_request,  # noqa: E402
                     ws_open, ws_read_frame)



def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sanitized_binary():
    """True when the binary is built with AddressSanitizer, whose quarantine
    keeps freed memory resident (hundreds of MiB): RSS says nothing then."""
    try:
        with open(BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def small_rcvbuf_conn(port, rcvbuf=4096):
    """A client socket whose receive buffer is small (set before connect so
    the window is small from the start)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return RawConn(s, 10)


def sse_open(conn, path):
    conn.send(build_request("GET", path, [("Accept", "text/event-stream")]))
    _, status, _, headers, head = conn.read_head()
    assert status == 200, head


def seq_of(data):
    return int(data.split(b":", 1)[0])


class Collector:
    """Reads one subscriber in a thread: WebSocket frames or SSE events, the
    sequence numbers of the messages, and how the stream ended."""

    def __init__(self, conn, kind, start_event=None):
        self.conn = conn
        self.kind = kind
        self.start_event = start_event  # wait for it before reading
        self.seqs = []
        self.close_code = None
        self.ended = False
        self.error = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        try:
            if self.start_event is not None and not self.start_event.wait(120):
                self.error = "never told to start reading"
                return
            self.conn.settimeout(30)
            if self.kind == "ws":
                self.read_ws()
            else:
                self.read_sse()
        except ConnectionClosed:
            self.ended = True
        except Exception as e:  # reported by the test
            self.error = repr(e)
        with self.cond:
            self.cond.notify_all()

    def got(self, seq):
        with self.cond:
            self.seqs.append(seq)
            self.cond.notify_all()

    def wait_count(self, n, timeout):
        """Wait (bounded) until n messages are in or the reader stopped."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.seqs) < n and self.thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return len(self.seqs) >= n

    def read_ws(self):
        while True:
            op, payload = ws_read_frame(self.conn)
            if op == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.conn.wait_closed(15)
                self.ended = True
                return
            if op in (1, 2):
                self.got(seq_of(payload))

    def read_sse(self):
        while True:
            block = self.conn.read_until(b"\n\n")
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.got(seq_of(line[6:]))

    def join(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()


class SlowConsumerTest(SluiceTestCase):
    def run_case(self, server, n, size, window, rss_bound_kib=None):
        """Publish n messages of about size bytes; the publisher stays at
        most `window` messages ahead of the fast readers (less than the
        output limit), so only the stalled readers can ever be cut off,
        however slowly the machine runs the readers."""
        topic = "slow"
        port = server.port

        # the stalled ones: handshake done, then never read until cut off
        slow_ws = small_rcvbuf_conn(port)
        self.addCleanup(slow_ws.close)
        ws_open(slow_ws, "/topics/" + topic)
        slow_sse = small_rcvbuf_conn(port)
        self.addCleanup(slow_sse.close)
        sse_open(slow_sse, "/topics/" + topic)

        # the fast ones
        fast_ws = self.conn(server, timeout=30)
        ws_open(fast_ws, "/topics/" + topic)
        fast_sse = self.conn(server, timeout=30)
        sse_open(fast_sse, "/topics/" + topic)
        fast = [Collector(fast_ws, "ws").start(), Collector(fast_sse, "sse").start()]

        ws_cut, sse_cut = threading.Event(), threading.Event()
        slow = [Collector(slow_ws, "ws", ws_cut).start(), Collector(slow_sse, "sse", sse_cut).start()]
        mark = server.mark()

        base = rss_kib(server.proc.pid)
        peak = base
        pad = b"x" * size
        pub = self.conn(server, timeout=30)
        for i in range(n):
            for c in fast:
                self.assertTrue(c.wait_count(i - window, 60),
                                "%s fast reader stuck at %d (%s, close %s)"
                                % (c.kind, len(c.seqs), c.error, c.close_code))
            r = pub.request("POST", "/topics/" + topic, body=b"%d:" % i + pad)
            self.assertEqual(r.status, 200, r)
            if i % 20 == 0:
                peak = max(peak, rss_kib(server.proc.pid))
                # let a stalled reader read once its cut-off is logged (the
                # server gives it a bounded time to take what was queued)
                if server.find_logs("websocket subscriber cut off", since=mark):
                    ws_cut.set()
                if server.find_logs("sse subscriber cut off", since=mark):
                    sse_cut.set()
        peak = max(peak, rss_kib(server.proc.pid))

        server.wait_log("websocket subscriber cut off", timeout=10, since=mark)
        server.wait_log("sse subscriber cut off", timeout=10, since=mark)
        ws_cut.set()
        sse_cut.set()

        # the fast readers do not end: wait (bounded) for all n, then check
        for c in fast:
            c.wait_count(n, 60)
        for c in fast:
            self.assertIsNone(c.error, c.kind)
            self.assertEqual(c.seqs, list(range(n)), "%s fast subscriber missed messages" % c.kind)
            self.assertIsNone(c.close_code, c.kind)

        for c in slow:
            self.assertTrue(c.join(60), "%s slow reader did not finish" % c.kind)
            self.assertIsNone(c.error, "%s: %s" % (c.kind, c.error))
            self.assertTrue(c.ended, c.kind)
            self.assertLess(len(c.seqs), n, "%s slow subscriber was not cut off" % c.kind)
            # what it got is a prefix, in order, with nothing skipped
            self.assertEqual(c.seqs, list(range(len(c.seqs))), c.kind)
        self.assertEqual(slow[0].close_code, 1013, "WebSocket cut off with 1013")

        self.assertTrue(server.alive())
        if rss_bound_kib is not None and not sanitized_binary():
            self.assertLess(peak - base, rss_bound_kib,
                            "RSS grew from %d to %d KiB while publishing %d KiB"
                            % (base, peak, n * size // 1024))
        return base, peak

    def test_cut_off_with_small_output_limit_and_bounded_memory(self):
        # ws_slow_consumer.lua: max_output_buffer 256 KiB, backlog 16
        s = self.start(app("ws_slow_consumer.lua"))
        n, size = 1000, 64 * 1024  # 62.5 MiB published
        # generous: a server that queued the stream for the stalled readers
        # would grow by the whole 62.5 MiB; allow half of it
        self.run_case(s, n, size, window=2, rss_bound_kib=n * size // 1024 // 2)
        self.assertStopsCleanly(s)

    def test_cut_off_with_the_default_limit(self):
        # the default app: 1 MiB output limit, default retention
        s = self.start()
        self.run_case(s, 800, 16 * 1024, window=16)
        self.assertStopsCleanly(s)

    def test_sigterm_with_a_stalled_subscriber(self):
        # shutdown is not held up by a reader that does not read
        s = self.start(app("ws_slow_consumer.lua"))
        c = small_rcvbuf_conn(s.port)
        self.addCleanup(c.close)
        ws_open(c, "/topics/stall")
        pub = self.conn(s)
        for i in range(100):
            self.assertEqual(pub.request("POST", "/topics/stall", body=b"%d:" % i + b"y" * 32768).status, 200)
        pub.close()
        self.assertEqual(s.stop(timeout=15), 0, s.log_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
