"""The admin listener (--admin-listen, docs/admin.md), judged from outside
with raw sockets: it is separate from the public listener; a token is
required when one is set (401 otherwise, /healthz and /readyz excepted);
/metrics carries the per-worker, cut-off and per-topic series (the topic
series capped); the JSON API lists topics with subscribers and backlog,
connections with transport, address and topics, closes a connection on
its own worker (the subscriber sees its stream end) and publishes; the
stats stream sends history then stats; the dashboard and the JS client are
served from the binary; hostile input gets 4xx, never a crash; SIGTERM
with admin streams open exits 0."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RawConn, SluiceTestCase, build_request

TOKEN = "s3cret-token_ABC"
ADMIN_RE = re.compile(r"admin listening on ([0-9.]+):(\d+)")


class AdminTest(SluiceTestCase):
    def setUp(self):
        d = self.tmpdir()
        tf = os.path.join(d, "token")
        with open(tf, "w") as f:
            f.write("  %s  \n" % TOKEN)
        self.srv = self.start(args=["-w", "2", "--admin-listen", "127.0.0.1:0",
                                    "--admin-token-file", tf],
                              expect_listeners=2)
        m = ADMIN_RE.search(self.srv.log_text())
        self.assertTrue(m, self.srv.log_text())
        self.admin = (m.group(1), int(m.group(2)))
        self.assertNotEqual(self.admin[1], self.srv.port)

    def areq(self, method, path, body=None, token=TOKEN, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        with RawConn.tcp(*self.admin) as c:
            return c.request(method, path, headers=h, body=body)

    def ajson(self, path):
        r = self.areq("GET", path)
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.header("content-type"))
        return r.json()

    def sse_subscribe(self, topic):
        c = RawConn.tcp("127.0.0.1", self.srv.port)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/topics/" + topic, headers={"Accept": "text/event-stream"}))
        self.assertEqual(c.read_head()[1], 200)
        return c

    def publish(self, topic, body):
        with RawConn.tcp("127.0.0.1", self.srv.port) as c:
            r = c.request("POST", "/topics/" + topic, body=body)
        self.assertEqual(r.status, 200, r)
        return r.json()["id"]

    def wait(self, fn, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                self.fail("timed out waiting for " + what)
            time.sleep(0.05)

    def test_token(self):
        for tok in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            r = self.areq("GET", "/api/stats", token=tok)
            self.assertJsonError(r, 401)
            self.assertIn("Bearer", r.header("www-authenticate"))
        r = self.areq("GET", "/api/stats", token=None, headers={"Cookie": "a=b; sluice_admin=" + TOKEN})
        self.assertEqual(r.status, 200, r)
        # The page with ?token= sets the cookie its scripts then carry.
        r = self.areq("GET", "/?token=" + TOKEN, token=None)
        self.assertEqual(r.status, 200, r)
        self.assertIn("sluice_admin=" + TOKEN, r.header("set-cookie"))
        self.assertIn("HttpOnly", r.header("set-cookie"))
        for path in ("/healthz", "/readyz"):
            r = self.areq("GET", path, token=None)
            self.assertEqual(r.status, 200, r)
        self.assertIn(b"sluice_admin_unauthorized_total 4", self.areq("GET", "/metrics").body)

    def test_separate_from_public(self):
        with RawConn.tcp("127.0.0.1", self.srv.port) as c:
            for path in ("/api/stats", "/api/topics", "/dashboard.js"):
                r = c.get(path)
                self.assertEqual(r.status, 404, (path, r))
        r = self.areq("GET", "/topics/x")
        self.assertEqual(r.status, 404, r)

    def test_dashboard_assets(self):
        r = self.areq("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertIn("text/html", r.header("content-type"))
        self.assertIn(b'src="dashboard.js"', r.body)
        self.assertNotIn(b"http://", r.body.replace(b"http://www.w3.org", b""))
        self.assertIn("default-src 'self'", r.header("content-security-policy"))
        js = self.areq("GET", "/dashboard.js")
        self.assertIn(b"from './sluice.js'", js.body)
        client = self.areq("GET", "/sluice.js")
        self.assertEqual(client.status, 200)
        src = os.path.join(os.environ.get("SLUICE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")),
                           "clients", "js", "sluice.js")
        with open(src, "rb") as f:
            self.assertEqual(client.body, f.read())
        self.assertIn("text/css", self.areq("GET", "/dashboard.css").header("content-type"))

    def test_topics_connections_close_publish(self):
        subs = [self.sse_subscribe("adm.room") for _ in range(3)]
        for i in range(5):
            self.publish("adm.room", b"m%d" % i)
        self.publish("adm.quiet", b"x")
        t = self.wait(lambda: [x for x in self.ajson("/api/topics")["topics"]
                               if x["topic"] == "adm.room" and x["subscribers"] == 3
                               and x["messages"] == 5], "adm.room's row")[0]
        self.assertEqual(t["backlog"], 5)
        self.assertRegex(t["newest_id"], r"^[0-9a-z]+-5$")
        q = [x for x in self.ajson("/api/topics")["topics"] if x["topic"] == "adm.quiet"][0]
        self.assertEqual((q["subscribers"], q["backlog"]), (0, 1))
        only = self.ajson("/api/topics?prefix=adm.q")["topics"]
        self.assertEqual([x["topic"] for x in only], ["adm.quiet"])
        lim = self.ajson("/api/topics?limit=1")
        self.assertEqual(len(lim["topics"]), 1)
        self.assertTrue(lim["truncated"])

        conns = self.ajson("/api/connections")["connections"]
        sse = [c for c in conns if c["transport"] == "sse"]
        self.assertEqual(len(sse), 3, conns)
        for c in sse:
            self.assertEqual(c["topics"], ["adm.room"])
            self.assertRegex(c["address"], r"^127\.0\.0\.1:\d+$")
            self.assertGreaterEqual(c["age"], 0)
            self.assertIn(c["worker"], (1, 2))
        ports = {int(c["address"].split(":")[1]): c["id"] for c in sse}
        victim = subs[0]
        vid = ports[victim.local_port()]
        r = self.areq("POST", "/api/connections/%s/close" % vid)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"closed": True})
        self.assertTrue(victim.wait_closed(), "the closed subscriber's stream ended")
        self.wait(lambda: len([c for c in self.ajson("/api/connections")["connections"]
                               if c["transport"] == "sse"]) == 2, "two SSE left")
        self.assertJsonError(self.areq("DELETE", "/api/connections/" + vid), 404)
        # The others still get messages, and an admin publish reaches them.
        r = self.areq("POST", "/api/topics/adm.room?event=note", body=b"from admin")
        self.assertEqual(r.status, 200, r)
        mid = r.json()["id"]
        for s in subs[1:]:
            buf = s.read_until(b"data: from admin\n\n")
            self.assertIn(("id: %s\nevent: note\n" % mid).encode(), buf)
        t = [x for x in self.ajson("/api/topics")["topics"] if x["topic"] == "adm.room"][0]
        self.assertEqual(t["backlog"], 6)

    def test_hostile_input(self):
        bad = [
            ("POST", "/api/connections/1-zz/close", 404),
            ("POST", "/api/connections/0-1/close", 404),
            ("POST", "/api/connections/99999999999999999999-1/close", 404),
            ("POST", "/api/connections/1-%s/close" % ("f" * 40), 404),
            ("POST", "/api/connections/-/close", 404),
            ("GET", "/api/connections/1-1/close", 405),
            ("POST", "/api/topics/bad%20name", 400),
            ("POST", "/api/topics/" + "a" * 201, 400),
            ("POST", "/api/topics/ok?event=", 400),
            ("POST", "/api/topics/ok?event=x.base64", 400),
            ("GET", "/api/topics/ok", 405),
            ("POST", "/api/stats", 405),
            ("GET", "/api/topics?limit=0", 400),
            ("GET", "/api/topics?limit=100000", 400),
            ("GET", "/api/topics?limit=abc", 400),
            ("GET", "/api/connections?limit=-1", 400),
            ("GET", "/api/topics?prefix=" + "p" * 300, 400),
            ("GET", "/nope", 404),
        ]
        for method, path, status in bad:
            r = self.areq(method, path)
            self.assertJsonError(r, status)
        # Limits of the HTTP layer apply too.
        with RawConn.tcp(*self.admin) as c:
            c.send(b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            self.assertIn(r.status, (414, 431))
        self.assertEqual(self.areq("GET", "/healthz").status, 200)
        self.assertTrue(self.srv.alive())

    def test_metrics(self):
        # More topics than a worker reports (its 64 busiest): the busiest
        # one is found wherever it is in the topic table.
        n = 150
        subs = [self.sse_subscribe("m.%03d" % i) for i in range(n)]
        for i in range(n):
            self.publish("m.%03d" % i, b"x")
        for _ in range(3):
            self.publish("m.107", b"again")

        def ready():
            body = self.areq("GET", "/metrics").body.decode()
            return body if 'sluice_topic_messages_total{topic="m.107"} 4' in body else None

        body = self.wait(ready, "m.07's series")
        self.assertEqual(len(re.findall(r"^sluice_topic_messages_total\{", body, re.M)), 20)
        self.assertEqual(len(re.findall(r"^sluice_topic_subscribers\{", body, re.M)), 20)
        for w in ("1", "2"):
            self.assertRegex(body, r'sluice_worker_connections\{worker="%s",transport="sse"\} \d+' % w)
            self.assertRegex(body, r'sluice_worker_messages_published_total\{worker="%s"\} \d+' % w)
        sse = sum(int(v) for v in re.findall(r'sluice_worker_connections\{worker="\d",transport="sse"\} (\d+)', body))
        self.assertEqual(sse, n)
        self.assertIn('sluice_cutoffs_total{reason="slow_consumer",transport="websocket"} 0', body)
        self.assertIn('sluice_connections{transport="sse"} %d' % n, body)
        self.assertIn("sluice_publish_latency_seconds_bucket", body)
        commits = int(re.search(r"^sluice_storage_commit_seconds_count (\d+)$", body, re.M).group(1))
        self.assertGreater(commits, 0)
        self.assertIn('sluice_storage_commit_seconds_bucket{le="+Inf"} %d' % commits, body)
        # Live messages written to their sockets were timed (one delivery
        # in 16 per worker is sampled: n of them give at least one).
        flushed = int(re.search(r"^sluice_publish_flush_seconds_count (\d+)$", body, re.M).group(1))
        self.assertGreaterEqual(flushed, n // 16 - 2)
        self.assertGreater(flushed, 0)
        self.assertIn('sluice_publish_flush_seconds_bucket{le="+Inf"} %d' % flushed, body)
        # Each SSE stream got at least its head, retry line and message.
        sent = int(re.search(r'^sluice_bytes_sent_total\{transport="sse"\} (\d+)$', body, re.M).group(1))
        self.assertGreater(sent, n * 100)
        # Ended streams stay counted.
        for c in subs[:50]:
            c.close()
        time.sleep(0.5)
        body2 = self.areq("GET", "/metrics").body.decode()
        sent2 = int(re.search(r'^sluice_bytes_sent_total\{transport="sse"\} (\d+)$', body2, re.M).group(1))
        self.assertGreaterEqual(sent2, sent)
        self.assertIn("sluice_script_errors_total 0", body)
        # Every line is a comment or "name{labels} value".
        for line in body.splitlines():
            self.assertRegex(line, r'^(# (HELP|TYPE) \S+ .+|[a-z_][a-z0-9_]*(\{[^}]*\})? [0-9.e+-]+)$')
        del subs

    def test_stats_and_stream(self):
        s = self.ajson("/api/stats")
        self.assertEqual(len(s["workers"]), 2)
        self.assertIsNone(s["cluster"])
        self.assertIn("storage", s)
        c = RawConn.tcp(*self.admin)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/api/events", headers={"Authorization": "Bearer " + TOKEN}))
        self.assertIn(b"text/event-stream", c.read_head()[4])
        buf = c.read_until(b"event: history\ndata: ")
        buf = c.read_until(b"event: stats\ndata: ")
        line = c.read_until(b"\n\n")
        stats = json.loads(line)
        self.assertIn("connections", stats)
        self.assertRegex(buf.decode(), r"id: [0-9a-f]+-\d+\n")
        # SIGTERM with the stream open: it ends and the process exits 0.
        self.assertEqual(self.srv.stop(), 0)


FILTER_APP = """local sluice = require "sluice"
sluice.route("GET", "/topics/:t", function(req)
  return req:subscribe(req.params.t, { filter = function(m)
    if m.data == "drop" then return nil end
    return m
  end })
end)
sluice.route("POST", "/topics/:t", function(req)
  return sluice.json(200, { id = sluice.publish(req.params.t, req.body) })
end)
"""


class AdminDropsTest(SluiceTestCase):
    def test_filter_drops_counted(self):
        d = self.tmpdir()
        appf = os.path.join(d, "app.lua")
        with open(appf, "w") as f:
            f.write(FILTER_APP)
        srv = self.start(app=appf, args=["--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        m = ADMIN_RE.search(srv.log_text())
        sub = RawConn.tcp("127.0.0.1", srv.port)
        self.addCleanup(sub.close)
        sub.send(build_request("GET", "/topics/f", headers={"Accept": "text/event-stream"}))
        self.assertEqual(sub.read_head()[1], 200)
        for body in (b"drop", b"keep", b"drop"):
            with srv.conn() as c:
                self.assertEqual(c.request("POST", "/topics/f", body=body).status, 200)
        sub.read_until(b"data: keep\n\n")
        with RawConn.tcp(m.group(1), int(m.group(2))) as c:
            body = c.get("/metrics").body.decode()
        self.assertIn('sluice_drops_total{reason="filter"} 2', body)
        self.assertIn('sluice_drops_total{reason="storage_refused"} 0', body)


class AdminClusterTest(SluiceTestCase):
    @unittest.skipUnless(shutil.which("nats-server"), "nats-server not installed (dev.sh test_deps)")
    def test_readyz_follows_nats(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port),
                                 "-sd", self.tmpdir()], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (nats.kill(), nats.wait(10)))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "nats-server did not listen")
                time.sleep(0.1)
        srv = self.start(args=["--cluster", "nats://127.0.0.1:%d" % port,
                               "--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        m = ADMIN_RE.search(srv.log_text())
        admin = (m.group(1), int(m.group(2)))

        def readyz():
            with RawConn.tcp(*admin) as c:
                return c.get("/readyz")

        self.assertEqual(readyz().status, 200)
        with RawConn.tcp(*admin) as c:
            st = c.get("/api/stats").json()
        self.assertEqual(st["cluster"]["connected"], True)
        nats.terminate()
        nats.wait(10)
        deadline = time.monotonic() + 15
        while True:
            r = readyz()
            if r.status == 503:
                break
            self.assertLess(time.monotonic(), deadline, "/readyz still %d" % r.status)
            time.sleep(0.2)
        self.assertIn(b"NATS", r.body)
        self.assertEqual(RawConn.tcp(*admin).get("/healthz").status, 200)


class AdminDefaultsTest(SluiceTestCase):
    def test_port_alone_is_loopback_and_no_token(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        srv = self.start(args=["--admin-listen", str(port)], expect_listeners=2)
        self.assertIn("admin listening on 127.0.0.1:%d" % port, srv.log_text())
        with RawConn.tcp("127.0.0.1", port) as c:
            r = c.get("/api/stats")
            self.assertEqual(r.status, 200, r)

    def test_from_sluice_config(self):
        d = self.tmpdir()
        tf = os.path.join(d, "tok")
        with open(tf, "w") as f:
            f.write("cfg-token\n")
        appf = os.path.join(d, "app.lua")
        with open(appf, "w") as f:
            f.write('local sluice = require "sluice"\n'
                    'sluice.config{ admin = { listen = "127.0.0.1:0", token_file = %r } }\n'
                    'sluice.route("GET", "/x", function() return 200, "x" end)\n' % tf)
        srv = self.start(app=appf, expect_listeners=2)
        m = ADMIN_RE.search(srv.log_text())
        self.assertTrue(m, srv.log_text())
        with RawConn.tcp(m.group(1), int(m.group(2))) as c:
            self.assertEqual(c.get("/api/stats").status, 401)
            r = c.request("GET", "/api/stats", headers={"Authorization": "Bearer cfg-token"})
            self.assertEqual(r.status, 200, r)
        # The flag wins over the script.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        srv2 = self.start(app=appf, args=["--admin-listen", "127.0.0.1:%d" % port], expect_listeners=2)
        self.assertIn("admin listening on 127.0.0.1:%d" % port, srv2.log_text())
        # A key it does not know is a load error.
        with open(appf, "w") as f:
            f.write('local sluice = require "sluice"\nsluice.config{ admin = { listn = "x" } }\n')
        from harness import run_sluice
        rc, _, err = run_sluice(["--check", appf])
        self.assertEqual(rc, 1)
        self.assertIn("admin.listn", err)

    def test_admin_port_taken(self):
        srv = self.start(args=["--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        port = int(ADMIN_RE.search(srv.log_text()).group(2))
        from harness import run_sluice
        rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", self.tmpdir(),
                                 "--admin-listen", "127.0.0.1:%d" % port])
        self.assertEqual(rc, 1, err)
        self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)
        self.assertTrue(srv.alive())

    def test_bad_token_file(self):
        d = self.tmpdir()
        for content in ("", "two words\n", "x" * 300):
            p = os.path.join(d, "t")
            with open(p, "w") as f:
                f.write(content)
            from harness import run_sluice
            rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", os.path.join(d, "data"),
                                     "--admin-listen", "127.0.0.1:0", "--admin-token-file", p])
            self.assertEqual(rc, 1, err)
            self.assertIn("token", err)


if __name__ == "__main__":
    unittest.main()
