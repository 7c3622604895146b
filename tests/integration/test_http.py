"""HTTP/1.1 core: keep-alive, pipelining, bodies (Content-Length, chunked,
100-continue, chunk extensions and trailers), HEAD, Date/Content-Length/
Connection headers, HTTP/1.0, Host, absolute-form targets, other versions
(505), repeated query parameters, listeners (IPv4, IPv6, several), and peers that vanish mid-request."""

import email.utils
import os
import re
import socket
import sys
import tempfile
import time
import unittest
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, RawConn, app, build_request, chunked,
                     curl, have_ipv6_loopback, DATE_RE)



class DefaultAppTest(SluiceTestCase):
    """The built-in default app (no script)."""

    def test_healthz_curl(self):
        s = self.start()
        r = curl(s.url("/healthz"))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body.strip(), b"ok", r)

    def test_healthz_raw(self):
        s = self.start()
        c = self.conn(s)
        r = c.get("/healthz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body.strip(), b"ok")
        self.assertEqual(r.header("content-length"), str(len(r.body)))

    def test_unknown_path_404_json(self):
        s = self.start()
        c = self.conn(s)
        r = c.get("/no/such/route/here")
        self.assertJsonError(r, 404)
        # the connection stays usable after an error answer
        r = c.get("/healthz")
        self.assertEqual(r.status, 200, r)

    # -- held requests: the connection is watched while the app holds one ---------

    def metric(self, s, name):
        body = self.conn(s).get("/metrics").body.decode()
        m = re.search(r"^%s (\d+)$" % re.escape(name), body, re.M)
        self.assertIsNotNone(m, body)
        return int(m.group(1))

    def wait_metric(self, s, name, want, seconds=10.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.metric(s, name) == want:
                return
            time.sleep(0.05)
        self.fail("%s did not reach %d" % (name, want))

    def test_held_long_poll_dropped_when_the_client_goes(self):
        s = self.start()
        polls = 'sluice_connections{transport="longpoll"}'
        for leave in ("close", "abort"):
            c = s.conn()
            c.send(build_request("GET", "/topics/held?timeout=120"))
            self.wait_metric(s, polls, 1)
            getattr(c, leave)()
            # Dropped on the close itself: the poll's timeout is far off.
            self.wait_metric(s, polls, 0)
        self.assertServes(s, "/healthz", b"ok")

    def test_request_pipelined_behind_held_long_poll(self):
        s = self.start()
        c = self.conn(s)
        c.send(build_request("GET", "/topics/pipe?timeout=60") +
               build_request("GET", "/healthz"))
        self.wait_metric(s, 'sluice_connections{transport="longpoll"}', 1)
        pub = self.conn(s).request("POST", "/topics/pipe", body=b"m1")
        self.assertEqual(pub.status, 200, pub)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual([m["data"] for m in r.json()["messages"]], ["m1"])
        r = c.read_response()
        self.assertEqual((r.status, r.body.strip()), (200, b"ok"))

    def test_half_closed_publisher_still_gets_its_answer(self):
        # The publish is answered after the sync, with the client's write
        # side already shut: a half-close is not a vanished client.
        s = self.start()
        c = self.conn(s)
        c.send(build_request("POST", "/topics/half", body=b"x",
                             headers=[("Connection", "close")]))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertIn("id", r.json())


class HttpCoreTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(app("routes.lua"))

    # -- keep-alive and pipelining -------------------------------------------------

    def test_keep_alive_several_requests(self):
        c = self.conn(self.s)
        for i in range(10):
            r = c.get("/hello/n%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"hello n%d" % i)
            self.assertFalse(r.closes(), r)
        r = c.request("POST", "/echo", body=b"abc")
        self.assertEqual(r.body, b"abc")
        r = c.get("/ping")
        self.assertEqual(r.body, b"pong")

    def test_keep_alive_survives_short_pause(self):
        c = self.conn(self.s)
        self.assertEqual(c.get("/ping").status, 200)
        time.sleep(1.5)  # far below the default 60 s idle timeout
        self.assertEqual(c.get("/ping").status, 200)

    def test_pipelining_in_order(self):
        c = self.conn(self.s)
        reqs = [build_request("GET", "/hello/a"),
                build_request("GET", "/hello/b"),
                build_request("POST", "/echo", body=b"middle-body\r\nwith crlf"),
                build_request("GET", "/status/201"),
                build_request("HEAD", "/hello/c"),
                build_request("GET", "/hello/d")]
        c.send(b"".join(reqs))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"hello a"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"hello b"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"middle-body\r\nwith crlf"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (201, b"status 201"))
        r = c.read_response(head=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-length"), str(len(b"hello c")))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"hello d"))

    def test_pipelining_many(self):
        c = self.conn(self.s)
        n = 200
        c.send(b"".join(build_request("GET", "/hello/%d" % i) for i in range(n)))
        for i in range(n):
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"hello %d" % i)

    def test_pipelining_split_across_sends(self):
        c = self.conn(self.s)
        data = b"".join([build_request("GET", "/hello/x"),
                         build_request("POST", "/echo", body=b"0123456789"),
                         build_request("GET", "/hello/y")])
        # cut the stream at awkward places
        for i in range(0, len(data), 7):
            c.send(data[i:i + 7])
            time.sleep(0.002)
        self.assertEqual(c.read_response().body, b"hello x")
        self.assertEqual(c.read_response().body, b"0123456789")
        self.assertEqual(c.read_response().body, b"hello y")

    def test_pipelining_with_error_in_middle(self):
        c = self.conn(self.s)
        c.send(build_request("GET", "/hello/1") + build_request("GET", "/nope") +
               build_request("GET", "/error") + build_request("GET", "/hello/2"))
        self.assertEqual(c.read_response().status, 200)
        self.assertEqual(c.read_response().status, 404)
        r = c.read_response()
        self.assertEqual(r.status, 500)
        if not r.closes():
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello 2"))

    def test_pipelining_stops_after_connection_close(self):
        c = self.conn(self.s)
        c.send(build_request("GET", "/hello/1") +
               build_request("GET", "/hello/2", [("Connection", "close")]) +
               build_request("GET", "/hello/3"))
        self.assertEqual(c.read_response().body, b"hello 1")
        r = c.read_response()
        self.assertEqual(r.body, b"hello 2")
        self.assertTrue(r.closes(), r)
        rest = c.wait_closed(10)
        self.assertEqual(rest, b"", "answered a request after Connection: close")

    def test_many_concurrent_connections(self):
        conns = []
        for i in range(200):
            c = self.s.conn()
            self.addCleanup(c.close)
            conns.append(c)
        for i, c in enumerate(conns):
            c.send(build_request("GET", "/hello/c%d" % i))
        for i, c in enumerate(conns):
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello c%d" % i))

    def test_get_with_body_keeps_framing(self):
        c = self.conn(self.s)
        r = c.request("GET", "/ping", body=b"ignored")
        self.assertEqual((r.status, r.body), (200, b"pong"))
        r = c.get("/hello/next")
        self.assertEqual((r.status, r.body), (200, b"hello next"))

    def test_partial_request_does_not_block_others(self):
        slow = self.conn(self.s)
        slow.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        half = self.conn(self.s)
        half.send(b"GET /hello/half HTTP/1.1\r\nHo")
        self.assertServes(self.s)
        slow.send(b"defghij")
        self.assertEqual(slow.read_response().body, b"abcdefghij")
        half.send(b"st: x\r\n\r\n")
        self.assertEqual(half.read_response().body, b"hello half")

    # -- request bodies -----------------------------------------------------------------

    def test_content_length_body(self):
        c = self.conn(self.s)
        body = bytes(range(256)) * 40
        r = c.request("POST", "/echo", body=body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, body)

    def test_body_in_pieces(self):
        c = self.conn(self.s)
        body = b"x" * 50000
        c.send(build_request("POST", "/len", [("Content-Length", str(len(body)))]))
        for i in range(0, len(body), 10000):
            time.sleep(0.01)
            c.send(body[i:i + 10000])
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"50000"))

    def test_body_up_to_default_limit(self):
        c = self.conn(self.s)
        body = b"y" * (1024 * 1024)  # exactly 1 MiB is allowed
        r = c.request("POST", "/len", body=body)
        self.assertEqual((r.status, r.body), (200, b"1048576"))

    def test_chunked_body_echo(self):
        c = self.conn(self.s)
        body = chunked("hello ", "chunked ", "world")
        r = c.request("POST", "/echo", [("Transfer-Encoding", "chunked")], body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"hello chunked world")
        # the connection goes on after a chunked body
        r = c.get("/ping")
        self.assertEqual(r.body, b"pong")

    def test_chunked_body_with_extensions_and_trailers(self):
        c = self.conn(self.s)
        body = chunked("abc", "defg", ext="name=value",
                       trailers=[("X-Trailer", "t")])
        r = c.request("POST", "/echo", [("Transfer-Encoding", "chunked")], body)
        self.assertEqual((r.status, r.body), (200, b"abcdefg"))
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_chunked_body_trickled(self):
        c = self.conn(self.s)
        parts = [b"%d-" % i * 50 for i in range(20)]
        data = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + \
            chunked(*parts)
        for i in range(0, len(data), 97):
            c.send(data[i:i + 97])
            time.sleep(0.005)
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"".join(parts)))

    def test_chunked_large_binary(self):
        c = self.conn(self.s)
        parts = [os.urandom(30000) for _ in range(10)]
        r = c.request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                      chunked(*parts))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"".join(parts))

    def test_chunked_bad_size_400(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) +
               b"zz\r\nhello\r\n0\r\n\r\n")
        r = c.read_response()
        self.assertJsonError(r, 400)
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_content_length_and_chunked_rejected(self):
        # request smuggling guard: both framings at once is a bad request
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Content-Length", "5"),
                                               ("Transfer-Encoding", "chunked")]) +
               chunked("hello"))
        r = c.read_response()
        self.assertEqual(r.status, 400, r)
        c.wait_closed(10)

    def test_invalid_content_length_400(self):
        c = self.conn(self.s)
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        r = c.read_response()
        self.assertJsonError(r, 400)

    def test_curl_post_uses_expect_and_gets_answer(self):
        d = self.tmpdir()
        f = os.path.join(d, "body")
        with open(f, "wb") as fh:
            fh.write(b"z" * 200000)
        # curl sends Expect: 100-continue for bodies this size
        r = curl(self.s.url("/len"), "--data-binary", "@" + f,
                 "-H", "Expect: 100-continue")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual((r.status, r.body), (200, b"200000"), r)

    # -- Expect: 100-continue ----------------------------------------------------------

    def test_expect_100_continue(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Content-Length", "11"),
                                               ("Expect", "100-continue")]))
        r = c.read_response()
        self.assertEqual(r.status, 100, r)
        c.send(b"hello world")
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"hello world"))
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_expect_100_continue_chunked(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked"),
                                               ("Expect", "100-continue")]))
        r = c.read_response()
        self.assertEqual(r.status, 100, r)
        c.send(chunked("a", "b", "c"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"abc"))

    def test_expect_too_large_gets_413_without_100(self):
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Content-Length", str(2 * 1024 * 1024)),
                                               ("Expect", "100-continue")]))
        r = c.read_response()
        self.assertJsonError(r, 413)
        self.assertTrue(r.closes(), r)
        self.assertServes(self.s)

    # -- HEAD, headers ----------------------------------------------------------------

    def test_head(self):
        c = self.conn(self.s)
        get = c.get("/hello/world")
        r = c.request("HEAD", "/hello/world")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("content-length"), str(len(get.body)))
        # no body bytes leaked: the next response parses right
        r = c.get("/ping")
        self.assertEqual((r.status, r.body), (200, b"pong"))

    def test_head_curl(self):
        # curl -I writes the head to the output too; the raw test above
        # checks that no body follows
        r = curl(self.s.url("/hello/world"), "-I")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("content-length"), str(len(b"hello world")))

    def test_date_header(self):
        c = self.conn(self.s)
        for path in ("/ping", "/nope"):
            r = c.get(path)
            date = r.header("date")
            self.assertIsNotNone(date, r)
            self.assertRegex(date, DATE_RE)
            when = email.utils.parsedate_to_datetime(date)
            skew = abs((datetime.now(timezone.utc) - when).total_seconds())
            self.assertLess(skew, 600, "Date %r is far from now" % date)

    def test_content_length_on_every_response(self):
        c = self.conn(self.s)
        for path in ("/ping", "/json", "/nope", "/custom", "/status/418"):
            r = c.get(path)
            self.assertEqual(r.header("content-length"), str(len(r.body)), r)
            self.assertEqual(len(r.header_all("content-length")), 1, r)

    def test_connection_close_honoured(self):
        c = self.conn(self.s)
        r = c.get("/ping", [("Connection", "close")])
        self.assertEqual(r.status, 200)
        self.assertTrue(r.closes(), r)
        self.assertEqual(c.wait_closed(10), b"")

    def test_http10(self):
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.0\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"pong")
        self.assertEqual(c.wait_closed(10), b"")

    def test_http10_keep_alive_consistent(self):
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"pong"))
        if "keep-alive" in (r.header("connection") or "").lower():
            c.send(b"GET /hello/again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            self.assertEqual(c.read_response().body, b"hello again")
        else:
            self.assertEqual(c.wait_closed(10), b"")

    def test_http11_without_host_400(self):
        # RFC 9112 3.2: an HTTP/1.1 request without Host gets 400
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.1\r\n\r\n")
        r = c.read_response()
        self.assertJsonError(r, 400)
        self.assertIn("Host", r.json()["error"])
        self.assertEqual(c.wait_closed(10), b"")

    def test_http10_may_omit_host(self):
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.0\r\n\r\n")
        self.assertEqual(c.read_response().body, b"pong")

    def test_two_host_headers_400(self):
        c = self.conn(self.s)
        c.send(b"GET /ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertJsonError(c.read_response(), 400)

    def test_absolute_form_target(self):
        # RFC 9112 3.2.2: what a proxy sends; the path and query come from it
        c = self.conn(self.s)
        r = c.get("http://localhost:%d/ping" % self.s.port)
        self.assertEqual((r.status, r.body), (200, b"pong"), r)
        r = c.get("HTTP://example.com/inspect?a=1&b=two")
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["path"], r.json()["query"]), ("/inspect", {"a": "1", "b": "two"}))
        r = c.get("http://example.com")
        self.assertJsonError(r, 404)  # the path "/": no such route in this app
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_http2_version_505(self):
        for version in ("HTTP/2.0", "HTTP/3.0"):
            c = self.conn(self.s)
            c.send(b"GET /ping %s\r\nHost: localhost\r\n\r\n" % version.encode())
            r = c.read_response()
            self.assertJsonError(r, 505)
            self.assertEqual(c.wait_closed(10), b"")

    def test_http2_preface_switches(self):
        # prior-knowledge h2 on the plain listener: HTTP/2 from the preface
        # on, the server's SETTINGS first (test_h2.py covers the rest); it
        # got 505 before HTTP/2 was served
        c = self.conn(self.s)
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        while len(c.buf) < 9 and c._fill():
            pass
        self.assertEqual(c.buf[3], 4, bytes(c.buf))  # a SETTINGS frame
        self.assertServes(self.s)

    def test_chunk_extensions_count_toward_limit(self):
        # 16 KiB of header limit: one long extension, or many short ones
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) +
               b"1;" + b"e" * 20000 + b"\r\nx\r\n0\r\n\r\n")
        self.assertJsonError(c.read_response(), 431)
        c = self.conn(self.s)
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) +
               b"1;name=value\r\nx\r\n" * 2000 + b"0\r\n\r\n")
        self.assertJsonError(c.read_response(), 431)
        self.assertServes(self.s)

    def test_large_trailers(self):
        # Trailers used to be stored after the request's url and headers
        # were set, in the same buffer, and moved it (ASan: use after free)
        c = self.conn(self.s)
        trailers = [("X-Trailer-%d" % i, "v" * 100) for i in range(60)]
        body = chunked("abc", "defg", trailers=trailers)
        r = c.request("POST", "/inspect?q=1", [("Transfer-Encoding", "chunked"),
                                                ("X-Head", "h")], body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["path"], r.json()["query"], r.json()["body"]),
                         ("/inspect", {"q": "1"}, "abcdefg"))
        self.assertEqual(r.json()["headers"]["x-head"], "h")
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_repeated_query_parameter_first_wins(self):
        # One rule for the C code and req.query: the first occurrence counts
        c = self.conn(self.s)
        r = c.get("/inspect?x=1&y=2&x=3&x=")
        self.assertEqual(r.json()["query"], {"x": "1", "y": "2"})

    def test_garbage_400_and_close(self):
        c = self.conn(self.s)
        c.send(b"THIS IS NOT HTTP\r\n\r\n")
        r = c.read_response()
        self.assertJsonError(r, 400)
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_binary_garbage_does_not_hurt(self):
        for seed in range(5):
            with self.s.conn() as c:
                c.send_quietly(os.urandom(2000))
                try:
                    c.wait_closed(10)
                except AssertionError:
                    pass
        self.assertServes(self.s)

    # -- peers that vanish -----------------------------------------------------------

    def test_vanishing_peers_do_not_disturb(self):
        keep = self.conn(self.s)
        self.assertEqual(keep.get("/ping").status, 200)
        for i in range(10):
            # mid request line
            c = self.s.conn()
            c.send(b"GET /hel")
            c.close()
            # mid headers
            c = self.s.conn()
            c.send(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: ")
            c.abort()
            # mid body (Content-Length)
            c = self.s.conn()
            c.send(build_request("POST", "/echo", [("Content-Length", "100000")]) + b"abc")
            c.close()
            # mid body (chunked), then RST
            c = self.s.conn()
            c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) +
                   b"10\r\nabc")
            c.abort()
            # a client that asks for a big answer and leaves without reading
            c = self.s.conn()
            c.send(build_request("GET", "/big"))
            c.abort()
            # connect and leave at once
            c = self.s.conn()
            c.abort()
        r = keep.get("/hello/still")
        self.assertEqual((r.status, r.body), (200, b"hello still"))
        self.assertServes(self.s)
        self.assertTrue(self.s.alive())

    def test_client_closes_while_reading_big_answer(self):
        for i in range(3):
            c = self.s.conn()
            c.send(build_request("GET", "/big"))
            c.read_head()
            c.read_exact(100000)
            c.close()
        self.assertServes(self.s)

    def test_big_response_complete(self):
        c = self.conn(self.s)
        r = c.get("/big")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.body), 32 * 1024 * 1024)
        self.assertEqual(r.body[:16], b"0123456789abcdef")
        self.assertEqual(c.get("/ping").body, b"pong")


class ListenerTest(SluiceTestCase):
    def test_two_listeners(self):
        s = self.start(app("routes.lua"), listen=["127.0.0.1:0", "127.0.0.1:0"])
        ports = [p for h, p, t in s.listeners]
        self.assertEqual(len(ports), 2, s.log_text())
        self.assertNotEqual(ports[0], ports[1])
        for p in ports:
            with RawConn.tcp("127.0.0.1", p) as c:
                self.assertEqual(c.get("/ping").body, b"pong")

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 on loopback")
    def test_ipv6_listener(self):
        s = self.start(app("routes.lua"), listen=["[::1]:0"])
        self.assertEqual(s.listeners[0][0], "::1", s.log_text())
        s.wait_log(r"listening on \[::1\]:\d+")
        with RawConn.tcp("::1", s.port) as c:
            r = c.get("/inspect")
            self.assertEqual(r.status, 200, r)
            self.assertTrue(r.json()["remote_addr"].startswith("[::1]:")
                            or r.json()["remote_addr"].startswith("::1"), r)
        r = curl("http://[::1]:%d/ping" % s.port, "-g")
        self.assertEqual((r.status, r.body), (200, b"pong"), r)

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 on loopback")
    def test_ipv4_and_ipv6_listeners(self):
        s = self.start(app("routes.lua"), listen=["127.0.0.1:0", "[::1]:0"])
        hosts = sorted(h for h, p, t in s.listeners)
        self.assertEqual(hosts, ["127.0.0.1", "::1"], s.log_text())
        for h, p, t in s.listeners:
            with RawConn.tcp(h, p) as c:
                self.assertEqual(c.get("/ping").body, b"pong")


if __name__ == "__main__":
    unittest.main()
