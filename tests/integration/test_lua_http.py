"""sluice.http.request and sluice.http.send against real local servers
(Python's http.server, plain and TLS): answers, a slow backend (timeout), a
refused port, a huge body (the cap), TLS with a certificate not trusted
(refused) and with its CA given (accepted), the in-flight cap ("busy"), a
client that leaves while its handler waits, SIGHUP and SIGTERM with
requests in flight, misuse raising, webhooks from a handler and from
on_close, and the counters in /metrics."""

import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app, free_port, make_cert, build_request
from test_lua_api import WS

APP = app("http_client.lua")


class Backend:
    """A threaded HTTP server on 127.0.0.1 that records what it got."""

    def __init__(self, tls=None):
        self.hits = []  # (method, path, headers, body)
        self.cond = threading.Condition()
        self.release = threading.Event()  # ends /hold early
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query))
                with outer.cond:
                    outer.hits.append((self.command, u.path, dict(self.headers), body))
                    outer.cond.notify_all()
                code, out, extra = 200, b"", {}
                if u.path == "/ok":
                    out = b'{"hello":"world"}'
                    extra = {"Content-Type": "application/json", "X-Multi": "a"}
                elif u.path == "/echo":
                    out = json.dumps({"method": self.command, "body": body.decode(),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}
                                      }).encode()
                elif u.path == "/slow":
                    outer.release.wait(float(q.get("s", "3")))
                    out = b"slow"
                elif u.path == "/big":
                    out = b"x" * int(q.get("n", "2097152"))
                elif u.path == "/redirect":
                    code, extra = 302, {"Location": "/ok"}
                elif u.path == "/status":
                    code = int(q.get("code", "500"))
                    out = b"status"
                self.send_response(code)
                for k, v in extra.items():
                    self.send_header(k, v)
                if u.path == "/ok":
                    self.send_header("X-Multi", "b")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(out)
                    except OSError:
                        pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients that leave
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path, host="127.0.0.1"):
        return "%s://%s:%d%s" % (self.scheme, host, self.port, path)

    def wait_hits(self, path, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(1 for h in self.hits if h[1] == path) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("backend got %d of %d %s" % (
                        sum(1 for h in self.hits if h[1] == path), n, path))
                self.cond.wait(left)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def q(**kw):
    return urllib.parse.urlencode(kw)


class HttpCase(SluiceTestCase):
    def setUp(self):
        self.b = Backend()
        self.addCleanup(self.b.close)
        self.s = self.start(APP)

    def tearDown(self):
        # Exit 0 (under ASan: no leak, whatever was in flight).
        self.assertStopsCleanly(self.s)

    def call(self, path, **kw):
        with self.s.conn(timeout=20) as c:
            r = c.get(path + ("?" + q(**kw) if kw else ""))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def metric(self, name):
        text = self.call_text("/metrics_text")
        m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
        self.assertIsNotNone(m, name)
        return int(m.group(1))

    def call_text(self, path):
        with self.s.conn() as c:
            return c.get(path).text

    def assertAlive(self):
        self.assertTrue(self.s.alive(), self.s.log_text())
        self.assertEqual(self.call_text("/version"), "v1")


class RequestTest(HttpCase):
    def test_success(self):
        v = self.call("/call", url=self.b.url("/ok"))
        self.assertTrue(v["ok"], v)
        self.assertEqual(v["status"], 200)
        self.assertEqual(json.loads(v["body"]), {"hello": "world"})
        self.assertEqual(v["headers"]["content-type"], "application/json")
        self.assertEqual(v["headers"]["x-multi"], "a, b")  # repeated: joined
        # The string form.
        self.assertEqual(self.call("/get", url=self.b.url("/ok"))["status"], 200)

    def test_method_headers_body(self):
        v = self.call("/call", url=self.b.url("/echo"), method="PUT", body="payload",
                      header="hi")
        e = json.loads(v["body"])
        self.assertEqual(e["method"], "PUT")
        self.assertEqual(e["body"], "payload")
        self.assertEqual(e["headers"]["x-test"], "hi")
        # curl's own additions are taken out: no form type, no 100-continue.
        self.assertNotIn("content-type", e["headers"])
        self.assertNotIn("expect", e["headers"])
        v = self.call("/call", url=self.b.url("/echo"), body="x")
        self.assertEqual(json.loads(v["body"])["method"], "POST")
        # A GET with a body stays a GET (it went out as POST), and DELETE
        # without one is a DELETE.
        v = self.call("/call", url=self.b.url("/echo"), method="GET", body="q")
        self.assertEqual((json.loads(v["body"])["method"], json.loads(v["body"])["body"]),
                         ("GET", "q"))
        v = self.call("/call", url=self.b.url("/echo"), method="DELETE")
        self.assertEqual(json.loads(v["body"])["method"], "DELETE")
        v = self.call("/call", url=self.b.url("/echo"), method="HEAD")
        self.assertEqual((v["status"], v["body"]), (200, ""))

    def test_error_statuses_are_answers(self):
        v = self.call("/call", url=self.b.url("/status?code=503"))
        self.assertEqual((v["ok"], v["status"], v["body"]), (True, 503, "status"))

    def test_redirects_off_unless_asked(self):
        v = self.call("/call", url=self.b.url("/redirect"))
        self.assertEqual((v["status"], v["headers"]["location"]), (302, "/ok"))
        v = self.call("/call", url=self.b.url("/redirect"), follow="1")
        self.assertEqual((v["status"], json.loads(v["body"])), (200, {"hello": "world"}))

    def test_slow_backend_times_out(self):
        t0 = time.monotonic()
        v = self.call("/call", url=self.b.url("/slow?s=5"), timeout=0.5)
        self.assertEqual(v, {"ok": False, "err": "timeout", "version": "v1"})
        self.assertLess(time.monotonic() - t0, 4.5)

    def test_refused_port(self):
        v = self.call("/call", url="http://127.0.0.1:%d/" % free_port())
        self.assertEqual((v["ok"], v["err"]), (False, "cannot connect"))

    def test_bad_url(self):
        v = self.call("/call", url="ftp://127.0.0.1/x")
        self.assertEqual((v["ok"], v["err"]), (False, "unsupported URL scheme"))
        v = self.call("/call", url="http://[nonsense")
        self.assertFalse(v["ok"])

    def test_huge_body_capped(self):
        v = self.call("/call", url=self.b.url("/big?n=%d" % (2 << 20)))
        self.assertEqual((v["ok"], v["err"]), (False, "response too large"))
        # Under the default cap (1 MiB) it comes whole; a smaller cap holds.
        v = self.call("/call", url=self.b.url("/big?n=%d" % (1 << 20)))
        self.assertEqual((v["ok"], v["len"]), (True, 1 << 20))
        v = self.call("/call", url=self.b.url("/big?n=1001"), max_body="1000")
        self.assertEqual(v["err"], "response too large")
        v = self.call("/call", url=self.b.url("/big?n=1000"), max_body="1000")
        self.assertEqual(v["len"], 1000)

    def test_bad_header_value_is_a_failure(self):
        v = self.call("/bad_header", url=self.b.url("/ok"))
        self.assertEqual((v["ok"], v["err"]), (False, "invalid header"))
        self.assertEqual(len(self.b.hits), 0)

    def test_connection_reused(self):
        v = self.call("/twice", url=self.b.url("/ok"))
        self.assertTrue(v["ok"], v)
        # Python's server marks each connection by its client port.
        self.b.wait_hits("/ok", 2)

    def test_misuse_raises(self):
        v = self.call("/in_coroutine", url=self.b.url("/ok"))
        self.assertFalse(v["ok"])
        self.assertIn("runs only in a handler, a timer, on_open, on_message or on_close", v["err"])
        v = self.call("/bad_option", url=self.b.url("/ok"))
        self.assertFalse(v["ok"])
        self.assertIn("unknown option 'tiemout'", v["err"])
        # In a filter: the subscription ends with a logged script error.
        mark = self.s.mark()
        with self.s.conn() as c:
            c.send(build_request("GET", "/in_filter?" + q(url=self.b.url("/ok")),
                                 {"Accept": "text/event-stream"}))
            c.read_head()
            with self.s.conn() as p:
                self.assertEqual(p.request("POST", "/pub/hc.filter", body=b"m").status, 200)
            # Filters stay synchronous: the error says why and what instead.
            self.s.wait_log(r"sluice.http.request cannot wait in a filter: a filter runs once "
                            r"per message and subscriber, inside the fan-out", since=mark)
        self.assertEqual(self.b.hits, [])
        self.assertAlive()

    def test_send_at_load_refused(self):
        self.assertEqual(self.call("/top_send"), {"ok": False, "err": "not running"})

    def test_timer_task_waits(self):
        self.assertEqual(self.call_text("/timer?" + q(url=self.b.url("/ok"))), "started")
        deadline = time.monotonic() + 10
        while True:
            v = self.call("/timer_result")
            if "pending" not in v or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(v, {"ok": True, "status": 200, "body": '{"hello":"world"}'})

    def test_counted_in_metrics(self):
        base = self.metric("sluice_lua_http_requests_total")
        fails = self.metric("sluice_lua_http_failures_total")
        self.call("/call", url=self.b.url("/ok"))
        self.call("/call", url="http://127.0.0.1:%d/" % free_port())
        self.assertEqual(self.metric("sluice_lua_http_requests_total"), base + 2)
        self.assertEqual(self.metric("sluice_lua_http_failures_total"), fails + 1)
        self.assertEqual(self.metric("sluice_lua_http_in_flight"), 0)


class BusyTest(HttpCase):
    def test_busy_past_the_cap(self):
        """max_in_flight = 2: a third request while two wait answers busy at
        once; once they are answered, requests go through again."""
        slow = self.b.url("/slow?s=8")
        conns = []
        for _ in range(2):
            c = self.conn(self.s)
            c.send(build_request("GET", "/call?" + q(url=slow)))
            conns.append(c)
        self.b.wait_hits("/slow", 2)
        busy0 = self.metric("sluice_lua_http_busy_total")
        v = self.call("/call", url=self.b.url("/ok"))
        self.assertEqual((v["ok"], v["err"]), (False, "busy"))
        self.assertEqual(self.metric("sluice_lua_http_busy_total"), busy0 + 1)
        self.s.wait_log(r"sluice.http.request refused: busy")
        self.assertEqual(self.metric("sluice_lua_http_in_flight"), 2)
        self.b.release.set()
        for c in conns:
            r = c.read_response()
            self.assertEqual(r.json()["body"], "slow")
        self.assertTrue(self.call("/call", url=self.b.url("/ok"))["ok"])


class LifetimeTest(HttpCase):
    def test_client_leaves_while_handler_waits(self):
        """The handler is resumed with the answer and its response dropped:
        nothing freed is touched (ASan build), the server goes on."""
        for _ in range(2):  # max_in_flight
            c = self.s.conn()
            c.send(build_request("GET", "/call?" + q(url=self.b.url("/slow?s=1"))))
            c.close()
        self.b.wait_hits("/slow", 2)
        deadline = time.monotonic() + 10
        while self.metric("sluice_lua_http_in_flight") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.metric("sluice_lua_http_in_flight"), 0)
        self.assertAlive()

    def test_reload_with_requests_in_flight(self):
        """SIGHUP while a handler and a timer wait: both finish in the old
        generation, new requests run the new one."""
        d = self.tmpdir()
        path = os.path.join(d, "app.lua")
        with open(APP) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text)
        s = self.start(path)
        c = self.conn(s)
        c.send(build_request("GET", "/call?" + q(url=self.b.url("/slow?s=1.5"))))
        with s.conn() as t:
            self.assertEqual(t.get("/timer?" + q(url=self.b.url("/slow?s=1.5"))).text, "started")
        self.b.wait_hits("/slow", 2)
        with open(path + ".tmp", "w") as f:
            f.write(text.replace('local VERSION = "v1"', 'local VERSION = "v2"'))
        os.replace(path + ".tmp", path)
        mark = s.mark()
        s.signal(signal.SIGHUP)
        s.wait_log(r"reloaded app", since=mark)
        with s.conn() as t:
            self.assertEqual(t.get("/version").text, "v2")
        r = c.read_response()
        self.assertEqual((r.json()["body"], r.json()["version"]), ("slow", "v1"))
        self.assertTrue(s.alive())
        self.assertStopsCleanly(s)

    def test_shutdown_with_a_timer_waiting(self):
        """SIGTERM while a timer's request waits on a slow backend: the
        request is failed ("shutting down"), the process exits 0 (and the
        ASan build finds no leak)."""
        with self.s.conn() as t:
            t.get("/timer?" + q(url=self.b.url("/slow?s=30")))
        self.b.wait_hits("/slow", 1)
        self.assertStopsCleanly(self.s)
        self.assertTrue(self.s.find_logs(r"timer retry while stopping: shutting down"),
                        self.s.log_text())


class CallbackTest(HttpCase):
    """sluice.http.request waits in on_message and on_close (issue 29,
    item 1): a WebSocket client's messages are handled one at a time, in
    order, while one waits; a client that leaves while its callout is in
    flight, and on_close's own callout, touch nothing of the connection
    after the wait (ASan build: no use after free, no leak at exit)."""

    def seen(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            v = self.call("/seen")
            if len(v) >= n or time.monotonic() > deadline:
                return v
            time.sleep(0.05)

    def test_on_message_waits_and_keeps_order(self):
        ws = WS.connect(self, self.s, "/ask?" + q(url=self.b.url("")))
        # Three messages in one packet: the first waits on a slow backend.
        for m in ("slow", "one", "two"):
            ws.send_text(m)
        self.b.wait_hits("/slow", 1)
        # While it waits the next messages wait their turn: no other call.
        time.sleep(0.3)
        self.assertEqual([h[1] for h in self.b.hits], ["/slow"])
        self.assertTrue(ws.quiet(0.1))
        self.b.release.set()
        got = [ws.recv_text(), ws.recv_text(), ws.recv_text()]
        self.assertEqual(got, ["slow:slow", "one:" + '{"hello":"world"}',
                               "two:" + '{"hello":"world"}'])
        self.assertEqual([h[1] for h in self.b.hits], ["/slow", "/ok", "/ok"])
        # What it published after the wait was stored, in order.
        deadline = time.monotonic() + 10
        while True:
            with self.s.conn() as c:
                stored = [m["data"] for m in
                          c.get("/answers?since=0-0&timeout=0").json()["messages"]]
            if len(stored) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(stored, got)
        # The connection reads on as before.
        ws.send_text("three")
        self.assertEqual(ws.recv_text(), "three:" + '{"hello":"world"}')
        self.assertEqual([e["send"] for e in self.seen(4)], ["sent"] * 4)

    def test_client_leaves_while_on_message_waits(self):
        """The client closes while its on_message waits: on_close runs at
        once (reading went on); the waiting callback resumes with the
        connection gone, and the message the client sent before leaving
        still runs after it, in order, its conn closed."""
        ws = WS.connect(self, self.s, "/ask?" + q(url=self.b.url("")))
        ws.send_text("slow")
        ws.send_text("after")
        self.b.wait_hits("/slow", 1)
        ws.c.close()
        self.assertEqual(self.seen(1), [{"on_close": True}])
        self.assertEqual([h[1] for h in self.b.hits], ["/slow"])
        self.b.release.set()
        seen = self.seen(3)
        self.assertEqual(seen[1:], [
            {"msg": "slow", "closed": True, "topic": "nil", "send": "connection closed"},
            {"msg": "after", "closed": True, "topic": "nil", "send": "connection closed"}])
        self.assertEqual([h[1] for h in self.b.hits], ["/slow", "/ok"])
        self.assertAlive()

    def test_many_messages_behind_a_wait_pause_the_client(self):
        """Past 16 queued messages the connection is not read; all of them
        run once the wait is over, in order."""
        ws = WS.connect(self, self.s, "/ask?" + q(url=self.b.url("")))
        ws.send_text("slow")
        self.b.wait_hits("/slow", 1)
        sent = ["m%d" % i for i in range(40)]
        for m in sent:
            ws.send_text(m)
        time.sleep(0.3)
        self.assertEqual([h[1] for h in self.b.hits], ["/slow"])
        self.b.release.set()
        got = [ws.recv_text() for _ in range(41)]
        self.assertEqual(got, ["slow:slow"] + [m + ':{"hello":"world"}' for m in sent])

    def test_failure_after_the_wait_closes_1011(self):
        ws = WS.connect(self, self.s, "/ask?" + q(url=self.b.url("")))
        mark = self.s.mark()
        ws.send_text("boom")
        self.assertEqual(ws.recv_close()[0], 1011)
        self.s.wait_log(r"boom after the wait", since=mark)
        self.assertTrue(self.s.find_logs(r"callback=on_message", since=mark), self.s.log_text())
        self.assertAlive()

    def test_on_close_waits_detached(self):
        c = self.conn(self.s)
        c.send(build_request("GET", "/close_asks?" + q(url=self.b.url("/slow?s=30")),
                             {"Accept": "text/event-stream"}))
        c.read_head()
        c.close()
        self.b.wait_hits("/slow", 1)
        self.assertEqual(self.call("/seen"), {})  # cjson: an empty table is {}
        self.b.release.set()
        self.assertEqual(self.seen(1), [{"on_close": True, "status": 200, "closed": True,
                                         "transport": "closed", "topic": "nil",
                                         "send": "connection closed"}])
        self.assertAlive()

    def test_on_open_waits(self):
        """on_open sends a welcome before any delivery, waits on the backend
        while a message is published (it reaches the client meanwhile),
        then sends the answer; a failure after the wait closes with 1011
        (before, sluice.http.request raised in on_open)."""
        ws = WS.connect(self, self.s, "/open_asks?" + q(url=self.b.url("/slow?s=30")))
        self.assertEqual(ws.recv_text(), "welcome")
        self.b.wait_hits("/slow", 1)
        with self.s.conn() as c:
            self.assertEqual(c.request("POST", "/pub/hc.open", body=b"published meanwhile").status,
                             200)
        self.assertEqual(ws.recv_text(), "published meanwhile")
        self.b.release.set()
        self.assertTrue(ws.recv_text().startswith("backend:"))
        self.assertEqual(self.seen(1), [{"on_open": True, "status": 200, "closed": False,
                                         "send": "sent"}])
        # The client gone during the wait: the task resumes with it closed.
        self.b.release.clear()
        ws2 = WS.connect(self, self.s, "/open_asks?" + q(url=self.b.url("/slow?s=30")))
        self.assertEqual(ws2.recv_text(), "welcome")
        self.b.wait_hits("/slow", 2)
        ws2.c.close()
        self.b.release.set()
        self.assertEqual(self.seen(2)[1], {"on_open": True, "status": 200, "closed": True,
                                           "send": "connection closed"})
        # A failure after the wait ends the subscription with 1011.
        ws3 = WS.connect(self, self.s, "/open_asks?" + q(url=self.b.url("/ok"), fail="1"))
        self.assertEqual(ws3.recv_text(), "welcome")
        self.assertTrue(ws3.recv_text().startswith("backend:"))
        self.assertEqual(ws3.recv_close()[0], 1011)
        self.assertAlive()

    def test_shutdown_while_on_message_waits(self):
        """SIGTERM with on_message waiting: the request fails ("shutting
        down"), the task ends, exit 0 (no leak under ASan)."""
        ws = WS.connect(self, self.s, "/ask?" + q(url=self.b.url("")))
        ws.send_text("slow")
        self.b.wait_hits("/slow", 1)
        self.assertStopsCleanly(self.s)


class WebhookTest(HttpCase):
    def test_webhooks(self):
        with self.s.conn() as c:
            r = c.request("POST", "/send?" + q(url=self.b.url("/echo")), body=b'{"event":"join"}')
        self.assertEqual(r.json(), {"ok": True})
        self.b.wait_hits("/echo", 1)
        m, path, headers, body = self.b.hits[-1]
        self.assertEqual((m, body, headers.get("Content-Type")),
                         ("POST", b'{"event":"join"}', "application/json"))
        # Leave: sent from on_close, where nothing may wait.
        c = self.s.conn()
        c.send(build_request("GET", "/hooked?" + q(url=self.b.url("/echo")),
                             {"Accept": "text/event-stream"}))
        c.read_head()
        c.close()
        self.b.wait_hits("/echo", 2)
        self.assertEqual(self.b.hits[-1][3], b'{"event":"leave"}')
        deadline = time.monotonic() + 10
        while self.metric('sluice_webhooks_total{result="sent"}') < 2 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.metric('sluice_webhooks_total{result="sent"}'), 2)

    def test_webhook_never_delays_the_answer(self):
        """A join webhook queued by the handler goes to a backend that holds
        it for 8 s: the subscriber has its stream (and a message) at once."""
        t0 = time.monotonic()
        c = self.conn(self.s)
        c.send(build_request("GET", "/join?" + q(url=self.b.url("/slow?s=8")),
                             {"Accept": "text/event-stream"}))
        head = c.read_head()
        self.assertIn("200", str(head))
        self.b.wait_hits("/slow", 1)  # the webhook was sent, and is held
        with self.s.conn() as p:
            self.assertEqual(p.request("POST", "/pub/hc.join", body=b"hi").status, 200)
        data = b""
        for _ in range(5):
            data += c.read_until(b"\n\n")
            if b"data: hi" in data:
                break
        self.assertIn(b"data: hi", data)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(self.metric('sluice_webhooks_total{result="sent"}'), 0)  # still held
        self.b.release.set()

    def test_queue_full_drops_and_counts(self):
        """One webhook at a time, two waiting: with the backend stalled,
        the fourth is dropped at once, answered "queue full", counted."""
        slow = self.b.url("/slow?s=8")
        answers = []
        for i in range(4):
            with self.s.conn() as c:
                answers.append(c.request("POST", "/send?" + q(url=slow), body=b"{}").json())
        self.assertEqual(answers[:3], [{"ok": True}] * 3)
        self.assertEqual(answers[3], {"ok": False, "err": "queue full"})
        self.assertEqual(self.metric('sluice_webhooks_total{result="dropped"}'), 1)
        self.assertEqual(self.metric("sluice_webhooks_queued"), 2)
        self.b.release.set()
        self.b.wait_hits("/slow", 3)
        deadline = time.monotonic() + 10
        while self.metric('sluice_webhooks_total{result="sent"}') < 3 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.metric('sluice_webhooks_total{result="sent"}'), 3)
        self.assertEqual(self.metric("sluice_webhooks_queued"), 0)

    def test_failed_webhook_counted(self):
        with self.s.conn() as c:
            c.request("POST", "/send?" + q(url=self.b.url("/status?code=500")), body=b"{}")
        deadline = time.monotonic() + 10
        while self.metric('sluice_webhooks_total{result="failed"}') < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.metric('sluice_webhooks_total{result="failed"}'), 1)
        self.s.wait_log(r"webhook failed")


class TlsTest(SluiceTestCase):
    def setUp(self):
        d = self.tmpdir()
        self.cert, key = make_cert(d)
        self.b = Backend(tls=(self.cert, key))
        self.addCleanup(self.b.close)
        self.s = self.start(APP)

    def call(self, **kw):
        with self.s.conn() as c:
            r = c.get("/call?" + q(**kw))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def test_untrusted_certificate_refused_by_default(self):
        v = self.call(url=self.b.url("/ok"))
        self.assertEqual((v["ok"], v["err"]), (False, "tls: certificate not trusted"))
        self.assertEqual(self.b.hits, [])

    def test_trusted_with_its_ca(self):
        v = self.call(url=self.b.url("/ok"), ca=self.cert)
        self.assertEqual((v["ok"], v["status"]), (True, 200), v)
        # The name is checked too: the certificate is for localhost and
        # 127.0.0.1, not for 127.0.0.2.
        v = self.call(url=self.b.url("/ok", host="localhost"), ca=self.cert)
        self.assertTrue(v["ok"], v)


if __name__ == "__main__":
    unittest.main()
