"""HTTP/2 (core/h2.h): h2c with prior knowledge and h2 over TLS (ALPN) with
curl, nghttp and h2load; every transport on streams (publish, polls, SSE,
Lua routes); 100 SSE streams on one connection; a stalled stream cut off
alone while its sibling keeps receiving; a socket backlog that resumes
whole; WebSocket over HTTP/2 (RFC 8441), with permessage-deflate too; an
HTTP/1.1 "Upgrade: h2c" served as HTTP/1.1; and the known attacks (rapid
reset, CONTINUATION flood, HPACK bomb, too many streams, SETTINGS and PING
floods), each answered with GOAWAY and counted in /metrics while the
server goes on.

The raw client below writes frames by hand (hpack from Debian's
python3-hpack for header blocks) so that the attacks can break the rules
a real client library enforces."""

import os
import re
import shutil
import socket
import struct
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SIGTERM, SluiceTestCase, app, curl, make_cert, run  # noqa: E402

import hpack  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 7, 8, 0xb


def frame(typ, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + \
        struct.pack(">I", sid) + payload


class H2Raw:
    """A bare HTTP/2 client connection: frames in and out, headers through
    HPACK, per-stream state, window updates for the streams not stalled."""

    def __init__(self, port, timeout=10.0, rcvbuf=None):
        if rcvbuf:  # set before connecting: the TCP window follows it
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.next_id = 1
        self.status = {}     # stream -> :status
        self.heads = {}      # stream -> header list
        self.data = {}       # stream -> bytes
        self.ended = set()   # streams the server ended (END_STREAM)
        self.resets = {}     # stream -> RST_STREAM code
        self.goaway = None   # error code of a GOAWAY received
        self.stalled = set()  # streams whose window is never reopened
        self.conn_stalled = False  # no connection-level window updates at all
        self.eof = False
        self.settings = {}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def close(self):
        self.sock.close()

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def new_id(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def block(self, headers):
        return self.enc.encode(headers)

    def headers_frame(self, sid, headers, end_stream=True):
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid,
                     self.block(headers))

    def request(self, method, path, extra=(), body=None, send=True):
        sid = self.new_id()
        h = [(":method", method), (":scheme", "http"), (":path", path),
             (":authority", "localhost")] + list(extra)
        out = self.headers_frame(sid, h, end_stream=body is None)
        if body is not None:
            out += frame(DATA, END_STREAM, sid, body)
        if send:
            self.send(out)
        return sid, out

    def _read_frame(self, deadline):
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                d = b""
            if not d:
                self.eof = True
                return None
            self.buf += d
        n = int.from_bytes(self.buf[:3], "big")
        typ, flags = self.buf[3], self.buf[4]
        sid = struct.unpack(">I", bytes(self.buf[5:9]))[0] & 0x7fffffff
        payload = bytes(self.buf[9:9 + n])
        del self.buf[:9 + n]
        return typ, flags, sid, payload

    def handle(self, f):
        typ, flags, sid, p = f
        if typ == SETTINGS and not flags & ACK:
            for i in range(0, len(p), 6):
                k, v = struct.unpack(">HI", p[i:i + 6])
                self.settings[k] = v
            self.send(frame(SETTINGS, ACK, 0))
        elif typ == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, p))
        elif typ == HEADERS:
            hs = self.dec.decode(p)
            self.heads[sid] = hs
            for k, v in hs:
                if k == ":status":
                    self.status[sid] = int(v)
            if flags & END_STREAM:
                self.ended.add(sid)
        elif typ == DATA:
            self.data.setdefault(sid, bytearray()).extend(p)
            if p and not self.conn_stalled:
                wu = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(p)))
                if sid not in self.stalled:
                    wu += frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", len(p)))
                self.send(wu)
            if flags & END_STREAM:
                self.ended.add(sid)
        elif typ == RST_STREAM:
            self.resets[sid] = struct.unpack(">I", p[:4])[0]
        elif typ == GOAWAY:
            self.goaway = struct.unpack(">I", p[4:8])[0]

    def until(self, pred, timeout=10.0):
        """Reads and handles frames until pred() or the timeout or EOF;
        returns pred()."""
        deadline = time.monotonic() + timeout
        while not pred():
            f = self._read_frame(deadline)
            if f is None:
                break
            self.handle(f)
        return pred()

    def body(self, sid):
        return self.data.get(sid, b"")


def ws_frame(opcode, payload, mask=b"\x01\x02\x03\x04"):
    """A client WebSocket frame (masked, FIN)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def metric(text, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


class H2Test(SluiceTestCase):
    def setUp(self):
        self.dir = self.tmpdir()
        self.cert, self.key = make_cert(self.dir)
        self.s = self.start(app("h2_app.lua"), listen=["127.0.0.1:0"],
                            tls_listen=["127.0.0.1:0"],
                            args=["--tls-cert", self.cert, "--tls-key", self.key])

    def h2(self):
        c = H2Raw(self.s.port)
        self.addCleanup(c.close)
        self.assertTrue(c.until(lambda: 3 in c.settings), "no SETTINGS from the server")
        return c

    def url(self, path, tls=False):
        if tls:
            return "https://127.0.0.1:%d%s" % (self.s.tls_port, path)
        return "http://127.0.0.1:%d%s" % (self.s.port, path)

    def http_version(self, url, *args):
        p = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"] +
                list(args) + [url])
        code, version = p.stdout.decode().split()
        self.assertEqual(code, "200", p.stderr)
        return version

    def metrics(self):
        r = curl(self.url("/metrics"))
        self.assertEqual(r.status, 200, r)
        return r.body.decode()

    def assert_alive(self):
        r = curl(self.url("/healthz"), "--http2-prior-knowledge")
        self.assertEqual((r.status, r.body), (200, b"ok"), r)
        self.assertTrue(self.s.alive())

    # -- clients --------------------------------------------------------------

    def test_curl_prior_knowledge(self):
        """h2c: the preface used to get 505; now every kind of request works."""
        self.assertEqual(self.http_version(self.url("/healthz"), "--http2-prior-knowledge"), "2")
        r = curl(self.url("/topics/pk"), "--http2-prior-knowledge", "--data-binary", "one")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b'"id"', r.body)
        r = curl(self.url("/topics/pk?since=0&timeout=0"), "--http2-prior-knowledge")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b'"data":"one"', r.body)
        r = curl(self.url("/hello/bob"), "--http2-prior-knowledge")
        r1 = curl(self.url("/hello/bob"), "--http1.1")
        self.assertEqual((r.status, r.body), (200, r1.body), r)
        self.assertTrue(r.body.startswith(b"hello bob via "), r)
        self.assertIn(("x-test", "h2"), r.headers)
        r = curl(self.url("/topics/bad%20name"), "--http2-prior-knowledge")
        self.assertEqual(r.status, 400, r)

    def test_curl_tls_alpn(self):
        """ALPN h2 over TLS; a client without h2 still gets HTTP/1.1."""
        self.assertEqual(self.http_version(self.url("/healthz", tls=True), "-k", "--http2"), "2")
        self.assertEqual(self.http_version(self.url("/healthz", tls=True), "-k", "--http1.1"),
                         "1.1")
        r = curl(self.url("/topics/tls", tls=True), "-k", "--http2", "--data-binary", "x")
        self.assertEqual(r.status, 200, r)

    def test_nghttp_and_h2load(self):
        p = run(["nghttp", "-n", "-s", self.url("/healthz")], timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b" 200 ", p.stdout)
        p = run(["nghttp", "-n", "-s", "https://127.0.0.1:%d/hello/x" % self.s.tls_port],
                timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b" 200 ", p.stdout)
        p = run(["h2load", "-n", "600", "-c", "3", "-m", "20", self.url("/healthz")], timeout=30)
        self.assertIn(b"600 succeeded", p.stdout, p.stdout)
        p = run(["h2load", "-n", "200", "-c", "2", "-m", "10",
                 "https://127.0.0.1:%d/hello/y" % self.s.tls_port], timeout=30)
        self.assertIn(b"200 succeeded", p.stdout, p.stdout)

    # -- transports on streams ------------------------------------------------

    def test_transports_on_one_connection(self):
        c = self.h2()
        sse, _ = c.request("GET", "/topics/mix", [("accept", "text/event-stream")])
        lp, _ = c.request("GET", "/topics/mix?timeout=20")
        self.assertTrue(c.until(lambda: c.status.get(sse) == 200 and b"retry" in c.body(sse)))
        pub, _ = c.request("POST", "/topics/mix?event=greet", body=b"hi there")
        self.assertTrue(c.until(lambda: {pub, lp} <= c.ended and b"hi there" in c.body(sse)),
                        (c.status, c.data))
        self.assertEqual(c.status[pub], 200)
        self.assertIn(b"event: greet\ndata: hi there\n", c.body(sse))
        self.assertIn(b'"data":"hi there"', c.body(lp))
        head = dict(c.heads[sse])
        self.assertEqual(head["content-type"], "text/event-stream; charset=utf-8")
        self.assertNotIn("connection", head)
        # A short poll on the same connection answers at once.
        sp, _ = c.request("GET", "/topics/mix?since=0&timeout=0")
        self.assertTrue(c.until(lambda: sp in c.ended))
        self.assertIn(b'"data":"hi there"', c.body(sp))
        # The client resets the long-poll it no longer wants; the SSE stream goes on.
        lp2, _ = c.request("GET", "/topics/mix?timeout=20")
        c.send(frame(RST_STREAM, 0, lp2, struct.pack(">I", CANCEL)))
        r = curl(self.url("/topics/mix"), "--data-binary", "again")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(c.until(lambda: b"data: again" in c.body(sse)))

    def test_100_sse_streams(self):
        c = self.h2()
        n = 100
        subs = [c.request("GET", "/topics/many%d" % i, [("accept", "text/event-stream")])[0]
                for i in range(n)]
        self.assertTrue(c.until(lambda: all(b"retry" in c.body(s) for s in subs), 20),
                        "%d of %d SSE heads" % (sum(b"retry" in c.body(s) for s in subs), n))
        pubs = [c.request("POST", "/topics/many%d" % i, body=b"msg-%d" % i)[0]
                for i in range(n)]
        self.assertTrue(c.until(lambda: all(p in c.ended for p in pubs), 20))
        self.assertEqual({c.status[p] for p in pubs}, {200})
        self.assertTrue(c.until(
            lambda: all(b"data: msg-%d\n" % i in c.body(s) for i, s in enumerate(subs)), 20),
            "%d of %d got theirs" % (sum(b"data: msg-%d\n" % i in c.body(s)
                                         for i, s in enumerate(subs)), n))
        self.assertEqual(c.resets, {})
        m = self.metrics()
        self.assertGreaterEqual(metric(m, "sluice_http2_streams"), n)
        self.assertGreaterEqual(metric(m, 'sluice_connections{transport="sse"}'), n)
        # The HTTP/2 socket and the /metrics one: subscriptions on streams
        # share their socket, so they are not taken out of "http" (it said 0).
        self.assertGreaterEqual(metric(m, 'sluice_connections{transport="http"}'), 2)

    def test_stalled_stream_cut_alone(self):
        """A stream whose reader opens no window passes the output limit
        (64 KiB here) and is reset; its sibling on the same connection
        keeps receiving."""
        c = self.h2()
        a, _ = c.request("GET", "/topics/stall", [("accept", "text/event-stream")])
        b, _ = c.request("GET", "/topics/flow", [("accept", "text/event-stream")])
        c.stalled.add(a)
        self.assertTrue(c.until(lambda: b"retry" in c.body(a) and b"retry" in c.body(b)))
        before = metric(self.metrics(), "sluice_http2_streams_cut_total")
        big = b"x" * 16000
        for i in range(12):  # 190 KB: the 64 KiB window, then 64 KiB queued, then over
            r = curl(self.url("/topics/stall"), "--data-binary", big)
            self.assertEqual(r.status, 200, r)
            r = curl(self.url("/topics/flow"), "--data-binary", "tick-%d" % i)
            self.assertEqual(r.status, 200, r)
        self.assertTrue(c.until(lambda: a in c.resets and b"tick-11" in c.body(b), 15),
                        (c.resets, c.body(b)[-200:]))
        self.assertEqual(c.resets[a], CANCEL)
        self.assertNotIn(b, c.resets)
        self.assertIsNone(c.goaway)
        r = curl(self.url("/topics/flow"), "--data-binary", "after")
        self.assertTrue(c.until(lambda: b"data: after" in c.body(b)))
        self.assertEqual(metric(self.metrics(), "sluice_http2_streams_cut_total"), before + 1)
        self.assertTrue(self.s.wait_log(r"http2 stream cut off"))

    def test_socket_backlog_resumes_whole(self):
        """A client that opens large windows and then stops reading its
        socket: the kernel's buffers fill, the socket's queue reaches its
        high water, and the rest waits in the streams' queues (under an
        8 MiB output limit here, so nothing is cut).  When the client reads
        again every byte arrives, in order: 1 MB events (sent by reference,
        cut into 16 KiB frames) on one stream, short ones (copied) on its
        sibling."""
        s = self.start(app("h2_wide_app.lua"), listen=["127.0.0.1:0"])
        c = H2Raw(s.port, rcvbuf=4096)
        self.addCleanup(c.close)
        big = 1 << 24
        c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, big)) +
               frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", big)))
        a, _ = c.request("GET", "/topics/wideA", [("accept", "text/event-stream")])
        b, _ = c.request("GET", "/topics/wideB", [("accept", "text/event-stream")])
        self.assertTrue(c.until(lambda: b"retry" in c.body(a) and b"retry" in c.body(b)))
        url = "http://127.0.0.1:%d/topics/" % s.port
        n = 7  # 7 MB: past the server's 4 MiB send buffer and the high water
        for i in range(n):
            path = os.path.join(self.dir, "body")
            with open(path, "wb") as f:
                f.write((b"%d" % i) * 1000000)
            r = curl(url + "wideA", "--data-binary", "@" + path)
            self.assertEqual(r.status, 200, r)
            r = curl(url + "wideB", "--data-binary", "small-%d" % i)
            self.assertEqual(r.status, 200, r)
        want_a = b"".join(b"data: " + (b"%d" % i) * 1000000 + b"\n" for i in range(n))
        self.assertTrue(c.until(lambda: len(c.body(a)) >= len(want_a) and
                                b"small-%d" % (n - 1) in c.body(b), 30),
                        (len(c.body(a)), len(want_a), c.resets))
        events = re.findall(rb"data: [^\n]*\n", bytes(c.body(a)))
        self.assertEqual(b"".join(events), want_a)
        self.assertEqual(re.findall(rb"data: (small-\d+)", bytes(c.body(b))),
                         [b"small-%d" % i for i in range(n)])
        self.assertEqual(c.resets, {})
        self.assertIsNone(c.goaway)

    def test_websocket_over_h2(self):
        """RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL, then an extended
        CONNECT opens a WebSocket whose frames ride in DATA frames, beside
        an SSE stream on the same connection."""
        c = self.h2()
        self.assertEqual(c.settings.get(8), 1)
        ws = c.new_id()
        c.send(c.headers_frame(ws, [(":method", "CONNECT"), (":protocol", "websocket"),
                                    (":scheme", "http"), (":path", "/topics/wsh2"),
                                    (":authority", "localhost"),
                                    ("sec-websocket-version", "13")], end_stream=False))
        sse, _ = c.request("GET", "/topics/wsh2", [("accept", "text/event-stream")])
        self.assertTrue(c.until(lambda: ws in c.status and b"retry" in c.body(sse)))
        self.assertEqual(c.status[ws], 200, c.heads[ws])
        self.assertNotIn("sec-websocket-accept", dict(c.heads[ws]))
        r = curl(self.url("/topics/wsh2"), "--data-binary", "hello-ws")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(c.until(lambda: b"\x81\x08hello-ws" in c.body(ws)), c.body(ws))
        # A client message is published (and reaches the SSE sibling).
        c.send(frame(DATA, 0, ws, ws_frame(1, b"from-client")))
        self.assertTrue(c.until(lambda: b"data: from-client" in c.body(sse)), c.body(sse))
        # The close handshake ends the stream.
        c.send(frame(DATA, 0, ws, ws_frame(8, struct.pack(">H", 1000))))
        self.assertTrue(c.until(lambda: ws in c.ended or ws in c.resets))
        self.assertIn(b"\x88\x02\x03\xe8", c.body(ws))
        self.assertNotIn(ws, c.resets)
        # A CONNECT for anything else is refused.
        bad = c.new_id()
        c.send(c.headers_frame(bad, [(":method", "CONNECT"), (":authority", "example.com:443")],
                               end_stream=False))
        self.assertTrue(c.until(lambda: bad in c.status or bad in c.resets))
        self.assertTrue(c.status.get(bad, 400) >= 400)

    def test_websocket_over_h2_with_deflate(self):
        """permessage-deflate on an RFC 8441 stream: offered in the extended
        CONNECT's headers, accepted in the 200's; a published message comes
        compressed (RSV1) and inflates to itself, and a compressed client
        message is inflated and published (its SSE sibling gets it)."""
        c = self.h2()
        m = self.metrics()
        acc = metric(m, 'sluice_ws_deflate_negotiations_total{result="accepted"}')
        infl = metric(m, 'sluice_ws_deflate_messages_total{kind="inflated"}')
        ws = c.new_id()
        c.send(c.headers_frame(ws, [(":method", "CONNECT"), (":protocol", "websocket"),
                                    (":scheme", "http"), (":path", "/topics/wsz2"),
                                    (":authority", "localhost"),
                                    ("sec-websocket-version", "13"),
                                    ("sec-websocket-extensions",
                                     "permessage-deflate; client_max_window_bits")],
                               end_stream=False))
        sse, _ = c.request("GET", "/topics/wsz2", [("accept", "text/event-stream")])
        self.assertTrue(c.until(lambda: ws in c.status and b"retry" in c.body(sse)))
        self.assertEqual(c.status[ws], 200, c.heads[ws])
        ext = dict(c.heads[ws]).get("sec-websocket-extensions", "")
        self.assertTrue(ext.startswith("permessage-deflate"), c.heads[ws])
        m = self.metrics()
        self.assertEqual(metric(m, 'sluice_ws_deflate_negotiations_total{result="accepted"}'),
                         acc + 1)
        msg = b'{"text":"' + b"hello over http/2, " * 20 + b'"}'
        r = curl(self.url("/topics/wsz2"), "--data-binary", msg)
        self.assertEqual(r.status, 200, r)

        def frames():
            out, b = [], bytes(c.body(ws))
            while len(b) >= 2:
                n, at = b[1] & 0x7f, 2
                if n == 126:
                    n, at = struct.unpack(">H", b[2:4])[0], 4
                if len(b) < at + n:
                    break
                out.append((b[0], b[at:at + n]))
                b = b[at + n:]
            return out
        self.assertTrue(c.until(lambda: frames()), c.body(ws))
        first, payload = frames()[0]
        self.assertEqual(first, 0xc1)  # FIN, RSV1 (compressed), text
        self.assertLess(len(payload), len(msg) // 3)
        self.assertEqual(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"), msg)
        # A compressed client message (RSV1, masked).
        back = b'{"text":"' + b"and back again, " * 20 + b'"}'
        z = zlib.compressobj(wbits=-15)
        data = z.compress(back) + z.flush(zlib.Z_SYNC_FLUSH)
        self.assertEqual(data[-4:], b"\x00\x00\xff\xff")
        data = data[:-4]
        mask = b"\x0a\x0b\x0c\x0d"
        head = bytes([0xc1]) + (bytes([0x80 | len(data)]) if len(data) < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", len(data)))
        c.send(frame(DATA, 0, ws, head + mask +
                     bytes(x ^ mask[i % 4] for i, x in enumerate(data))))
        self.assertTrue(c.until(lambda: b"data: " + back + b"\n" in c.body(sse)), c.body(sse))
        self.assertEqual(metric(self.metrics(), 'sluice_ws_deflate_messages_total{kind="inflated"}'),
                         infl + 1)
        self.assertEqual(c.resets, {})

    def test_upgrade_h2c_is_plain_http11(self):
        """HTTP/2 over cleartext is prior knowledge only: an HTTP/1.1
        request asking to upgrade to h2c (RFC 7540 3.2, removed in RFC 9113)
        is served as HTTP/1.1 with the Upgrade ignored, and the connection
        stays HTTP/1.1 (a second request on it is answered the same way)."""
        up = ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
        sock = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(("GET /healthz HTTP/1.1\r\nHost: x\r\n%s\r\n"
                      "POST /topics/h2cup HTTP/1.1\r\nHost: x\r\n%sContent-Length: 5\r\n\r\n"
                      "hello" % (up, up)).encode())
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
            if time.monotonic() > deadline:
                break
            d = sock.recv(65536)
            if not d:
                break
            got += d
        heads = re.findall(rb"HTTP/1\.1 (\d{3})", got)
        self.assertEqual(heads, [b"200", b"200"], got)
        self.assertNotIn(b"101", got.split(b"\r\n")[0])
        self.assertNotIn(b"upgrade", got.lower())
        self.assertIn(b"\r\n\r\nok", got)
        self.assertIn(b'{"id":"', got)  # the second request published
        # curl --http2 on http:// asks exactly this: it gets HTTP/1.1.
        self.assertEqual(self.http_version(self.url("/healthz"), "--http2"), "1.1")
        # An SSE subscription asking to upgrade streams over HTTP/1.1.
        sock2 = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        self.addCleanup(sock2.close)
        sock2.sendall(("GET /topics/h2cup HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                       "%s\r\n" % up).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = sock2.recv(4096)
            if not d:
                break
            head += d
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"text/event-stream", head)
        self.assertEqual(metric(self.metrics(), "sluice_http2_connections"), 0)

    def test_graceful_stop(self):
        """SIGTERM: GOAWAY (NO_ERROR), the SSE stream ends, the WebSocket
        gets 1001, the server exits 0 in time."""
        c = self.h2()
        sse, _ = c.request("GET", "/topics/bye", [("accept", "text/event-stream")])
        ws = c.new_id()
        c.send(c.headers_frame(ws, [(":method", "CONNECT"), (":protocol", "websocket"),
                                    (":scheme", "http"), (":path", "/topics/bye"),
                                    (":authority", "localhost"),
                                    ("sec-websocket-version", "13")], end_stream=False))
        self.assertTrue(c.until(lambda: ws in c.status and b"retry" in c.body(sse)))
        self.s.signal(SIGTERM)
        close_1001 = b"\x88\x16\x03\xe9server shutting down"
        self.assertTrue(c.until(lambda: c.goaway is not None and sse in c.ended and
                                close_1001 in c.body(ws), 10), (c.goaway, c.ended, c.body(ws)))
        self.assertEqual(c.goaway, NO_ERROR)
        self.assertEqual(self.s.wait_exit(10), 0)

    def test_body_that_stops_gets_408(self):
        c = self.h2()
        sid = c.new_id()
        c.send(c.headers_frame(sid, [(":method", "POST"), (":scheme", "http"),
                                     (":path", "/topics/slow"), (":authority", "localhost")],
                               end_stream=False) + frame(DATA, 0, sid, b"part"))
        self.assertTrue(c.until(lambda: sid in c.ended, 10))
        self.assertEqual(c.status[sid], 408)

    def test_stalled_connection_bounded(self):
        """A connection whose reader stalls as a whole holds at most 4 x the
        output limit over all its streams (256 KiB here), however many it
        has: 20 streams of 60 KB each (each under its own 64 KiB) get cut
        past that.  Without the bound none was, and 1.2 MB waited."""
        c = self.h2()
        c.conn_stalled = True
        subs = [c.request("GET", "/topics/wide", [("accept", "text/event-stream")])[0]
                for _ in range(20)]
        self.assertTrue(c.until(lambda: all(b"retry" in c.body(s) for s in subs)))
        before = metric(self.metrics(), "sluice_http2_streams_cut_total")
        for i in range(6):
            r = curl(self.url("/topics/wide"), "--data-binary", "w" * 10000)
            self.assertEqual(r.status, 200, r)
        self.assertTrue(c.until(lambda: len(c.resets) >= 10, 15), c.resets)
        cut = metric(self.metrics(), "sluice_http2_streams_cut_total") - before
        self.assertTrue(c.until(lambda: len(c.resets) >= cut, 10), (cut, c.resets))
        self.assertEqual(len(c.resets), cut)
        self.assertEqual(set(c.resets.values()), {CANCEL})
        self.assertLess(cut, 20)  # the streams left hold what the bound allows
        self.assertIsNone(c.goaway)

    def test_header_list_over_limit_gets_431(self):
        c = self.h2()
        sid, _ = c.request("GET", "/healthz", [("x-big", "a" * 9000), ("x-big2", "b" * 9000)])
        self.assertTrue(c.until(lambda: sid in c.ended))
        self.assertEqual(c.status[sid], 431)
        self.assertIsNone(c.goaway)

    # -- attacks ----------------------------------------------------------------

    def attack(self, payload, cause, code=ENHANCE_YOUR_CALM):
        before = metric(self.metrics(), 'sluice_http2_refused_total{cause="%s"}' % cause)
        c = self.h2()
        c.send(payload(c) if callable(payload) else payload)
        self.assertTrue(c.until(lambda: c.goaway is not None, 15), "no GOAWAY for %s" % cause)
        self.assertEqual(c.goaway, code)
        c.until(lambda: c.eof, 10)
        self.assertTrue(c.eof, "the connection stayed open after GOAWAY (%s)" % cause)
        after = metric(self.metrics(), 'sluice_http2_refused_total{cause="%s"}' % cause)
        self.assertEqual(after, before + 1, cause)
        self.assert_alive()
        return c

    def test_rapid_reset(self):
        def go(c):
            out = b""
            for _ in range(600):
                sid, f = c.request("GET", "/topics/rr", [("accept", "text/event-stream")],
                                   send=False)
                out += f + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
            return out
        self.attack(go, "rapid_reset")
        self.assertTrue(self.s.wait_log(r"http2 connection refused.*rapid reset"))

    def test_continuation_flood(self):
        def go(c):
            blk = c.block([(":method", "GET"), (":scheme", "http"), (":path", "/healthz"),
                           (":authority", "localhost")])
            out = frame(HEADERS, END_STREAM, 1, blk[:1])
            for _ in range(40):
                out += frame(CONTINUATION, 0, 1, b"")
            return out + frame(CONTINUATION, END_HEADERS, 1, blk[1:])
        self.attack(go, "continuation_flood")

    def test_hpack_bomb(self):
        """One 4 KB header in the dynamic table, referenced 100 times: 100
        bytes on the wire, 400 KB decoded."""
        def go(c):
            return c.request("GET", "/healthz", [("x-bomb", "z" * 4000)] * 100, send=False)[1]
        self.attack(go, "header_list")

    def test_too_many_streams(self):
        """A stream past the limit the client acknowledged (256) ends the
        connection (nghttp2's answer: a connection error, PROTOCOL_ERROR)."""
        def go(c):
            return b"".join(c.request("GET", "/topics/tms%d" % (i % 5),
                                      [("accept", "text/event-stream")], send=False)[1]
                            for i in range(300))
        self.attack(go, "too_many_streams", code=PROTOCOL_ERROR)

    def test_settings_flood(self):
        self.attack(frame(SETTINGS, 0, 0) * 400, "settings_flood")

    def test_ping_flood(self):
        self.attack(frame(PING, 0, 0, b"12345678") * 400, "ping_flood")

    def test_garbage_after_preface(self):
        """Not frames: a connection error (here FRAME_SIZE_ERROR: the bytes
        read as a frame longer than allowed), counted as a protocol error."""
        self.attack(b"GET / HTTP/1.1\r\n\r\n" * 3, "protocol_error", code=6)


if __name__ == "__main__":
    unittest.main()
