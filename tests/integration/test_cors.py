"""CORS, from outside: preflights and the Access-Control-* headers on every
transport (SSE, long-poll, poll, publish, Lua routes; over HTTP/1.1, and
HTTP/2 with curl), the WebSocket Origin check (over HTTP/1.1 and on an
HTTP/2 stream, RFC 8441), and the default app's rule (any origin subscribes; only origins in
SLUICE_PUBLISH_ORIGINS publish, none by default).

Each request is what a browser sends (an Origin, and for a preflight
Access-Control-Request-Method/-Headers); the answers are read raw.  The
browser's own enforcement is in test_cors_browser.mjs (Chromium).
"""

import base64
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, build_request, run_sluice  # noqa: E402

OTHER = "http://other.test:3000"
LISTED = "https://app.example.com"


def metric(server, name):
    with server.conn() as c:
        text = c.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError("no metric %s" % name)


class Base(SluiceTestCase):
    def req(self, method, path, headers=(), body=None):
        with self.s.conn() as c:
            return c.request(method, path, headers=list(headers), body=body)

    def preflight(self, path, origin, method, req_headers=None):
        h = [("Origin", origin), ("Access-Control-Request-Method", method)]
        if req_headers:
            h.append(("Access-Control-Request-Headers", req_headers))
        return self.req("OPTIONS", path, h)

    def stream_head(self, path, headers):
        """The head of a streaming answer (SSE, WebSocket), read raw."""
        raw = self.conn(self.s)
        raw.send(build_request("GET", path, list(headers)))
        version, status, reason, hdrs, head = raw.read_head()
        return status, {k.lower(): v for k, v in hdrs}

    def ws_head(self, path, origin):
        key = base64.b64encode(os.urandom(16)).decode()
        return self.stream_head(path, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                       ("Sec-WebSocket-Key", key),
                                       ("Sec-WebSocket-Version", "13"), ("Origin", origin)])


class DefaultAppTest(Base):
    def setUp(self):
        self.s = self.start()

    def test_subscribe_preflight_any_origin(self):
        r = self.preflight("/topics/c1", OTHER, "GET", "Last-Event-ID")
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.header("access-control-allow-origin"), "*")
        self.assertEqual(r.header("access-control-allow-methods"), "GET")
        self.assertEqual(r.header("access-control-allow-headers"), "Last-Event-ID")
        self.assertEqual(r.header("access-control-max-age"), "600")

    def test_headers_on_every_read_transport(self):
        o = [("Origin", OTHER)]
        r = self.req("GET", "/topics/c2?timeout=0", o)  # poll
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("access-control-allow-origin"), "*")
        with self.s.conn() as c:
            c.request("POST", "/topics/c2", body=b"m1")
        r = self.req("GET", "/topics/c2?timeout=5&since=", o)  # long-poll
        self.assertEqual(r.header("access-control-allow-origin"), "*", r)
        status, h = self.stream_head("/topics/c2", o + [("Accept", "text/event-stream")])
        self.assertEqual(status, 200)
        self.assertEqual(h.get("access-control-allow-origin"), "*")
        status, h = self.ws_head("/topics/c2", OTHER)  # any origin subscribes
        self.assertEqual(status, 101)
        # Errors of those routes carry it too (a page can read why).
        r = self.req("GET", "/topics/bad%20name?timeout=0", o)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.header("access-control-allow-origin"), "*")

    def test_publish_from_other_origin_refused(self):
        r = self.preflight("/topics/c3", OTHER, "POST", "content-type")
        self.assertEqual(r.status, 403, r)
        self.assertIsNone(r.header("access-control-allow-origin"))
        # A "simple" POST a browser sends without asking: refused, not stored.
        before = metric(self.s, 'sluice_cors_refused_total{kind="request"}')
        r = self.req("POST", "/topics/c3", [("Origin", OTHER), ("Content-Type", "text/plain")],
                     b"forged")
        self.assertEqual(r.status, 403, r)
        self.assertEqual(metric(self.s, 'sluice_cors_refused_total{kind="request"}'), before + 1)
        self.assertEqual(self.req("GET", "/topics/c3?timeout=0&since=0-0").json()["messages"], [])
        # Without Origin (curl, servers) and from the server's own origin: fine.
        self.assertEqual(self.req("POST", "/topics/c3", [], b"a").status, 200)
        own = "%s:%d" % (self.s.host, self.s.port)
        r = self.req("POST", "/topics/c3", [("Host", own), ("Origin", "http://" + own)], b"b")
        self.assertEqual(r.status, 200, r)
        self.assertGreaterEqual(metric(self.s, 'sluice_cors_refused_total{kind="preflight"}'), 1)

    def test_plain_options_still_405(self):
        r = self.req("OPTIONS", "/topics/c4", [("Origin", OTHER)])
        self.assertEqual(r.status, 405, r)


class Http2Test(Base):
    """The same headers over HTTP/2 (h2c with prior knowledge, curl)."""

    def setUp(self):
        self.s = self.start()

    def curl(self, *args):
        p = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "-m", "10"] +
                           list(args), capture_output=True, timeout=20)
        head = p.stdout.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        return head

    @unittest.skipIf(shutil.which("curl") is None, "curl not installed")
    def test_h2(self):
        url = "http://%s:%d/topics/h2c" % (self.s.host, self.s.port)
        head = self.curl("-X", "OPTIONS", url, "-H", "Origin: " + OTHER,
                         "-H", "Access-Control-Request-Method: GET")
        self.assertIn("http/2 204", head)
        self.assertIn("access-control-allow-origin: *", head)
        head = self.curl(url + "?timeout=0", "-H", "Origin: " + OTHER)
        self.assertIn("http/2 200", head)
        self.assertIn("access-control-allow-origin: *", head)
        head = self.curl("-X", "POST", url, "-H", "Origin: " + OTHER, "-d", "x")
        self.assertIn("http/2 403", head)


class PublishOriginsTest(Base):
    def setUp(self):
        os.environ["SLUICE_PUBLISH_ORIGINS"] = LISTED + ", http://localhost:8000"
        try:
            self.s = self.start()
        finally:
            del os.environ["SLUICE_PUBLISH_ORIGINS"]

    def test_listed_origin_publishes(self):
        r = self.preflight("/topics/p1", LISTED, "POST", "Content-Type, Idempotency-Key")
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.header("access-control-allow-origin"), LISTED)
        self.assertIn("Origin", r.header("vary"))
        self.assertEqual(r.header("access-control-allow-methods"), "POST")
        r = self.req("POST", "/topics/p1", [("Origin", LISTED)], b"hi")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("access-control-allow-origin"), LISTED)
        self.assertEqual(r.header("vary"), "Origin")
        # A header outside the list is refused at the preflight.
        self.assertEqual(self.preflight("/topics/p1", LISTED, "POST", "X-Other").status, 403)
        self.assertEqual(self.req("POST", "/topics/p1", [("Origin", OTHER)], b"x").status, 403)


APP = r'''
local sluice = require "sluice"
sluice.config{cors = {origins = {"https://app.example.com"}, credentials = true,
                      expose = {"X-Id"}, max_age = 60}}
sluice.route("GET", "/api/:x", function(req) return 200, "api", {["x-id"] = "7"} end)
sluice.route("POST", "/api/:x", function(req) return 200, "posted" end)
sluice.route("GET", "/open", function(req) return 200, "open" end,
             {cors = {origins = "*", methods = {"GET", "PUT"}, headers = {"X-A"}}})
sluice.route("GET", "/nocors", function(req) return 200, "none" end, {cors = false})
sluice.route("GET", "/topics/:t", function(req) return req:subscribe(req.params.t) end)
sluice.route("GET", "/metrics", function() return 200, sluice.metrics() end, {cors = false})
'''


class AppPolicyTest(Base):
    def setUp(self):
        d = self.tmpdir()
        p = os.path.join(d, "app.lua")
        with open(p, "w") as f:
            f.write(APP)
        self.s = self.start(app=p)

    def test_lua_routes(self):
        r = self.req("GET", "/api/1", [("Origin", LISTED)])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("access-control-allow-origin"), LISTED)
        self.assertEqual(r.header("access-control-allow-credentials"), "true")
        self.assertEqual(r.header("access-control-expose-headers"), "X-Id")
        self.assertEqual(r.header("vary"), "Origin")
        # An unlisted origin may read nothing, may change nothing.
        r = self.req("GET", "/api/1", [("Origin", OTHER)])
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("access-control-allow-origin"))
        self.assertEqual(r.header("vary"), "Origin")
        self.assertEqual(self.req("POST", "/api/1", [("Origin", OTHER)], b"x").status, 403)
        self.assertEqual(self.req("POST", "/api/1", [("Origin", LISTED)], b"x").status, 200)
        r = self.preflight("/api/1", LISTED, "POST", "X-Anything")
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("access-control-max-age"), "60")
        # The route's own policy wins; cors = false turns it off.
        r = self.req("GET", "/open", [("Origin", OTHER)])
        self.assertEqual(r.header("access-control-allow-origin"), "*")
        r = self.preflight("/open", OTHER, "GET", "X-A")
        self.assertEqual((r.status, r.header("access-control-allow-methods")), (204, "GET, PUT"))
        self.assertEqual(self.preflight("/open", OTHER, "GET", "X-B").status, 403)
        r = self.req("GET", "/nocors", [("Origin", LISTED)])
        self.assertIsNone(r.header("access-control-allow-origin"))
        # 404s carry the app's policy.
        r = self.req("GET", "/nowhere", [("Origin", LISTED)])
        self.assertEqual((r.status, r.header("access-control-allow-origin")), (404, LISTED))

    def test_websocket_origin_checked(self):
        before = metric(self.s, 'sluice_cors_refused_total{kind="websocket"}')
        status, h = self.ws_head("/topics/w", OTHER)
        self.assertEqual(status, 403)
        status, h = self.ws_head("/topics/w", "null")
        self.assertEqual(status, 403)
        self.assertEqual(metric(self.s, 'sluice_cors_refused_total{kind="websocket"}'),
                         before + 2)
        self.s.wait_log("WebSocket origin not allowed")  # read from stderr by a thread
        status, h = self.ws_head("/topics/w", LISTED)
        self.assertEqual(status, 101)
        status, h = self.stream_head("/topics/w", [("Origin", LISTED),
                                                  ("Accept", "text/event-stream")])
        self.assertEqual(h.get("access-control-allow-origin"), LISTED)
        self.assertEqual(h.get("access-control-allow-credentials"), "true")


    def test_websocket_origin_checked_over_h2(self):
        """The same check on a WebSocket over HTTP/2 (RFC 8441's extended
        CONNECT, h2c with prior knowledge): an unlisted Origin gets 403 on
        its stream, and the connection goes on; a listed one gets its 200
        and a live WebSocket on the same connection."""
        from test_h2 import DATA, H2Raw, frame, ws_frame

        c = H2Raw(self.s.port)
        self.addCleanup(c.close)
        self.assertTrue(c.until(lambda: 8 in c.settings), "no SETTINGS_ENABLE_CONNECT_PROTOCOL")
        self.assertEqual(c.settings[8], 1)
        before = metric(self.s, 'sluice_cors_refused_total{kind="websocket"}')

        def connect(origin):
            sid = c.new_id()
            c.send(c.headers_frame(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                         (":scheme", "http"), (":path", "/topics/wh2"),
                                         (":authority", "localhost"),
                                         ("sec-websocket-version", "13"), ("origin", origin)],
                                   end_stream=False))
            self.assertTrue(c.until(lambda: sid in c.status or sid in c.resets))
            return sid
        bad = connect(OTHER)
        self.assertEqual(c.status.get(bad), 403, (c.heads.get(bad), c.resets))
        self.assertTrue(c.until(lambda: bad in c.ended or bad in c.resets))
        null = connect("null")
        self.assertEqual(c.status.get(null), 403)
        self.assertEqual(metric(self.s, 'sluice_cors_refused_total{kind="websocket"}'),
                         before + 2)
        good = connect(LISTED)
        self.assertEqual(c.status.get(good), 200, c.heads.get(good))
        # It is a live WebSocket: a ping gets its pong.
        c.send(frame(DATA, 0, good, ws_frame(9, b"p1")))
        self.assertTrue(c.until(lambda: b"\x8a\x02p1" in c.body(good)), c.body(good))
        self.assertIsNone(c.goaway)
        self.assertNotIn(good, c.resets)


class ConfigTest(SluiceTestCase):
    def test_bad_settings_are_load_errors(self):
        d = self.tmpdir()
        bad = [
            'sluice.config{cors = {origin = "*"}}',
            'sluice.config{cors = {origins = 3}}',
            'sluice.config{cors = {origins = {"a", 2}}}',
            'sluice.config{cors = {credentials = "yes"}}',
            'sluice.config{cors = {max_age = -1}}',
            'sluice.config{cors = "*"}',
            'sluice.route("GET", "/x", function() end, {core = {}})',
            'sluice.route("GET", "/x", function() end, {cors = {methods = {"GET,PUT"}}})',
        ]
        for b in bad:
            p = os.path.join(d, "bad.lua")
            with open(p, "w") as f:
                f.write('local sluice = require "sluice"\n' + b + "\n")
            rc, out, err = run_sluice(["--check", p])
            self.assertEqual(rc, 1, b)
            self.assertIn("bad.lua:2", err, b)
        p = os.path.join(d, "ok.lua")
        with open(p, "w") as f:
            f.write(APP)
        rc, out, err = run_sluice(["--check", p])
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    unittest.main()
