"""Presence, counts, rate limits, loud mistakes and multi-topic streams
(issue 29 #4-#7), through the real binary with two workers.

- sluice.presence and sluice.subscribers see the connections of every
  worker (the test opens enough WebSockets that both workers get some, and
  asks from several connections), join and leave events reach only the
  subscribers that asked (opts.presence_events), on_open runs once the
  subscription is live, and all of it survives a reload (SIGHUP);
- sluice.limit is one bucket for every worker, its table is bounded (the
  least recently used bucket goes), /metrics counts, a WebSocket's messages
  can be limited per connection; the default app answers 429 with
  Retry-After past SLUICE_PUBLISH_RATE;
- an unknown or mistyped subscribe option, a bad presence table, a filter
  that returns a number, a handler that returns a wrong value: each logged
  with file:line (the filter once per load); --check rejects a bad listen
  address and a route that can never match; /healthz stays served for an
  app that does not route it, /metrics is the app's own when it does;
- an SSE stream over several topics or a pattern names each message's
  topic (a JSON data line), a single-topic stream is byte for byte as before.

Run: /usr/bin/python3 tests/integration/test_presence.py [-v]
"""

import asyncio
import json
import os
import re
import signal
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import app, build_request, run_sluice  # noqa: E402

import websockets  # noqa: E402  (Debian's python3-websockets)
import websockets.exceptions  # noqa: E402

APP = app("shared_app.lua")
WAIT = 10.0


def arun(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def http(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def wait_until(fn, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached (last: %r)" % (what, v))
        time.sleep(0.05)


class SharedCase(unittest.TestCase):
    ENV = {}

    def setUp(self):
        saved = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(self.ENV)
        try:
            self.s = harness.Server(app=self.APP, args=["--workers", "2"])
            self.addCleanup(self.s.kill)
            self.s.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def get(self, path):
        return http("GET", self.s.url(path))

    def get_json(self, path):
        st, _, body = self.get(path)
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def ws(self, path):
        return websockets.connect("ws://127.0.0.1:%d%s" % (self.s.port, path),
                                  open_timeout=WAIT, close_timeout=2)

    def who(self, topic):
        v = self.get_json("/who/" + topic)
        members = v["members"] if isinstance(v["members"], list) else []
        return [(m["id"], m["info"]["name"]) for m in members], v["count"], v["worker"]


class PresenceTest(SharedCase):
    APP = APP

    def test_presence_and_counts_across_workers(self):
        async def body():
            conns, workers = [], set()
            for i in range(12):  # both workers get some (SO_REUSEPORT)
                w = await self.ws("/room/lobby?id=u%d&name=N%d" % (i % 4, i % 4))
                first = await asyncio.wait_for(w.recv(), WAIT)  # on_open's frame
                self.assertTrue(first.startswith("open "), first)
                workers.add(first.split()[1])
                conns.append(w)
            self.assertEqual(workers, {"1", "2"}, "both workers hold connections")
            expect = [("u%d" % i, "N%d" % i) for i in range(4)]
            seen = set()
            for _ in range(8):  # answered by both workers, the same
                members, count, worker = self.who("lobby")
                self.assertEqual(members, expect)
                self.assertEqual(count, 12)
                seen.add(worker)
            self.assertEqual(self.get_json("/count?name=lobby")["count"], 12)
            # u3 has three connections: it leaves with its last one
            for w in (conns[3], conns[7]):
                await w.close()
            wait_until(lambda: self.who("lobby")[1] == 10, "count 10")
            self.assertEqual(self.who("lobby")[0], expect)
            await conns[11].close()
            wait_until(lambda: self.who("lobby")[0] == expect[:3], "u3 gone")
            for w in conns:
                await w.close()
            wait_until(lambda: self.who("lobby")[1] == 0, "count 0")
            self.assertEqual(self.who("lobby")[0], [])

        arun(body())

    def test_join_leave_events_only_for_who_asks(self):
        async def body():
            watcher = await self.ws("/room/ev?events=1")
            plain = await self.ws("/room/ev")
            for w in (watcher, plain):
                await asyncio.wait_for(w.recv(), WAIT)  # on_open's frame
            alice = await self.ws("/room/ev?id=alice&name=Alice")
            await asyncio.wait_for(alice.recv(), WAIT)
            env = json.loads(await asyncio.wait_for(watcher.recv(), WAIT))
            self.assertEqual(env["event"], "sluice.join")
            self.assertEqual(env["topic"], "ev")
            self.assertEqual(json.loads(env["data"]),
                             {"topic": "ev", "id": "alice", "info": {"name": "Alice"}})
            await alice.close()
            env = json.loads(await asyncio.wait_for(watcher.recv(), WAIT))
            self.assertEqual(env["event"], "sluice.leave")
            self.assertEqual(json.loads(env["data"])["id"], "alice")
            # the plain subscriber got neither: its next frame is the sentinel
            st, _, _ = http("POST", self.s.url("/pub/ev"), b"sentinel")
            self.assertEqual(st, 200)
            env = json.loads(await asyncio.wait_for(plain.recv(), WAIT))
            self.assertEqual(env["data"], "sentinel")
            env = json.loads(await asyncio.wait_for(watcher.recv(), WAIT))
            self.assertEqual(env["data"], "sentinel")
            await watcher.close()
            await plain.close()

        arun(body())

    def test_survives_reload(self):
        async def body():
            a = await self.ws("/room/gen?id=alice")
            b = await self.ws("/room/gen?id=bob")
            for w in (a, b):
                await asyncio.wait_for(w.recv(), WAIT)
            mark = self.s.mark()
            self.s.signal(signal.SIGHUP)
            self.s.wait_log(r"reloaded", since=mark)
            self.s.wait_log(r"reloaded", since=mark)  # both workers
            members, count, _ = self.who("gen")
            self.assertEqual([m[0] for m in members], ["alice", "bob"])
            self.assertEqual(count, 2)
            c = await self.ws("/room/gen?id=carol")
            await asyncio.wait_for(c.recv(), WAIT)
            self.assertEqual(self.who("gen")[1], 3)
            await a.close()  # a connection of the old generation leaves
            wait_until(lambda: [m[0] for m in self.who("gen")[0]] == ["bob", "carol"],
                       "alice gone after the reload")
            for w in (b, c):
                await w.close()
            wait_until(lambda: self.who("gen")[1] == 0, "count 0")

        arun(body())

    def test_long_poll_and_sse_count_while_open(self):
        c = self.s.conn(timeout=WAIT)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/room/lp?id=poller&timeout=30"))
        wait_until(lambda: self.who("lp")[1] == 1, "the long-poll counted")
        self.assertEqual(self.who("lp")[0], [("poller", "poller")])
        http("POST", self.s.url("/pub/lp"), b"x")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        wait_until(lambda: self.who("lp")[1] == 0, "the answered poll no longer counted")
        self.assertEqual(self.who("lp")[0], [])


class LimitTest(SharedCase):
    APP = APP

    def test_bucket_shared_by_workers(self):
        results = []
        for _ in range(10):  # new connections: both workers answer
            results.append(self.get_json("/limit?key=k1&rate=0.5&burst=4"))
        self.assertEqual([r["ok"] for r in results], [True] * 4 + [False] * 6)
        for r in results[4:]:
            self.assertGreater(r["retry_after"], 0)
            self.assertLessEqual(r["retry_after"], 2.0)
        self.assertTrue(self.get_json("/limit?key=other&rate=0.5&burst=4")["ok"])
        st, _, body = self.get("/limit?key=&rate=1&burst=1")
        self.assertEqual(st, 500)
        self.s.wait_log(r"shared_app\.lua:\d+: bad argument #1 to 'limit'")

    def test_websocket_messages_per_connection(self):
        async def body():
            a = await self.ws("/wsrate/r")
            b = await self.ws("/wsrate/r")
            for _ in range(2):
                await a.send("m")
                self.assertEqual(await asyncio.wait_for(a.recv(), WAIT), "ok")
            await a.send("m")  # the third within a second: closed
            with self.assertRaises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(a.recv(), WAIT)
            self.assertEqual(a.close_code, 1008)
            await b.send("m")  # another connection, its own bucket
            self.assertEqual(await asyncio.wait_for(b.recv(), WAIT), "ok")
            await b.close()

        arun(body())

    def test_table_is_bounded(self):
        st, _, body = self.get("/limit_many?n=70000")
        self.assertEqual(st, 200, body)
        _, _, text = self.get("/builtin_metrics")
        text = text.decode()
        self.assertIn("sluice_rate_limit_buckets 65536\n", text)
        evicted = int(re.search(r"^sluice_rate_limit_evictions_total (\d+)$", text, re.M).group(1))
        self.assertGreaterEqual(evicted, 70000 - 65536)


class DefaultAppLimitTest(SharedCase):
    APP = None
    ENV = {"SLUICE_PUBLISH_RATE": "1", "SLUICE_PUBLISH_BURST": "3"}

    def test_429_with_retry_after(self):
        got = []
        for i in range(5):
            st, headers, body = http("POST", self.s.url("/topics/lim"), b"m%d" % i)
            got.append(st)
            if st == 429:
                self.assertEqual(headers.get("retry-after"), "1")
                self.assertEqual(json.loads(body), {"error": "too many publishes"})
        self.assertEqual(got[:3], [200, 200, 200])
        self.assertIn(429, got[3:])
        _, _, metrics = self.get("/metrics")
        text = metrics.decode()
        self.assertRegex(text, r'sluice_rate_limit_total\{result="limited"\} [1-9]')
        self.assertIn("sluice_rate_limit_buckets 1", text)
        self.assertIn("sluice_presence_members 0", text)
        self.assertIn("sluice_presence_refused_total 0", text)
        self.assertIn("sluice_presence_events_dropped_total 0", text)


class MistakesTest(SharedCase):
    APP = APP

    def test_subscribe_option_mistakes_name_file_line(self):
        cases = {
            "unknown": r"shared_app\.lua:\d+: req:subscribe: unknown option 'last_event_idd'",
            "type": r"shared_app\.lua:\d+: req:subscribe: opts\.skip_self must be a boolean, not a string",
            "presence": r"shared_app\.lua:\d+: req:subscribe: unknown key 'name' in opts\.presence",
            "info": r"shared_app\.lua:\d+: req:subscribe: opts\.presence\.info is \d+ bytes of JSON",
            "format": r"shared_app\.lua:\d+: req:subscribe: opts\.format must be",
        }
        for what, pattern in cases.items():
            st, _, _ = self.get("/bad/" + what)
            self.assertEqual(st, 500, what)
            self.s.wait_log(pattern)

    def test_filter_wrong_result_logged_once(self):
        async def body():
            w = await self.ws("/bad/filter")
            for i in range(3):
                st, _, _ = http("POST", self.s.url("/pub/x"), b"m%d" % i)
                self.assertEqual(st, 200)
            self.s.wait_log(r"filter returned neither")
            # a sentinel after them: nothing came through (dropped)
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(w.recv(), 1.0)
            await w.close()

        arun(body())
        lines = self.s.find_logs(r"filter returned neither")
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"shared_app\.lua:\d+")

    def test_handler_wrong_result_names_route_and_line(self):
        st, _, _ = self.get("/wrong")
        self.assertEqual(st, 500)
        line = self.s.wait_log(r"handler must return a status").string
        self.assertRegex(line, r'route="?GET /wrong')
        self.assertRegex(line, r'handler="?\S*shared_app\.lua:\d+')

    def test_builtin_healthz_and_own_metrics(self):
        st, _, body = self.get("/healthz")
        self.assertEqual((st, body), (200, b"ok"))
        st, _, body = self.get("/metrics")
        self.assertEqual((st, body), (200, b"custom metrics"))


class CheckTest(unittest.TestCase):
    def check(self, text):
        d = harness.tempfile.mkdtemp(prefix="sluice-check-")
        self.addCleanup(harness.shutil.rmtree, d, True)
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write(text)
        return run_sluice(["--check", path])

    def test_bad_listen_address(self):
        for addr in ("1.2.3:80", "127.0.0.1:99999", "[::1]:80x", "nohost"):
            rc, _, err = self.check('local s = require "sluice"\n'
                                    's.config{ listen = { "127.0.0.1:0", "%s" } }\n' % addr)
            self.assertEqual(rc, 1, addr)
            self.assertIn("app.lua:2:", err)
            self.assertIn("bad address '%s'" % addr, err)
        rc, _, err = self.check('local s = require "sluice"\n'
                                's.config{ tls = { listen = "1.2.3.4:443x" } }\n')
        self.assertEqual(rc, 1)
        self.assertIn("app.lua:2:", err)
        self.assertIn("tls.listen: bad address '1.2.3.4:443x'", err)
        rc, _, err = self.check('local s = require "sluice"\n'
                                's.config{ admin = { listen = "::1:9" } }\n')
        self.assertEqual(rc, 1)
        self.assertIn("app.lua:2:", err)
        self.assertIn("admin.listen: bad address '::1:9'", err)
        rc, _, err = self.check('require("sluice").config{ listen = "localhost:0",'
                                ' admin = { listen = "[::1]:0" } }\n')
        self.assertEqual(rc, 0, err)

    def test_route_that_can_never_match(self):
        rc, _, err = self.check('local s = require "sluice"\n'
                                's.route("GET", "/a/:id", function() return 200 end)\n'
                                's.route("GET", "/a/:name", function() return 200 end)\n')
        self.assertEqual(rc, 1)
        self.assertIn("app.lua:3:", err)
        self.assertIn("route GET /a/:name can never match: GET /a/:id", err)
        # other methods, other shapes: fine
        rc, _, err = self.check('local s = require "sluice"\n'
                                's.route("GET", "/a/:id", function() return 200 end)\n'
                                's.route("POST", "/a/:name", function() return 200 end)\n'
                                's.route("GET", "/a/b", function() return 200 end)\n'
                                's.route("GET", "/a/*", function() return 200 end)\n')
        self.assertEqual(rc, 0, err)


class MultiTopicTest(SharedCase):
    APP = APP

    def sse(self, path):
        c = self.s.conn(timeout=WAIT)
        self.addCleanup(c.close)
        c.send(build_request("GET", path, [("Accept", "text/event-stream")]))
        head = c.read_head()
        self.assertEqual(head[1], 200)
        c.read_until(b"\n\n")  # retry:
        return c

    def test_sse_names_topic_over_several(self):
        many = self.sse("/multi?t=ta,tb")
        pattern = self.sse("/multi?t=tb*")
        one = self.sse("/multi?t=ta")
        wait_until(lambda: self.get_json("/count?name=ta")["count"] == 2, "subscribed")
        wait_until(lambda: self.get_json("/count?name=tb*")["count"] == 1, "subscribed")
        _, _, b1 = http("POST", self.s.url("/pub/ta?event=x"), b"hello\nworld")
        _, _, b2 = http("POST", self.s.url("/pub/tb"), b'{"k":1}')
        id1, id2 = json.loads(b1)["id"], json.loads(b2)["id"]
        ev = many.read_until(b"\n\n").decode()
        self.assertEqual(ev, "id: %s\nevent: x\ndata: %s\n\n" % (id1, json.dumps(
            {"id": id1, "topic": "ta", "event": "x", "data": "hello\nworld"},
            separators=(",", ":"))))
        ev = many.read_until(b"\n\n").decode()
        data = json.loads(ev.split("data: ", 1)[1])
        self.assertEqual(data, {"id": id2, "topic": "tb", "event": None, "data": '{"k":1}'})
        ev = pattern.read_until(b"\n\n").decode()
        self.assertEqual(json.loads(ev.split("data: ", 1)[1])["topic"], "tb")
        # one topic: the plain event, byte for byte
        ev = one.read_until(b"\n\n")
        self.assertEqual(ev, b"id: %s\nevent: x\ndata: hello\ndata: world\n\n" % id1.encode())

    def test_long_poll_items_name_topic(self):
        _, _, b = http("POST", self.s.url("/pub/lpa"), b"one")
        first = json.loads(b)["id"]
        http("POST", self.s.url("/pub/lpb"), b"two")
        since = first.split("-")[0] + "-0"  # before any message of this epoch
        st, _, body = self.get("/multi?t=lpa,lpb&since=%s&timeout=0" % since)
        self.assertEqual(st, 200, body)
        v = json.loads(body)
        self.assertEqual([(m["topic"], m["data"]) for m in v["messages"]],
                         [("lpa", "one"), ("lpb", "two")])


if __name__ == "__main__":
    unittest.main()
