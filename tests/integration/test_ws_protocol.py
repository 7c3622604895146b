"""WebSocket protocol conformance (RFC 6455), from outside: a raw-socket
client that writes exactly the frames a test wants (malformed ones
included) and reads the server's frames byte for byte, plus Debian's
python3-websockets as a strict, independent client (over TCP and TLS).

Covered: the handshake and its refusals; protocol errors (unmasked frame,
RSV bits, unknown opcodes, fragmented or oversized control frames,
continuation without a start, a new message inside a fragmented one) close
with 1002; invalid UTF-8 in a text message (in one frame, or split across
fragments, or cut at the end) closes with 1007 while valid UTF-8 split
across fragments is fine; messages over 1 MiB close with 1009; ping/pong,
pings between fragments; the close handshake and bad close frames; frames
split byte by byte or batched in one write; truncated frames followed by
a close or a reset leave the server serving.  After every case the server
still answers.
"""

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, build_request,
                     make_cert)

try:
    import websockets
    import websockets.exceptions
except ImportError:  # pragma: no cover - dev.sh installs python3-websockets
    websockets = None

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MIB = 1024 * 1024

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """Bytes of one client frame.  rsv: the RSV bits as in the first byte
    (0x40, 0x20, 0x10); length: announce this payload length instead of the
    real one (for oversized headers)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(payload)) if len(payload) < 4096 \
        else _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload, key):
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class WsConn:
    """A raw WebSocket client on a RawConn."""

    def __init__(self, raw):
        self.raw = raw

    def send(self, data):
        self.raw.send(data)

    def send_quietly(self, data):
        return self.raw.send_quietly(data)

    def read_frame(self):
        """(fin, rsv, opcode, payload) of the next server frame; server
        frames must not be masked."""
        b0, b1 = self.raw.read_exact(2)
        fin, rsv, op = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.raw.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.raw.read_exact(8))[0]
        return fin, rsv, op, self.raw.read_exact(n)

    def read_message(self, skip_control=True):
        """(opcode, payload) of the next data message (server messages are
        one frame each); control frames are skipped, except close."""
        while True:
            fin, rsv, op, payload = self.read_frame()
            if op in (OP_PING, OP_PONG) and skip_control:
                continue
            return op, payload

    def expect_close(self, code, timeout=10):
        """Reads frames until a close frame (data frames before it are
        allowed), asserts its code, and that the TCP connection then ends.
        Returns the reason."""
        self.raw.settimeout(timeout)
        while True:
            fin, rsv, op, payload = self.read_frame()
            if op == OP_CLOSE:
                break
        if code is None:
            if payload != b"":
                raise AssertionError("close frame with payload %r, expected none" % payload)
            reason = b""
        else:
            if len(payload) < 2:
                raise AssertionError("close frame without a code: %r" % payload)
            got = struct.unpack("!H", payload[:2])[0]
            if got != code:
                raise AssertionError("close code %d (%r), expected %d" % (got, payload[2:], code))
            reason = payload[2:]
            reason.decode("utf-8")  # the reason must be UTF-8
        # The server closes the TCP connection after its close frame (it
        # may wait for ours first: send it, ignoring a closed socket).
        self.raw.send_quietly(frame(OP_CLOSE, payload[:2]))
        self.raw.wait_closed(timeout)
        return reason

    def close(self):
        self.raw.close()


class WsTestBase(SluiceTestCase):
    def setUp(self):
        self.s = self.start()

    def ws(self, path="/topics/proto", headers=(), conn=None):
        """Open a WebSocket with a raw socket; returns a WsConn."""
        raw = conn or self.conn(self.s)
        key = base64.b64encode(os.urandom(16)).decode()
        hs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")] + list(headers)
        raw.send(build_request("GET", path, hs))
        version, status, reason, hdrs, head = raw.read_head()
        self.assertEqual(status, 101, head)
        h = {k.lower(): v for k, v in hdrs}
        want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        self.assertEqual(h.get("sec-websocket-accept"), want, head)
        self.assertEqual(h.get("upgrade", "").lower(), "websocket", head)
        self.assertIn("upgrade", h.get("connection", "").lower(), head)
        return WsConn(raw)

    def assertServing(self):
        """The server is alive and a new WebSocket works end to end."""
        self.assertTrue(self.s.alive(), "server died:\n" + self.s.log_text())
        w = self.ws("/topics/alive-check")
        w.send(frame(OP_TEXT, "ping?"))
        self.assertEqual(w.read_message(), (OP_TEXT, b"ping?"))
        w.send(frame(OP_CLOSE, close_payload(1000)))
        w.expect_close(1000)

    def poll(self, topic, since):
        with self.s.conn() as c:
            r = c.get("/topics/%s?timeout=0&since=%s" % (topic, since))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def cursor(self, topic):
        with self.s.conn() as c:
            return c.get("/topics/%s?timeout=0" % topic).json()["last_id"]


class HandshakeTest(WsTestBase):
    def test_accept_key_and_echo(self):
        w = self.ws()
        w.send(frame(OP_TEXT, "hello"))
        self.assertEqual(w.read_message(), (OP_TEXT, b"hello"))

    def test_refusals(self):
        base = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13")]
        cases = [
            (base, 400),  # no key
            (base + [("Sec-WebSocket-Key", "short")], 400),
            ([("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
              ("Sec-WebSocket-Version", "8")], 426),
        ]
        for headers, status in cases:
            with self.s.conn() as c:
                r = c.request("GET", "/topics/proto", headers)
                self.assertEqual(r.status, status, (headers, r))
                if status == 426:
                    self.assertEqual(r.header("sec-websocket-version"), "13", r)
        with self.s.conn() as c:
            c.send(build_request("GET", "/topics/proto", base + [
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")], version="HTTP/1.0"))
            r = c.read_response()
            self.assertNotEqual(r.status, 101, r)
        self.assertServing()


class ProtocolErrorTest(WsTestBase):
    def check_close(self, data, code, path="/topics/proto"):
        w = self.ws(path)
        w.send_quietly(data)
        w.expect_close(code)
        w.close()

    def test_unmasked_frame(self):
        self.check_close(frame(OP_TEXT, "plain", mask=False), 1002)
        self.check_close(frame(OP_PING, "", mask=False), 1002)
        self.assertServing()

    def test_reserved_bits(self):
        for rsv in (0x40, 0x20, 0x10, 0x70):
            self.check_close(frame(OP_TEXT, "x", rsv=rsv), 1002)
        self.check_close(frame(OP_PING, "x", rsv=0x40), 1002)
        self.assertServing()

    def test_unknown_opcodes(self):
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
            self.check_close(frame(op, "x"), 1002)
        self.assertServing()

    def test_fragmented_control_frame(self):
        self.check_close(frame(OP_PING, "p", fin=False), 1002)
        self.check_close(frame(OP_CLOSE, close_payload(1000), fin=False), 1002)
        self.assertServing()

    def test_control_frame_too_long(self):
        self.check_close(frame(OP_PING, b"x" * 126), 1002)
        self.assertServing()

    def test_continuation_without_start(self):
        self.check_close(frame(OP_CONT, "orphan"), 1002)
        self.check_close(frame(OP_CONT, "orphan", fin=False), 1002)
        self.assertServing()

    def test_new_message_inside_fragmented_one(self):
        self.check_close(frame(OP_TEXT, "a", fin=False) + frame(OP_TEXT, "b"), 1002)
        self.check_close(frame(OP_BIN, b"a", fin=False) + frame(OP_BIN, b"b"), 1002)
        self.assertServing()

    def test_invalid_utf8_text(self):
        for bad in (b"\xff", b"ab\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80",
                    b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"):
            self.check_close(frame(OP_TEXT, bad), 1007)
        self.assertServing()

    def test_invalid_utf8_across_fragments(self):
        # a valid lead byte, then a bad continuation in the next fragment
        self.check_close(frame(OP_TEXT, b"ok \xc3", fin=False) + frame(OP_CONT, b"\x28"), 1007)
        # a 4-byte sequence cut at the end of the message
        self.check_close(frame(OP_TEXT, b"x\xf0\x9f", fin=False) + frame(OP_CONT, b"\x98"), 1007)
        # a code point above U+10FFFF split over three fragments
        self.check_close(frame(OP_TEXT, b"\xf4", fin=False) + frame(OP_CONT, b"\x90", fin=False)
                         + frame(OP_CONT, b"\x80\x80"), 1007)
        self.assertServing()

    def test_invalid_utf8_detected_before_the_end(self):
        # a fail-fast server closes on the first bad fragment, before FIN
        w = self.ws()
        w.send(frame(OP_TEXT, b"\xff", fin=False))
        w.expect_close(1007)

    def test_valid_utf8_split_across_fragments(self):
        w = self.ws("/topics/utf8split")
        text = "é😀✓".encode()
        parts = [text[:1], text[1:3], text[3:4], text[4:8], text[8:]]
        data = frame(OP_TEXT, parts[0], fin=False)
        for p in parts[1:-1]:
            data += frame(OP_CONT, p, fin=False)
        data += frame(OP_CONT, parts[-1])
        w.send(data)
        self.assertEqual(w.read_message(), (OP_TEXT, text))

    def test_binary_need_not_be_utf8(self):
        w = self.ws("/topics/binok")
        w.send(frame(OP_BIN, b"\xff\xfe\x00", fin=False) + frame(OP_CONT, b"\xc3"))
        self.assertEqual(w.read_message(), (OP_BIN, b"\xff\xfe\x00\xc3"))

    def test_oversized_message(self):
        # the header alone announces more than 1 MiB
        self.check_close(frame(OP_BIN, b"", length=MIB + 1), 1009)
        self.check_close(frame(OP_TEXT, b"", length=1 << 40), 1009)
        # fragments that add up to more than 1 MiB
        w = self.ws()
        half = b"a" * (MIB // 2)
        w.send_quietly(frame(OP_TEXT, half, fin=False) + frame(OP_CONT, half, fin=False)
                       + frame(OP_CONT, b"b"))
        w.expect_close(1009)
        self.assertServing()

    def test_64bit_length_with_top_bit(self):
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 63) + os.urandom(4)
        self.check_close(head, 1002)
        self.assertServing()

    def test_exactly_1mib_is_accepted(self):
        # 1 MiB is the largest message: it is published, not refused.  (It
        # is checked through a poll, not the sender's own echo: delivering
        # it on a stream is test_ws.mjs's business.)
        topic = "exact1mib"
        since = self.cursor(topic)
        w = self.ws("/topics/" + topic)
        data = bytes([0x41 + (i % 26) for i in range(MIB)])
        w.send(frame(OP_TEXT, data))
        v = None
        for _ in range(200):
            v = self.poll(topic, since)
            if v["messages"]:
                break
            time.sleep(0.05)
        self.assertEqual(len(v["messages"]), 1, str(v)[:300])
        self.assertEqual(v["messages"][0]["data"].encode(), data)
        w.close()
        self.assertServing()


class FramingTest(WsTestBase):
    def test_ping_pong(self):
        w = self.ws()
        w.send(frame(OP_PING, b"payload \x00\xff"))
        fin, rsv, op, payload = w.read_frame()
        self.assertEqual((fin, rsv, op, payload), (True, 0, OP_PONG, b"payload \x00\xff"))
        w.send(frame(OP_PING, b""))
        self.assertEqual(w.read_frame(), (True, 0, OP_PONG, b""))

    def test_unsolicited_pong_is_ignored(self):
        w = self.ws()
        w.send(frame(OP_PONG, b"nobody asked") + frame(OP_TEXT, "after pong"))
        self.assertEqual(w.read_message(), (OP_TEXT, b"after pong"))

    def test_ping_between_fragments(self):
        w = self.ws("/topics/frag")
        w.send(frame(OP_TEXT, "Hel", fin=False))
        w.send(frame(OP_PING, "mid"))
        self.assertEqual(w.read_frame(), (True, 0, OP_PONG, b"mid"))
        w.send(frame(OP_CONT, "lo, ", fin=False) + frame(OP_PING, "mid2")
               + frame(OP_CONT, "world"))
        frames = [w.read_frame(), w.read_frame()]
        self.assertIn((True, 0, OP_PONG, b"mid2"), frames)
        self.assertIn((True, 0, OP_TEXT, b"Hello, world"), frames)

    def test_fragmented_binary(self):
        w = self.ws("/topics/fragbin")
        w.send(frame(OP_BIN, b"\x00\xc3", fin=False) + frame(OP_CONT, b"", fin=False)
               + frame(OP_CONT, b"\x02"))
        self.assertEqual(w.read_message(), (OP_BIN, b"\x00\xc3\x02"))
        # what goes out is chosen by the data: valid UTF-8 sent as binary
        # comes back as text (see the spec: text when valid UTF-8)
        w.send(frame(OP_BIN, b"ascii"))
        self.assertEqual(w.read_message(), (OP_TEXT, b"ascii"))

    def test_byte_by_byte(self):
        w = self.ws("/topics/bytewise")
        data = frame(OP_TEXT, "slowly " * 30) + frame(OP_PING, "p")
        for i in range(len(data)):
            w.send(data[i:i + 1])
        self.assertEqual(w.read_message(), (OP_TEXT, ("slowly " * 30).encode()))

    def test_many_frames_in_one_write(self):
        w = self.ws("/topics/batched")
        w.send(b"".join(frame(OP_TEXT, "m%d" % i) for i in range(50)))
        got = [w.read_message()[1] for _ in range(50)]
        self.assertEqual(got, [("m%d" % i).encode() for i in range(50)])

    def test_sizes_across_length_encodings(self):
        w = self.ws("/topics/sizes")
        for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            data = bytes([0x61 + (i % 26) for i in range(n)])
            w.send(frame(OP_TEXT, data))
            op, payload = w.read_message()
            self.assertEqual((op, len(payload)), (OP_TEXT, n))
            self.assertEqual(payload, data)

    def test_published_messages_arrive_as_single_frames(self):
        w = self.ws("/topics/pubframes")
        big = b"z" * 200000
        with self.s.conn() as c:
            self.assertEqual(c.request("POST", "/topics/pubframes", body=big).status, 200)
            self.assertEqual(c.request("POST", "/topics/pubframes", body=b"\xff\x00").status, 200)
        fin, rsv, op, payload = w.read_frame()
        self.assertEqual((fin, rsv, op, payload), (True, 0, OP_TEXT, big))
        self.assertEqual(w.read_frame(), (True, 0, OP_BIN, b"\xff\x00"))


class CloseTest(WsTestBase):
    def test_close_echoes_code(self):
        for code in (1000, 1001, 1003, 1008, 1011, 3000, 4999):
            w = self.ws()
            w.send(frame(OP_CLOSE, close_payload(code, b"client reason")))
            w.expect_close(code)
        self.assertServing()

    def test_close_without_payload(self):
        w = self.ws()
        w.send(frame(OP_CLOSE, b""))
        w.expect_close(None)

    def test_bad_close_frames(self):
        cases = [
            (b"\x03", 1002),                          # one byte
            (close_payload(999), 1002),
            (close_payload(1004), 1002),
            (close_payload(1005), 1002),
            (close_payload(1006), 1002),
            (close_payload(1015), 1002),
            (close_payload(2999), 1002),
            (close_payload(5000), 1002),
            (close_payload(1000, b"\xff\xfe"), 1007),  # reason not UTF-8
        ]
        for payload, code in cases:
            w = self.ws()
            w.send(frame(OP_CLOSE, payload))
            try:
                w.expect_close(code)
            except AssertionError as e:
                raise AssertionError("close payload %r: %s" % (payload, e))
        self.assertServing()

    def test_nothing_after_close(self):
        # data after the client's close frame is not published
        topic = "afterclose"
        since = self.cursor(topic)
        w = self.ws("/topics/" + topic)
        w.send(frame(OP_TEXT, "before") + frame(OP_CLOSE, close_payload(1000))
               + frame(OP_TEXT, "after"))
        w.expect_close(1000)
        # a publish from on_message may become durable (and pollable) a
        # little later: wait for "before", then make sure "after" is absent
        got = []
        for _ in range(200):
            got = [m["data"] for m in self.poll(topic, since)["messages"]]
            if got:
                break
            time.sleep(0.025)
        time.sleep(0.3)
        got = [m["data"] for m in self.poll(topic, since)["messages"]]
        self.assertEqual(got, ["before"])

    def test_truncated_frame_then_close(self):
        w = self.ws()
        data = frame(OP_TEXT, "this frame is cut short")
        w.send(data[:len(data) // 2])
        w.raw.sock.shutdown(socket.SHUT_WR)
        w.raw.wait_closed(10)
        self.assertServing()

    def test_truncated_header_then_reset(self):
        for cut in (1, 2, 5):
            w = self.ws()
            w.send(frame(OP_BIN, b"x" * 70000)[:cut])
            w.raw.abort()
        w = self.ws()
        w.send(frame(OP_TEXT, "x" * 1000)[:500])
        w.raw.abort()
        self.assertServing()

    def test_sigterm_closes_with_1001(self):
        w = self.ws()
        w2 = self.ws("/topics/other")
        self.s.signal(15)
        w.expect_close(1001)
        w2.expect_close(1001)
        self.assertEqual(self.s.wait_exit(), 0)


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class StrictClientTest(WsTestBase):
    """python3-websockets: an independent client that validates every frame
    the server sends (masking, UTF-8, close codes, the handshake)."""

    def run_async(self, coro, timeout=60):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    def url(self, path, tls=False):
        if tls:
            return "wss://localhost:%d%s" % (self.s.tls_port, path)
        return "ws://127.0.0.1:%d%s" % (self.s.port, path)

    def publish(self, topic, data, event=None):
        with self.s.conn() as c:
            path = "/topics/" + topic + ("?event=" + event if event else "")
            r = c.request("POST", path, body=data)
        self.assertEqual(r.status, 200, r)
        return r.json()["id"]

    def test_receive_send_ping_close(self):
        async def go():
            async with websockets.connect(self.url("/topics/strict"), max_size=2 * MIB) as ws:
                await asyncio.get_running_loop().run_in_executor(None, self.publish, "strict", b"text \xe2\x9c\x93")
                self.assertEqual(await ws.recv(), "text ✓")
                await asyncio.get_running_loop().run_in_executor(None, self.publish, "strict", b"\xff\x00bin")
                self.assertEqual(await ws.recv(), b"\xff\x00bin")
                await ws.send("from strict client")
                self.assertEqual(await ws.recv(), "from strict client")
                await ws.send(b"\x80\x81")
                self.assertEqual(await ws.recv(), b"\x80\x81")
                pong = await ws.ping(b"strict-ping")
                await asyncio.wait_for(pong, 10)
                await ws.close(4005, "done")
            self.assertEqual(ws.close_code, 4005)
        self.run_async(go())

    def test_json_envelopes_and_resume(self):
        ids = [self.publish("strictj", b"one", "e1"), self.publish("strictj", b"two")]

        async def go():
            async with websockets.connect(self.url("/topics/strictj?format=json&last_event_id=" + ids[0])) as ws:
                v = json.loads(await ws.recv())
                self.assertEqual((v["id"], v["topic"], v["data"]), (ids[1], "strictj", "two"))
            async with websockets.connect(self.url("/topics/strictj?format=json&last_event_id=nope")) as ws:
                self.assertEqual(json.loads(await ws.recv()), {"gap": True, "topic": "strictj"})
                v1 = json.loads(await ws.recv())
                self.assertEqual((v1["id"], v1["event"], v1["data"]), (ids[0], "e1", "one"))
        self.run_async(go())

    def test_too_big_closes_1009(self):
        async def go():
            async with websockets.connect(self.url("/topics/strictbig")) as ws:
                await ws.send(b"x" * (MIB + 1))
                with self.assertRaises(websockets.exceptions.ConnectionClosed) as cm:
                    await asyncio.wait_for(ws.recv(), 20)
                self.assertEqual(cm.exception.rcvd.code, 1009)
        self.run_async(go())

    def test_invalid_close_code_from_client_is_refused(self):
        # websockets itself will not send a bad close code; a raw frame does
        w = self.ws()
        w.send(frame(OP_CLOSE, close_payload(1005)))
        w.expect_close(1002)

    def test_wss(self):
        d = self.tmpdir()
        cert, key = make_cert(d)
        s = self.start(tls_listen=["127.0.0.1:0"], args=["--tls-cert", cert, "--tls-key", key])
        self.s = s
        ctx = ssl.create_default_context(cafile=cert)

        async def go():
            async with websockets.connect(self.url("/topics/strictwss", tls=True), ssl=ctx) as ws:
                await ws.send("secure hello")
                self.assertEqual(await ws.recv(), "secure hello")
                await asyncio.get_running_loop().run_in_executor(None, self.publish, "strictwss", b"\xfe")
                self.assertEqual(await ws.recv(), b"\xfe")
                pong = await ws.ping()
                await asyncio.wait_for(pong, 10)
                await ws.close(1000)
            self.assertEqual(ws.close_code, 1000)
        self.run_async(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
