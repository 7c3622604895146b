"""Cluster mode (SPEC.md "Cluster", docs/cluster.md): sluice nodes that
share their topics through NATS JetStream, tested on a real 3-server NATS
cluster with JetStream (tests/integration/nats_cluster.py) and two sluice
nodes on loopback.  No mock anywhere.

- Publish anywhere, deliver everywhere: messages published on both nodes
  reach SSE, WebSocket and long-poll subscribers on both nodes, every one
  in the same order (the stream's), each publish answered with the ID its
  subscribers see.
- One ID space: a client that resumes on the other node with the ID it
  last saw (Last-Event-ID, since) gets exactly what it missed; an unknown
  ID gets everything retained and the gap signal.
- Retention that deletes what a node cut off from NATS had not delivered
  yet: that node's live subscribers of the topic get the gap signal (SSE,
  WebSocket JSON, a waiting long-poll), those of other topics none.
- A NATS server killed (SIGKILL) under a steady publish load: every
  acknowledged publish is delivered, exactly once (publishers retry a 503
  with their Idempotency-Key); publishing resumes by itself.
- The stream's leader paused (SIGSTOP) 10 s under load: every publish is
  answered within a bound, everything acknowledged reaches the other node
  once and in order.
- A resume waiting on a paused NATS stalls no other connection of its
  worker.
- Every NATS server down: publishes answer 503 with a JSON error within a
  bounded time, subscribers stay connected, and when NATS is back
  publishing works again with no restart and reaches them.
- A stream that exists with other settings is refused at start with a
  clear error; --check validates the cluster block.

Skipped, with a message, only where nats-server is not installed (dev.sh
installs it)."""

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SOURCE_DIR, RawConn, SluiceTestCase, build_request, free_port,  # noqa: E402
                     make_cert, run_sluice, ws_open, ws_read_frame)
from nats_cluster import NatsCluster, have_nats, nats_version  # noqa: E402

# The load tests publish one at a time as fast as the cluster answers
# (over 1,000 a second since publishes no longer wait for the NATS client's
# flusher): the default app's per-address publish limit is not under test.
os.environ["SLUICE_PUBLISH_RATE"] = "0"

SSE_EVENT = re.compile(rb"((?:[a-z]+: [^\n]*\n)+)\n")


def lua_value(v):
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(lua_value(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join("%s = %s" % (k, lua_value(x)) for k, x in v.items()) + "}"
    return json.dumps(v)


def cluster_app(dirname, extra="", **cluster):
    """The default app with sluice.config{cluster={...}} (and `extra` Lua)
    in front."""
    with open(os.path.join(SOURCE_DIR, "scripts", "default.lua")) as f:
        src = f.read()
    fields = ", ".join("%s = %s" % (k, lua_value(v)) for k, v in cluster.items())
    anchor = 'local sluice = require "sluice"\n'
    src = src.replace(anchor, anchor + "sluice.config{cluster = {%s}}\n" % fields + extra, 1)
    # A wildcard subscription (the default app takes exact names only).
    src += ('\nsluice.route("GET", "/wild/:prefix", function(req)\n'
            '  return req:subscribe(req.params.prefix .. "*")\nend)\n')
    path = os.path.join(dirname, "cluster_app.lua")
    with open(path, "w") as f:
        f.write(src)
    return path


def sse_open(conn, path, headers=()):
    conn.send(build_request("GET", path, [("Accept", "text/event-stream")] + list(headers)))
    _, status, _, _, head = conn.read_head()
    assert status == 200, head


def sse_next(conn):
    """The next event that has data (id, event, data), skipping retry and
    comment lines."""
    for _ in range(3):  # a heartbeat comes every 15 s: two of them and no data is a failure
        block = conn.read_until(b"\n\n")
        fields = {}
        for line in block.split(b"\n"):
            if line.startswith(b":") or not line:
                continue
            k, _, v = line.partition(b": ")
            fields[k] = v
        if b"data" in fields:
            return (fields.get(b"id", b"").decode(), fields.get(b"event", b"").decode(),
                    fields[b"data"])
    raise AssertionError("no SSE event within two heartbeats")


def ws_next(conn):
    """The next data frame's payload (pings skipped)."""
    while True:
        op, payload = ws_read_frame(conn)
        if op in (1, 2):
            return payload


@unittest.skipUnless(have_nats(), "nats-server not installed (dev.sh installs it)")
class ClusterTest(SluiceTestCase):
    NATS = 3

    def setUp(self):
        self.nats = NatsCluster(self.NATS)
        self.addCleanup(self.nats.cleanup)
        self.nats.start_all()

    def node(self, replicas=3, stream=None, workers=2, extra="", servers=None):
        d = self.tmpdir()
        settings = {"servers": servers or self.nats.urls(), "replicas": replicas}
        if stream:
            settings["stream"] = stream
        return self.start(app=cluster_app(d, extra, **settings), args=["-w", str(workers)])

    def publish(self, srv, topic, body, key=None, conn=None):
        headers = [("Idempotency-Key", key)] if key else []
        if conn is None:
            with srv.conn() as c:
                return c.request("POST", "/topics/" + topic, headers=headers, body=body)
        return conn.request("POST", "/topics/" + topic, headers=headers, body=body)

    def metrics(self, srv):
        with srv.conn() as c:
            return c.get("/metrics").body.decode()

    @contextlib.contextmanager
    def all_nats_paused(self):
        """Every NATS server stopped (SIGSTOP) for the block: nothing
        reads the nodes' sockets or answers them."""
        for i in range(3):
            self.nats.kill(i, signal.SIGSTOP)
        time.sleep(0.2)
        try:
            yield
        finally:
            for i in range(3):
                self.nats.kill(i, signal.SIGCONT)

    def answered_in(self, srv):
        """Seconds another connection of srv waits for an answer."""
        t0 = time.monotonic()
        with srv.conn(timeout=30) as c:
            r = c.get("/topics/other?timeout=0")
        self.assertEqual(r.status, 200, r)
        return time.monotonic() - t0

    def longpoll(self, srv, topic, since, timeout=10, retry_503=False):
        """One answer; with retry_503, a 503 (the read of the stream
        failed: a leader being elected, NATS paused) is asked again, as a
        client does, for at most 30 s."""
        deadline = time.monotonic() + 30
        while True:
            with srv.conn(timeout=timeout + 10) as c:
                r = c.get("/topics/%s?since=%s&timeout=%d" % (topic, quote(since), timeout))
            if r.status != 503 or not retry_503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(r.status, 200, r)
        return r.json()

    # -- publish anywhere, deliver everywhere, one ID space --------------------

    def test_publish_anywhere_deliver_everywhere_and_resume_anywhere(self):
        a = self.node()
        b = self.node()
        subs = []
        for srv in (a, b):
            s = self.conn(srv)
            sse_open(s, "/topics/room.1")
            w = self.conn(srv)
            ws_open(w, "/topics/room.1")
            subs.append(("sse", s))
            subs.append(("ws", w))
        # The long-poll's cursor: "now" on B, before any publish.
        first = self.longpoll(b, "room.1", "", timeout=0)
        cursor = first["last_id"]

        ids, bodies = [], []
        ca, cb = self.conn(a), self.conn(b)
        for i in range(30):
            body = b"m%02d" % i
            r = self.publish(a if i % 2 == 0 else b, "room.1", body, conn=ca if i % 2 == 0 else cb)
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
            bodies.append(body)
        # IDs are the stream's order: they increase across both nodes.
        seqs = [int(x.split("-")[1]) for x in ids]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(ids)), 30)
        self.assertEqual(len({x.split("-")[0] for x in ids}), 1, "one epoch")

        for kind, c in subs:
            got = []
            for _ in range(30):
                if kind == "sse":
                    mid, _, data = sse_next(c)
                    got.append((mid, data))
                else:
                    got.append((None, ws_next(c)))
            self.assertEqual([d for _, d in got], bodies, kind)
            if kind == "sse":
                self.assertEqual([m for m, _ in got], ids)

        # Long-poll on B from before the first publish: everything, in order.
        seen = []
        for _ in range(40):
            if len(seen) >= 30:
                break
            j = self.longpoll(b, "room.1", cursor)
            seen += j["messages"]
            cursor = j["last_id"]
        self.assertEqual([m["id"] for m in seen], ids)
        self.assertEqual([m["data"].encode() for m in seen], bodies)

        # Resume on the other node: exactly what was missed, then live.
        for srv in (a, b):
            c = self.conn(srv)
            sse_open(c, "/topics/room.1", [("Last-Event-ID", ids[9])])
            got = [sse_next(c) for _ in range(len(ids) - 10)]
            self.assertEqual([g[0] for g in got], ids[10:])
            self.assertEqual([g[2] for g in got], bodies[10:])
            r = self.publish(a, "room.1", b"marker-" + srv.url("").encode())
            self.assertEqual(r.status, 200, r)
            nxt = sse_next(c)
            self.assertEqual(nxt[0], r.json()["id"], "no duplicate, no extra before the marker")
            ids.append(nxt[0])
            bodies.append(nxt[2])
        j = self.longpoll(a, "room.1", ids[27], timeout=0)
        self.assertEqual([m["id"] for m in j["messages"]], ids[28:])
        self.assertNotIn("gap", j)

        # An ID from elsewhere (another stream's epoch): everything retained,
        # and the gap signal.
        j = self.longpoll(b, "room.1", "zzzz-5", timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["id"] for m in j["messages"]], ids)

        # Several topics and a wildcard resume on one ID.
        self.assertEqual(self.publish(b, "room.2", b"other").status, 200)
        c = self.conn(a)
        sse_open(c, "/wild/room.", [("Last-Event-ID", ids[-1])])
        mid, _, data = sse_next(c)
        # (A wildcard's SSE events carry the JSON envelope: they need the topic.)
        env = json.loads(data)
        self.assertEqual((env["topic"], env["data"], env["id"]), ("room.2", "other", mid))

    def test_resume_id_past_the_stream_is_unknown(self):
        # An ID of the stream's epoch whose seq the stream never had (past
        # its last message): as any unknown ID, everything retained and
        # the gap signal, on SSE, WebSocket and long-poll; live after.
        a = self.node(workers=1)
        ids = [self.publish(a, "past", b"p%d" % i).json()["id"] for i in range(3)]
        past = ids[0].split("-")[0] + "-999999999"
        j = self.longpoll(a, "past", past, timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["id"] for m in j["messages"]], ids)
        self.assertNotEqual(j["last_id"], past)
        c = self.conn(a)
        sse_open(c, "/topics/past", [("Last-Event-ID", past)])
        self.assertEqual(sse_next(c)[1], "sluice.gap")
        self.assertEqual([sse_next(c)[0] for _ in range(3)], ids)
        w = self.conn(a)
        ws_open(w, "/topics/past?format=json&last_event_id=" + quote(past))
        self.assertTrue(json.loads(ws_next(w)).get("gap"))
        self.assertEqual([json.loads(ws_next(w))["id"] for _ in range(3)], ids)
        r = self.publish(a, "past", b"live")
        self.assertEqual(sse_next(c)[0], r.json()["id"])
        self.assertEqual(json.loads(ws_next(w))["id"], r.json()["id"])
        # The stream's last ID itself: nothing to read, then live.
        c2 = self.conn(a)
        sse_open(c2, "/topics/past", [("Last-Event-ID", r.json()["id"])])
        r2 = self.publish(a, "past", b"next")
        self.assertEqual(sse_next(c2)[0], r2.json()["id"])

    def test_presence_and_counts_are_cluster_wide(self):
        # sluice.subscribers and sluice.presence count every node's
        # subscriptions: each node sends the others its table (notes over
        # NATS, outside the stream); a member with connections on two nodes
        # is one member; a node that dies is forgotten within seconds.
        extra = (
            'sluice.route("GET", "/who/:room", function(req)\n'
            '  return req:subscribe("room." .. req.params.room,\n'
            '    {presence = {id = req.query.user, info = {name = req.query.user}}})\n'
            'end)\n'
            'sluice.route("GET", "/count/:room", function(req)\n'
            '  local t = "room." .. req.params.room\n'
            '  local ids = {}\n'
            '  for _, m in ipairs(sluice.presence(t)) do ids[#ids + 1] = m.id .. "/" .. m.info.name end\n'
            '  table.sort(ids)\n'
            '  return sluice.json(200, {n = sluice.subscribers(t), ids = ids})\n'
            'end)\n')
        a = self.node(extra=extra)
        b = self.node(extra=extra)

        def count(srv):
            with srv.conn() as c:
                r = c.get("/count/lobby")
            self.assertEqual(r.status, 200, r)
            return r.json()

        def wait_for(want, nodes, what):
            deadline = time.monotonic() + 10
            while True:
                got = [count(n) for n in nodes]
                if all(g["n"] == want[0] and g["ids"] == want[1] for g in got):
                    return
                self.assertLess(time.monotonic(), deadline, "%s: %r" % (what, got))
                time.sleep(0.1)

        conns = {}
        for name, srv, user in (("a-alice", a, "alice"), ("b-bob", b, "bob"),
                                ("b-alice", b, "alice")):
            c = self.conn(srv)
            sse_open(c, "/who/lobby?user=" + user)
            conns[name] = c
        wait_for((3, ["alice/alice", "bob/bob"]), (a, b), "three subscriptions, two members")
        conns["b-bob"].close()
        wait_for((2, ["alice/alice"]), (a, b), "bob left")
        self.assertRegex(self.metrics(a), r'(?m)^sluice_presence_notes_total\{direction="received"\} [1-9]')
        # Node B dies: A forgets its subscriptions (its own alice stays).
        b.signal(signal.SIGKILL)
        b.wait_exit()
        wait_for((1, ["alice/alice"]), (a,), "node B gone")

    def test_multi_topic_resume_under_load_loses_nothing(self):
        # A resume over several topics reads them one after another: a
        # message of the first published while the second is read has a
        # seq below the second's newest, so a page that delivered up to
        # that one made the client's cursor pass it (it was lost; its
        # chained long-polls missed some in most runs).  Pages now stop at
        # what this node's consumer has delivered; the rest comes live.
        a = self.node()
        b = self.node()
        first = self.publish(a, "mt.a", b"start").json()["id"]
        sent, errors = [], []

        def publisher():
            try:
                with a.conn(timeout=30) as c:
                    for i in range(600):
                        body = b"m-%04d" % i
                        r = self.publish(a, "mt.%s" % "ab"[i % 2], body, conn=c)
                        if r.status != 200:
                            errors.append(r)
                            return
                        sent.append(body.decode())
            except Exception as e:
                errors.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        got, since = [], first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (t.is_alive() or len(got) < len(sent)):
            with b.conn(timeout=20) as c:
                r = c.get("/wild/mt.?since=%s&timeout=2" % quote(since))
            self.assertEqual(r.status, 200, r)
            j = r.json()
            got += [m["data"] for m in j["messages"]]
            since = j["last_id"]
        t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(len(sent), 600)
        missing = sorted(set(sent) - set(got))
        self.assertEqual(missing, [], "%d of 600 never delivered: %s" % (len(missing), missing[:40]))
        self.assertEqual(len(got), len(set(got)), "delivered twice")
        self.assertEqual(got, sent)

    def test_concurrent_publishes_on_two_workers_are_each_acknowledged_once(self):
        # 8 clients publish at once to a node of two workers, so publishes
        # are queued by both workers while the client's threads answer
        # earlier ones: every publish is answered 200 with its own ID, and
        # another node's stream delivers each once, in ID order.  Under
        # ThreadSanitizer (CI's threads pass) this is where the in-flight
        # count was written under its lock and read without it.
        a = self.node(workers=2)
        b = self.node(workers=1)
        c = self.conn(b, timeout=30)
        c.send(build_request("GET", "/topics/cp", [("Accept", "text/event-stream")]))
        _, status, _, _, head = c.read_head()
        self.assertEqual(status, 200, head)
        ids, errors = [], []

        def publisher(k):
            try:
                with a.conn(timeout=30) as pc:
                    for i in range(40):
                        r = self.publish(a, "cp", b"p%d-%02d" % (k, i), conn=pc)
                        if r.status != 200:
                            errors.append(r)
                            return
                        ids.append(r.json()["id"])
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), 320)
        self.assertEqual(len(set(ids)), 320, "an ID given twice")
        got = [sse_next(c) for _ in range(320)]
        self.assertEqual(sorted(i for i, _, _ in got), sorted(ids))
        self.assertEqual(len({d for _, _, d in got}), 320, "delivered twice")
        seqs = [int(i.rsplit("-", 1)[1]) for i, _, _ in got]
        self.assertEqual(seqs, sorted(seqs), "out of the stream's order")

    def test_chained_longpolls_under_concurrent_publishes_lose_nothing(self):
        # Long-polls that each ask again from their answer's last_id, on
        # the node that publishes.  A publish's PubAck reaches its worker
        # before the stream's copy, which is what the worker delivers; the
        # ack made the worker's "newest delivered" its seq, so a poll that
        # caught up then (or started at it) waited for live messages past
        # that seq and dropped the copy when it came (a stress of 20
        # pollers lost 50-66 of 6,400 deliveries per run, with one worker
        # or two; none in single-node mode).  Before the fix this test
        # failed 5 runs of 5.  Under UBSan it also found a page read that
        # found nothing new passing NULL to qsort (the process exits).
        a = self.node(workers=1)
        topics = ["cl.%d" % i for i in range(3)]
        first = {t: self.publish(a, t, b"first").json()["id"] for t in topics}
        acked = {t: [] for t in topics}
        got, errors = {}, []
        done = threading.Event()

        def publisher(k):
            try:
                with a.conn(timeout=30) as c:
                    for i in range(150):
                        t = topics[(i + k) % 3]
                        r = self.publish(a, t, b"m%d-%03d" % (k, i), conn=c)
                        if r.status != 200:
                            errors.append(r)
                            return
                        acked[t].append(r.json()["id"])
            except Exception as e:
                errors.append(e)

        def poller(t, n):
            ids, since = [], first[t]
            try:
                with a.conn(timeout=30) as c:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        stop = done.is_set()
                        r = c.get("/topics/%s?since=%s&timeout=1" % (t, quote(since)))
                        if r.status != 200:
                            errors.append(r)
                            return
                        j = r.json()
                        ids += [m["id"] for m in j["messages"]]
                        since = j["last_id"]
                        if stop and not j["messages"]:
                            break
            except Exception as e:
                errors.append(e)
            got[(t, n)] = ids

        polls = [threading.Thread(target=poller, args=(t, n), daemon=True)
                 for t in topics for n in range(3)]
        pubs = [threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(6)]
        for th in polls + pubs:
            th.start()
        for th in pubs:
            th.join(60)
        done.set()
        for th in polls:
            th.join(70)
        self.assertEqual(errors, [])
        self.assertEqual(sum(len(v) for v in acked.values()), 900)
        for (t, n), ids in sorted(got.items()):
            missing = sorted(set(acked[t]) - set(ids))
            self.assertEqual(missing, [], "poller %d of %s: %d of %d never delivered"
                             % (n, t, len(missing), len(acked[t])))
            self.assertEqual(len(ids), len(set(ids)), "delivered twice")
        self.assertEqual(len(got), 9)

    def test_nodes_started_together_share_one_stream_and_epoch(self):
        # They race to create the stream; each server reports its own
        # creation time, so the epoch is kept in the stream's config.
        from harness import Server
        servers = []
        for _ in range(3):
            d = self.tmpdir()
            s = Server(app=cluster_app(d, servers=self.nats.urls(), replicas=3))
            self.addCleanup(s.kill)
            servers.append(s)
        errors = []

        def start(s):
            try:
                s.start()
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        ids = []
        for s in servers:
            r = self.publish(s, "t", b"x")
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
        self.assertEqual(len({i.split("-")[0] for i in ids}), 1, ids)

    def test_a_description_replaced_just_after_the_create_is_the_epoch_used(self):
        # What a racing node's create did once in CI (nats-server 2.9
        # applied both creates): the stream's description, and with it the
        # epoch, changed just after node A had created the stream and read
        # it back.  A used its own epoch, the others the stream's: IDs of
        # two epochs.  A node now reads a young stream again once it has
        # settled.
        from harness import Server
        a = Server(app=cluster_app(self.tmpdir(), servers=self.nats.urls(), replicas=3))
        self.addCleanup(a.kill)
        t = threading.Thread(target=a.start, daemon=True)
        t.start()
        a.wait_log("cluster: stream created", timeout=30)
        info = self.nats.request(0, "$JS.API.STREAM.INFO.SLUICE")
        cfg = info["config"]
        self.assertRegex(cfg["description"], r"^sluice epoch=")
        cfg["description"] = "sluice epoch=1racingnode"
        r = self.nats.request(0, "$JS.API.STREAM.UPDATE.SLUICE", json.dumps(cfg).encode())
        self.assertNotIn("error", r)
        t.join(30)
        b = self.node()
        for srv in (a, b):
            r = self.publish(srv, "t", b"x")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["id"].split("-")[0], "1racingnode")

    def test_a_node_waits_for_the_servers_that_hold_its_replicas(self):
        # A NATS cluster just formed can refuse to place a stream's
        # replicas (JetStream error 10005, "no suitable peers") until its
        # leader has each server's first report: nats-server 2.10 did so
        # right after the cluster answered, and the node exited.  Here the
        # third server starts 2 s after the node: the node waits for it
        # (nats-server 2.10 placed the stream 2 to 9 s after that).
        from harness import Server
        late = NatsCluster(3, name="late")
        self.addCleanup(late.cleanup)
        for i in (0, 1):  # one after another, as start_all does
            late.start(i, wait=False)
            late.wait_monitor(i)
        late.wait_ready([0, 1])
        timer = threading.Timer(2.0, late.start, args=(2, False))
        timer.start()
        self.addCleanup(timer.cancel)
        t0 = time.monotonic()
        a = Server(app=cluster_app(self.tmpdir(), servers=late.urls(), replicas=3))
        self.addCleanup(a.kill)
        a.start(timeout=45)
        self.assertGreater(time.monotonic() - t0, 1.5)
        a.wait_log("fewer NATS servers with JetStream than the stream's replicas", timeout=5)
        r = self.publish(a, "t", b"x")
        self.assertEqual(r.status, 200, r)

    def test_events_binary_and_odd_topics_cross_nodes(self):
        a = self.node(replicas=1)
        b = self.node(replicas=1)
        c = self.conn(b)
        sse_open(c, "/topics/a:b_c-D.9")
        with a.conn() as p:
            r = p.request("POST", "/topics/a:b_c-D.9?event=" + quote("caf\u00e9 time"), body=b"x")
        self.assertEqual(r.status, 200, r)
        mid, event, data = sse_next(c)
        self.assertEqual((mid, event, data), (r.json()["id"], "caf\u00e9 time", b"x"))
        with a.conn() as p:
            r = p.request("POST", "/topics/a:b_c-D.9", body=b"\xff\x00\xfe")
        self.assertEqual(r.status, 200, r)
        mid, event, data = sse_next(c)
        self.assertEqual(base64.b64decode(data), b"\xff\x00\xfe")

    def test_idempotency_key_across_nodes(self):
        a = self.node(replicas=1)
        b = self.node(replicas=1)
        r1 = self.publish(a, "k", b"once", key="key-1")
        r2 = self.publish(b, "k", b"once", key="key-1")
        self.assertEqual(r1.status, 200, r1)
        self.assertEqual(r2.json()["id"], r1.json()["id"])
        j = self.longpoll(b, "k", "x-0", timeout=0)
        self.assertEqual([m["data"] for m in j["messages"]], ["once"])

    def test_retention_maps_to_the_stream_and_gaps_are_told(self):
        keep5 = 'sluice.topic("*", {backlog = 5})\n'
        a = self.node(replicas=1, extra=keep5)
        b = self.node(replicas=1, extra=keep5)
        # Kept all along: the stream starts before every point below, so
        # only the count limit tells the gaps.
        self.assertEqual(self.publish(a, "keep", b"k").status, 200)
        ids = []
        for i in range(10):
            r = self.publish(a, "r", b"r%d" % i)
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
        self.assertEqual(self.publish(a, "other", b"o").status, 200)
        # Resuming from before what the stream still keeps: the newest 5 and
        # the gap signal, on the other node, by long-poll and by SSE.
        j = self.longpoll(b, "r", ids[1], timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["id"] for m in j["messages"]], ids[5:])
        c = self.conn(b)
        c.send(build_request("GET", "/topics/r", [("Accept", "text/event-stream"),
                                                  ("Last-Event-ID", ids[1])]))
        _, status, _, _, head = c.read_head()
        self.assertEqual(status, 200, head)
        text = b""
        while text.count(b"data: r") < 5:
            text += c.read_until(b"\n\n")
        self.assertIn(b"event: sluice.gap", text)
        # From a point still kept: no gap, exactly the rest.
        j = self.longpoll(b, "r", ids[6], timeout=0)
        self.assertNotIn("gap", j)
        self.assertEqual([m["id"] for m in j["messages"]], ids[7:])
        # Pages smaller than what the topic keeps: a topic at its limit read
        # in part lost something after the point only if it holds nothing
        # at or before it.  Another topic in between: no read starts right
        # after its point.
        for i in range(10, 13):
            self.assertEqual(self.publish(a, "other", b"o").status, 200)
            ids.append(self.publish(a, "r", b"r%d" % i).json()["id"])

        def page(since, limit=""):
            with b.conn() as c:
                r = c.get("/topics/r?since=%s&timeout=0%s" % (quote(since), limit))
            self.assertEqual(r.status, 200, r)
            return r.json().get("gap", False), [m["id"] for m in r.json()["messages"]]

        self.assertEqual(page(ids[1], "&limit=2"), (True, ids[8:10]))  # keeps 8-12
        self.assertEqual(page(ids[9], "&limit=1"), (False, ids[10:11]))
        self.assertEqual(page(ids[9]), (False, ids[10:13]))
        # A node whose retention differs from the stream's is refused.
        d = self.tmpdir()
        script = cluster_app(d, 'sluice.topic("*", {backlog = 7})\n', servers=self.nats.urls(),
                             replicas=1)
        rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", d, script])
        self.assertEqual(rc, 1, err)
        self.assertIn("max_msgs_per_subject 5 (want 7)", err)

    def test_a_reload_changes_the_streams_retention_for_every_node(self):
        # Node A's script goes from 5 messages per topic to 3: its reload
        # sets the stream's limit, and node B, whose script still says 5,
        # judges gaps by the stream's.  The stream starts with another
        # topic's message, so only the count tells B of the gap.
        def keep(n):
            return 'sluice.topic("*", {backlog = %d})\n' % n
        # A call after the load could change nothing: an error says so.
        late = ('sluice.route("GET", "/late", function()\n'
                '  local ok, err = pcall(sluice.topic, "*", {backlog = 2})\n'
                '  return 200, tostring(ok) .. " " .. tostring(err)\nend)\n')
        a = self.node(replicas=1, extra=keep(5) + late)
        b = self.node(replicas=1, extra=keep(5))
        with a.conn() as c:
            late = c.get("/late").text
        self.assertTrue(late.startswith("false "), late)
        self.assertIn("in cluster mode retention is set while the script loads", late)
        self.assertEqual(self.publish(a, "other", b"o").status, 200)
        ids = [self.publish(a, "r", b"r%d" % i).json()["id"] for i in range(6)]
        j = self.longpoll(b, "r", ids[1], timeout=0)
        self.assertNotIn("gap", j)
        self.assertEqual([m["id"] for m in j["messages"]], ids[2:])
        d = os.path.dirname(a.app)
        mark = a.mark()
        cluster_app(d, keep(3), servers=self.nats.urls(), replicas=1)
        a.signal(signal.SIGHUP)
        a.wait_log(r"reloaded app", since=mark)
        self.assertTrue(a.find_logs(r"the stream's retention changed", since=mark))
        j = self.longpoll(b, "r", ids[1], timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["id"] for m in j["messages"]], ids[3:])
        # Rules that cannot be one stream's retention: the reload fails
        # whole, and the stream keeps 3.
        mark = a.mark()
        cluster_app(d, keep(3) + 'sluice.topic("rooms.*", {backlog = 9})\n',
                    servers=self.nats.urls(), replicas=1)
        a.signal(signal.SIGHUP)
        line = a.wait_log(r"reload failed", since=mark).string
        self.assertIn("'rooms.*' (backlog 9", line)
        for i in range(2):
            self.assertEqual(self.publish(a, "r", b"s%d" % i).status, 200)
        j = self.longpoll(b, "r", ids[5], timeout=0)
        self.assertEqual([m["data"] for m in j["messages"]], ["s0", "s1"])
        j = self.longpoll(b, "r", ids[3], timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["data"] for m in j["messages"]], ["r5", "s0", "s1"])
        # Back up to 10: what 3 deleted stays a gap for points before the
        # raise (B holds 3 of "r", under the new limit); none after it.
        mark = a.mark()
        cluster_app(d, keep(10), servers=self.nats.urls(), replicas=1)
        a.signal(signal.SIGHUP)
        a.wait_log(r"reloaded app", since=mark)
        j = self.longpoll(b, "r", ids[3], timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["data"] for m in j["messages"]], ["r5", "s0", "s1"])
        s1 = j["last_id"]
        self.assertEqual(self.publish(a, "r", b"s2").status, 200)
        j = self.longpoll(b, "r", s1, timeout=0)
        self.assertNotIn("gap", j)
        self.assertEqual([m["data"] for m in j["messages"]], ["s2"])
        # A node started after the raise never saw the limit of 3: the
        # stream's description tells it (it resumed from ids[3] with no
        # gap, "r" holding 4 messages under a limit of 10).
        c = self.node(replicas=1, extra=keep(10))
        j = self.longpoll(c, "r", ids[3], timeout=0)
        self.assertTrue(j.get("gap"), j)
        self.assertEqual([m["data"] for m in j["messages"]], ["r5", "s0", "s1", "s2"])
        j = self.longpoll(c, "r", s1, timeout=0)
        self.assertNotIn("gap", j)
        desc = self.nats.request(0, "$JS.API.STREAM.INFO.SLUICE")["config"]["description"]
        self.assertRegex(desc, r"^sluice epoch=[0-9a-z]+ floor=3@\d+$")
        # A reload that keeps the retention asks nothing of NATS: it
        # works while every NATS server is stopped.
        with self.all_nats_paused():
            mark = a.mark()
            cluster_app(d, keep(10) + "-- a comment\n", servers=self.nats.urls(), replicas=1)
            a.signal(signal.SIGHUP)
            a.wait_log(r"reloaded app|reload failed", since=mark, timeout=5)
            self.assertFalse(a.find_logs(r"reload failed", since=mark))
        # A node started now must agree with the stream.
        rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", self.tmpdir(),
                                 cluster_app(self.tmpdir(), keep(5), servers=self.nats.urls(),
                                             replicas=1)])
        self.assertEqual(rc, 1, err)
        self.assertIn("max_msgs_per_subject 10 (want 5)", err)

    def test_a_read_on_one_node_has_what_another_acknowledged(self):
        # A publish acknowledged on A is in every read on B that starts
        # after the acknowledgement, though B's consumer may not have it
        # yet: a short poll at B's newest, a wildcard's, and a long-poll
        # from before it, which answers at once.  B's reads stopped at what
        # its consumer had delivered: CI saw a short poll miss the message.
        a = self.node()
        b = self.node()
        prevprev = self.publish(a, "rw.x", b"start").json()["id"]
        prev = self.publish(a, "rw.y", b"start").json()["id"]
        with a.conn() as ca, b.conn() as cb:
            for i in range(40):
                topic = "rw." + "xy"[i % 2]
                r = self.publish(a, topic, b"m%d" % i, conn=ca)
                self.assertEqual(r.status, 200, r)
                mid = r.json()["id"]
                for path, want in (("/topics/%s?since=%s&timeout=0" % (topic, quote(prev)), [mid]),
                                   ("/wild/rw.?since=%s&timeout=0" % quote(prev), [mid]),
                                   ("/wild/rw.?since=%s&timeout=5" % quote(prevprev), [prev, mid])):
                    r = cb.get(path)
                    self.assertEqual(r.status, 200, (i, path, r.body))
                    self.assertEqual([m["id"] for m in r.json()["messages"]], want, (i, path, r.body))
                prevprev, prev = prev, mid

    def read_counts(self, srv):
        """Messages srv read for resumes one request each, and the topic
        reads that made a consumer."""
        m = self.metrics(srv)
        return tuple(int(re.search(r"(?m)^sluice_cluster_read_%s_total (\d+)$" % k, m).group(1))
                     for k in ("gets", "consumers"))

    def test_a_resume_reads_its_first_messages_one_request_each(self):
        # A clustered stream makes and deletes a consumer through its meta
        # group, at ten times the servers' CPU of a request the stream
        # leader answers alone: a read takes a topic's first 8 messages
        # one request each and makes a consumer only for more.  Both give
        # the same messages: order, events, JSON and binary data.
        a = self.node()
        b = self.node()
        ids = {"g.t": [], "g.u": []}

        def pub(n, query="", body=None, headers=()):
            for _ in range(n):
                for topic in ("g.t", "g.u"):  # interleaved: a topic's seqs skip
                    with a.conn() as c:
                        r = c.request("POST", "/topics/%s%s" % (topic, query), headers=headers,
                                      body=body or b"%s-%d" % (topic.encode(), len(ids[topic])))
                    self.assertEqual(r.status, 200, r)
                    ids[topic].append(r.json()["id"])

        pub(1)
        before = self.read_counts(b)
        pub(1, "?event=" + quote("caf\u00e9"), b'{"x": 1}', [("Content-Type", "application/json")])
        pub(1, body=b"\xff\x00\xfe")
        pub(1)
        with b.conn() as c:
            r = c.get("/topics/g.t?since=%s&timeout=0&format=json" % quote(ids["g.t"][0]))
        self.assertEqual(r.status, 200, r)
        got = r.json()["messages"]
        self.assertEqual([m["id"] for m in got], ids["g.t"][1:])
        self.assertEqual((got[0]["event"], got[0]["data"], got[0]["encoding"]),
                         ("caf\u00e9", {"x": 1}, "json"))
        self.assertEqual((got[1]["event"], got[1]["encoding"]), (None, "base64"))
        self.assertEqual(base64.b64decode(got[1]["data"]), b"\xff\x00\xfe")
        self.assertEqual((got[2]["event"], got[2]["data"]), (None, "g.t-3"))
        after = self.read_counts(b)
        self.assertEqual((after[0] - before[0], after[1] - before[1]), (3, 0))
        # 40 behind: 8 by requests, the other 32 from one consumer.
        mark = ids["g.t"][-1]
        pub(40)
        j = self.longpoll(b, "g.t", mark, timeout=0)
        self.assertEqual([m["id"] for m in j["messages"]], ids["g.t"][-40:])
        self.assertEqual([m["data"] for m in j["messages"]],
                         ["g.t-%d" % i for i in range(4, 44)])
        now = self.read_counts(b)
        self.assertEqual((now[0] - after[0], now[1] - after[1]), (8, 1))
        # A page smaller than that: its limit, and the next goes on from it.
        with b.conn() as c:
            r1 = c.get("/topics/g.t?since=%s&timeout=0&limit=5" % quote(mark)).json()
            r2 = c.get("/topics/g.t?since=%s&timeout=0&limit=5" % quote(r1["last_id"])).json()
        self.assertEqual([m["id"] for m in r1["messages"] + r2["messages"]],
                         ids["g.t"][-40:-30])
        self.assertEqual(self.read_counts(b)[1], now[1])

    def test_a_message_over_the_nats_max_payload_is_refused_as_too_large(self):
        # The NATS servers' max_payload (1 MiB, their default, as in these
        # tests) bounds a message of the stream, headers included.  A body
        # within the node's own limit (1 MiB) that is over it with its event
        # header was answered 503 "storage I/O error", which a client
        # retries for ever: it is refused as too large (413; a WebSocket
        # client's message, close 1009), counted, and the node warns at
        # start.  One that fits is stored and read back whole.
        a = self.node(extra="sluice.config{limits = {max_ws_message = 2 * 1024 * 1024}}\n")
        b = self.node()
        self.assertTrue(a.find_logs(r"max_payload is below the largest message"), a.log_text())
        mark = self.publish(a, "big", b"x").json()["id"]
        body = b"y" * (1024 * 1024)
        with a.conn() as c:
            r = c.request("POST", "/topics/big?event=e", body=body)
        self.assertEqual(r.status, 413, r)
        self.assertEqual(r.json()["error"], "message too large for the cluster (NATS max_payload)")
        with a.conn() as c:
            r = c.request("POST", "/topics/big?event=e", body=body[:-100])
        self.assertEqual(r.status, 200, r)
        j = self.longpoll(b, "big", mark, timeout=0)
        self.assertEqual([(m["id"], m["event"], m["data"]) for m in j["messages"]],
                         [(r.json()["id"], "e", "y" * (1024 * 1024 - 100))])
        c = self.conn(a)
        ws_open(c, "/topics/big")
        payload = b"z" * (1536 * 1024)  # a zero mask key: the payload as it is
        c.send(struct.pack("!BBQ", 0x82, 0xFF, len(payload)) + b"\0\0\0\0" + payload)
        op, data = ws_read_frame(c)
        self.assertEqual((op, struct.unpack("!H", data[:2])[0]), (8, 1009), data)
        self.assertIn(b"message too large", data)
        failures = re.search(r"(?m)^sluice_publish_failures_total (\d+)$", self.metrics(a))
        self.assertEqual(int(failures.group(1)), 2)

    def test_live_gap_when_retention_drops_what_a_node_had_not_delivered(self):
        # Node B talks to one NATS server only, a follower of the stream; it
        # is down while node A publishes more than a topic keeps.  When it
        # is back, B's consumer finds the deleted seqs: its live subscribers
        # of that topic get the gap signal (SSE, WebSocket JSON, a waiting
        # long-poll) before what the stream still has; a topic that lost
        # nothing gets none.
        keep5 = 'sluice.topic("*", {backlog = 5})\n'
        a = self.node(extra=keep5)
        leader = self.nats.stream_leader("SLUICE")
        p = (leader + 1) % 3
        b = self.node(extra=keep5, servers=self.nats.url(p), workers=1)
        sse_g, sse_h = self.conn(b, timeout=60), self.conn(b, timeout=60)
        sse_open(sse_g, "/topics/g")
        sse_open(sse_h, "/topics/h")
        ws = self.conn(b, timeout=60)
        ws_open(ws, "/topics/g?format=json")
        polled = []

        def poll():
            with b.conn(timeout=90) as c:
                polled.append(c.get("/topics/g?timeout=60"))
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        time.sleep(0.5)  # the poll waits
        self.nats.kill(p)
        try:
            deadline = time.monotonic() + 20
            while re.search(r"^sluice_cluster_connected 1$", self.metrics(b), re.M):
                self.assertLess(time.monotonic(), deadline, "B did not notice")
                time.sleep(0.2)

            def pub(topic, body):
                for _ in range(10):  # A may have been on the stopped server
                    r = self.publish(a, topic, body, key=body.decode())
                    if r.status == 200:
                        return r.json()["id"]
                    self.assertEqual(r.status, 503, r)
                    time.sleep(0.5)
                self.fail("no publish through A")
            h_ids = [pub("h", b"h-first")]
            g_ids = [pub("g", b"g%02d" % i) for i in range(20)]
            h_ids.append(pub("h", b"h-last"))
        finally:
            self.nats.start(p)
        # The signal, then g's messages in order up to the newest: the 5
        # the stream keeps, or more when B's consumer reads the restarted
        # server's copy while it still catches up (it applies the deletions
        # as it replays; seen under ASan: g10 to g19).  Such a read can
        # also skip twice (g01-g05, then g15: the server applied more
        # deletions meanwhile): every message missing between two given
        # is told by a signal between them.
        # (It may even give g00 first, read before the server applied its
        # deletion: then nothing before it needs telling.)
        gap = ("", "sluice.gap", b'{"topic":"g"}')
        got = [sse_next(sse_g)]
        while got[-1][0] != g_ids[-1] and len(got) < 2 * len(g_ids):
            got.append(sse_next(sse_g))
        self.assertIn(gap, got)
        last, told = -1, False
        for g in got:
            if g == gap:
                told = True
                continue
            i = g_ids.index(g[0])
            self.assertGreater(i, last, got)
            self.assertTrue(i == last + 1 or told, got)
            last, told = i, False
        self.assertEqual(last, len(g_ids) - 1, got)
        self.assertGreaterEqual(len([g for g in got if g != gap]), 5, got)
        # The WebSocket of the same node gets the same: the signals at the
        # same places.
        sse_seq = ["gap" if g == gap else g[0] for g in got]
        ws_got = [json.loads(ws_next(ws)) for _ in got]
        self.assertEqual(["gap" if w.get("gap") else w["id"] for w in ws_got], sse_seq, ws_got)
        self.assertEqual(ws_got[sse_seq.index("gap")], {"gap": True, "topic": "g"})
        self.assertEqual([g[0] for g in (sse_next(sse_h), sse_next(sse_h))], h_ids)
        t.join(30)
        self.assertEqual(polled[0].status, 200, polled)
        # The waiting long-poll is answered by the first of them.
        if sse_seq[0] == "gap":
            self.assertTrue(polled[0].json().get("gap"), polled[0].body)
        else:
            self.assertEqual(polled[0].json()["messages"][0]["id"], sse_seq[0], polled[0].body)
        m = self.metrics(b)
        self.assertRegex(m, r"sluice_cluster_gaps_total [1-9]")
        # The next message on h follows h-last directly: no gap was told there.
        r = self.publish(a, "h", b"h-next")
        self.assertEqual(sse_next(sse_h), (r.json()["id"], "", b"h-next"))

    def test_admin_topics_list_the_stream(self):
        # /api/topics on a cluster node lists the stream's topics (not the
        # node's empty LMDB): the backlog JetStream keeps for each, this
        # node's subscribers; a topic with subscribers and nothing stored
        # yet too.  (Also issue 30: the admin API in cluster mode.)
        keep5 = 'sluice.topic("*", {backlog = 5})\n'
        a = self.node(extra=keep5)
        d = self.tmpdir()
        b = self.start(app=cluster_app(d, keep5, servers=self.nats.urls(), replicas=3),
                       args=["-w", "2", "--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        m = re.search(r"admin listening on ([0-9.]+):(\d+)", b.log_text())
        self.assertTrue(m, b.log_text())
        for i in range(7):
            self.assertEqual(self.publish(a, "adm.busy", b"x%d" % i).status, 200)
        self.assertEqual(self.publish(a, "adm.one", b"y").status, 200)
        self.assertEqual(self.publish(a, "other", b"z").status, 200)
        subs = []
        for topic in ("adm.one", "adm.one", "adm.waiting"):
            c = self.conn(b)
            sse_open(c, "/topics/" + topic)
            subs.append(c)

        def topics(query=""):
            with RawConn.tcp(m.group(1), int(m.group(2))) as c:
                r = c.get("/api/topics" + query)
            self.assertEqual(r.status, 200, r)
            return {t["topic"]: t for t in r.json()["topics"]}
        t = topics()
        self.assertEqual({k: (v["backlog"], v["subscribers"]) for k, v in t.items()},
                         {"adm.busy": (5, 0), "adm.one": (1, 2), "other": (1, 0),
                          "adm.waiting": (0, 1)}, t)
        self.assertIsNone(t["adm.busy"]["newest_id"])
        self.assertEqual(sorted(topics("?prefix=adm.")), ["adm.busy", "adm.one", "adm.waiting"])
        # /api/stats: the stream's own figures (the node's LMDB holds none):
        # 5 + 1 + 1 messages kept of 3 topics, the last seq the 9th.
        with RawConn.tcp(m.group(1), int(m.group(2))) as c:
            r = c.get("/api/stats")
        self.assertEqual(r.status, 200, r)
        cl = r.json()["cluster"]
        self.assertEqual((cl["connected"], cl["diverged"]), (True, 0), cl)
        st = cl["stream"]
        self.assertEqual((st["messages"], st["topics"], st["last_seq"]), (7, 3, 9), st)
        self.assertGreater(st["bytes"], 0)

    def test_admin_answers_while_nats_stalls(self):
        # Every NATS server paused: the client still counts itself
        # connected for a few seconds, and each JetStream request waits its
        # 2 s.  The admin thread asks none of them itself (the stats tick
        # and /api/stats ask for the stream's figures, /api/topics for its
        # topics): /healthz and /metrics answer at once all along, and the
        # requests that need NATS answer without the stream's part.
        b = self.start(app=cluster_app(self.tmpdir(), servers=self.nats.urls(), replicas=1),
                       args=["-w", "1", "--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        m = re.search(r"admin listening on ([0-9.]+):(\d+)", b.log_text())
        self.assertTrue(m, b.log_text())
        host, port = m.group(1), int(m.group(2))
        self.assertEqual(self.publish(b, "t", b"x").status, 200)

        def get(path, timeout=15):
            with RawConn.tcp(host, port, timeout=timeout) as c:
                return c.get(path)
        # A dashboard stream: the tick's stats then carry the stream's figures.
        dash = RawConn.tcp(host, port, timeout=30)
        self.addCleanup(dash.close)
        dash.send(build_request("GET", "/api/events", [("Accept", "text/event-stream")]))
        self.assertEqual(dash.read_head()[1], 200)
        slow = {}

        def ask(path):
            t0 = time.monotonic()
            r = get(path)
            slow[path] = (r.status, time.monotonic() - t0, r)
        with self.all_nats_paused():
            askers = [threading.Thread(target=ask, args=(p,), daemon=True)
                      for p in ("/api/topics", "/api/stats")]
            for t in askers:
                t.start()
            worst = 0.0
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for path in ("/healthz", "/metrics"):
                    t0 = time.monotonic()
                    self.assertEqual(get(path).status, 200)
                    worst = max(worst, time.monotonic() - t0)
                time.sleep(0.05)
            for t in askers:
                t.join(15)
        self.assertLess(worst, 0.5, "the admin thread waited on NATS")
        topics, stats = slow["/api/topics"], slow["/api/stats"]
        self.assertEqual(topics[0], 200, topics)
        self.assertTrue(topics[2].json().get("storage_error"), topics)
        self.assertEqual(stats[0], 200, stats)
        self.assertIsNone(stats[2].json()["cluster"]["stream"], stats)
        # NATS back: the stream's part is there again.
        deadline = time.monotonic() + 20
        while True:
            st = get("/api/stats").json()["cluster"]["stream"]
            if st or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(st and st["last_seq"], 1, st)
        self.assertIn("t", [t["topic"] for t in get("/api/topics").json()["topics"]])

    def test_resume_waiting_on_nats_does_not_stall_the_worker(self):
        # One worker; every NATS server paused (SIGSTOP): 73 SSE resumes
        # and two long-polls wait on JetStream (each read bounded by 2 s), while another
        # connection of the same worker is answered at once: the reads run
        # off the worker's loop.  Read on the loop they stalled it about
        # 2 s each.  When NATS is back, a resume gets exactly what it
        # missed.
        b = self.node(workers=1)
        ids = [self.publish(b, "slow", b"s%d" % i).json()["id"] for i in range(4)]
        waiting, polls = [], []
        with self.all_nats_paused():
            # IDs of the stream's epoch past its end: whether the stream
            # has them is a JetStream request, made off the loop too (it
            # was made on it when the ID was parsed: ~2 s each).
            past = ids[0].split("-")[0] + "-999999999"
            for k in range(3):
                c = self.conn(b, timeout=30)
                c.send(build_request("GET", "/topics/slow", [("Accept", "text/event-stream"),
                                                             ("Last-Event-ID", past)]))
                waiting.append(c)
            # More than the 64 reader threads: the rest wait their turn
            # (they were read on the loop).
            for k in range(70):
                c = self.conn(b, timeout=30)
                c.send(build_request("GET", "/topics/slow", [("Accept", "text/event-stream"),
                                                             ("Last-Event-ID", ids[0])]))
                waiting.append(c)
            for k in range(2):
                c = self.conn(b, timeout=30)
                c.send(build_request("GET", "/topics/slow?timeout=5&since=" + quote(ids[0])))
                polls.append(c)
            took = self.answered_in(b)
            print("\nanother connection of the worker, 75 resumes waiting on paused NATS: "
                  "answered in %.3f s" % took, file=sys.stderr)
            self.assertLess(took, 1.5)
        # The waiting resumes end (their reads failed: the stream closes,
        # or a poll answers 503; the client resumes again) or deliver;
        # none hangs.
        for c in waiting:
            _, status, _, _, head = c.read_head()
            self.assertEqual(status, 200, head)
        for c in polls:
            _, status, _, _, head = c.read_head()
            self.assertIn(status, (200, 503), head)
        # A long-poll resumes too, its read off the loop as well.
        deadline = time.monotonic() + 30
        while True:
            j = self.longpoll(b, "slow", ids[0], timeout=0, retry_503=True)
            if j["messages"]:
                break
            self.assertLess(time.monotonic(), deadline, "no long-poll resume after NATS came back")
            time.sleep(0.5)
        self.assertEqual([m["id"] for m in j["messages"]], ids[1:])
        deadline = time.monotonic() + 30
        while True:
            c = self.conn(b, timeout=30)
            try:
                sse_open(c, "/topics/slow", [("Last-Event-ID", ids[0])])
                got = [sse_next(c) for _ in range(3)]
                break
            except (AssertionError, OSError, ConnectionError):
                self.assertLess(time.monotonic(), deadline, "no resume after NATS came back")
                time.sleep(0.5)
        self.assertEqual([g[0] for g in got], ids[1:])
        # Caught up: what comes next is live, once.
        r = self.publish(b, "slow", b"after")
        self.assertEqual(sse_next(c)[0], r.json()["id"])

    def test_resumes_past_the_limit_are_refused_told_and_counted(self):
        # limits.max_waiting_resumes = 2, one worker, every NATS server
        # paused: two SSE resumes wait for a read of the stream; past
        # them a resume is refused at once, and its client told: an SSE
        # stream ends (EventSource reconnects after its retry), a
        # WebSocket closes 1013, a long-poll answers 503 (not an empty
        # answer, which the client would ask again at once).  Each
        # refusal is counted and logged.  When NATS is back the waiting
        # resumes get what they missed.
        b = self.node(workers=1, extra="sluice.config{limits = {max_waiting_resumes = 2}}\n")
        live = self.conn(b, timeout=30)
        sse_open(live, "/topics/r")
        ids = [self.publish(b, "r", b"r%d" % i).json()["id"] for i in range(3)]
        # The worker has fanned all three out before NATS stops: else a
        # resume from ids[0] could be at its newest, go live and read
        # nothing (CI saw the third resume wait, unrefused).
        self.assertEqual([sse_next(live)[0] for _ in range(3)], ids)
        resume = [("Accept", "text/event-stream"), ("Last-Event-ID", ids[0])]
        waiting = []
        with self.all_nats_paused():
            for k in range(2):
                c = self.conn(b, timeout=30)
                c.send(build_request("GET", "/topics/r", resume))
                # Its head comes before the read: taken, it now waits.
                _, status, _, _, head = c.read_head()
                self.assertEqual(status, 200, head)
                waiting.append(c)
            c = self.conn(b, timeout=10)
            c.send(build_request("GET", "/topics/r", resume))
            _, status, _, _, head = c.read_head()
            self.assertEqual(status, 200, head)
            self.assertEqual(c.read_to_eof(), b"retry: 2000\n\n")
            w = self.conn(b, timeout=10)
            ws_open(w, "/topics/r?since=" + quote(ids[0]))
            frame = w.read_to_eof()
            self.assertEqual((frame[0], struct.unpack("!H", frame[2:4])[0]), (0x88, 1013), frame)
            with b.conn(timeout=10) as p:
                r = p.get("/topics/r?timeout=5&since=" + quote(ids[0]))
            self.assertEqual(r.status, 503, r)
            self.assertIn("too many resumes", r.json()["error"])
            m = re.search(r"^sluice_cluster_resumes_refused_total (\d+)$", self.metrics(b), re.M)
            self.assertEqual(int(m.group(1)), 3)
            b.wait_log("too many resumes waiting for a read of the stream: refused")
            # The streams' end lines say why (they said "peer" and
            # "slow_consumer").
            for transport in ("sse", "websocket"):
                b.wait_log(r"stream ended transport=%s .*reason=resume_refused" % transport)
        for c in waiting:
            self.assertEqual([sse_next(c)[0] for _ in range(2)], ids[1:])

    def test_publishes_to_stalled_nats_do_not_stall_the_worker(self):
        # One worker; every NATS server paused (SIGSTOP), so nothing reads
        # the node's socket: 24 publishes of 1 MiB fill it.  The worker
        # hands publishes to the cluster's NATS loop, never writing to
        # NATS itself: another of its connections is answered at once.
        # Written on the loop, the publish that found the socket full held
        # the worker (and the client's lock) for the 2 s write deadline.
        b = self.node(workers=1)
        self.publish(b, "warm", b"w")
        pubs = []
        with self.all_nats_paused():
            body = b"x" * (1024 * 1024 - 64)
            for k in range(24):
                c = self.conn(b, timeout=30)
                c.send(build_request("POST", "/topics/big", [("Content-Length", str(len(body)))]) + body)
                pubs.append(c)
            time.sleep(0.5)
            worst = 0.0
            for k in range(5):
                worst = max(worst, self.answered_in(b))
                time.sleep(0.1)
            print("\nanother connection of the worker, 24 MiB of publishes to paused NATS: "
                  "answered in %.3f s at worst" % worst, file=sys.stderr)
            # Held by a write, the worker waited the 2 s write deadline per
            # publish (5.5 s here).  Answered at once: 0.001 s in the
            # release and ASan builds; 0.15-0.33 s under ThreadSanitizer,
            # whose checks of the 1 MiB copies take the two cores.
            self.assertLess(worst, 1.0)
        # Every publish is answered, acknowledged or refused, none hangs;
        # a refusal is counted.
        statuses = []
        for c in pubs:
            _, status, _, _, head = c.read_head()
            self.assertIn(status, (200, 503), head)
            statuses.append(status)
        refused = statuses.count(503)
        print("publishes: %d acknowledged, %d refused" % (statuses.count(200), refused),
              file=sys.stderr)
        m = re.search(r"^sluice_publish_failures_total (\d+)", self.metrics(b), re.M)
        self.assertGreaterEqual(int(m.group(1)), refused)
        # Publishing works again with no restart.
        deadline = time.monotonic() + 30
        while self.publish(b, "big", b"after").status != 200:
            self.assertLess(time.monotonic(), deadline, "publishing did not come back")
            time.sleep(0.5)

    # -- failures -----------------------------------------------------------------

    def test_nats_server_killed_under_load_loses_nothing_acknowledged(self):
        a = self.node()
        b = self.node()
        sub = self.conn(b, timeout=60)
        sse_open(sub, "/topics/load")
        acked = {}  # body -> id
        stalls = []
        errors = []
        total = 150

        def publisher():
            try:
                with a.conn(timeout=30) as c:
                    for i in range(total):
                        body = b"load-%04d" % i
                        t0 = time.monotonic()
                        # Retried on 503 for up to 30 s: the new leader's
                        # election took 5-9 s here, and one CI run (TSan,
                        # two tests at a time) outlasted 200 retries 50 ms
                        # apart after a 5 s PubAck wait.
                        while time.monotonic() - t0 < 30:
                            r = self.publish(a, "load", body, key="k%d" % i, conn=c)
                            if r.status == 200:
                                acked[body] = r.json()["id"]
                                break
                            if r.status != 503:
                                errors.append(r)
                                return
                            time.sleep(0.05)
                        stalls.append(time.monotonic() - t0)
            except Exception as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The stream's leader: its replicas must elect another.
        self.nats.kill(self.nats.stream_leader("SLUICE"), signal.SIGKILL)
        t.join(90)
        self.assertFalse(t.is_alive(), "publisher stuck")
        self.assertEqual(errors, [])
        self.assertEqual(len(acked), total)
        print("\nNATS server killed: longest publish stall %.2f s" % max(stalls),
              file=sys.stderr)
        # Every acknowledged message, exactly once, in ID order, on B's SSE.
        got = [sse_next(sub) for _ in range(total)]
        self.assertEqual([g[2] for g in got], sorted(acked))
        self.assertEqual([g[0] for g in got], [acked[b] for b in sorted(acked)])
        # And in the record, read back through the other node.
        # (A read that fails while the stream elects a leader answers 503:
        # the client asks again with its own cursor.)
        seen, cursor = [], "x-0"
        deadline = time.monotonic() + 30
        while len(seen) < total and time.monotonic() < deadline:
            j = self.longpoll(b, "load", cursor, timeout=0, retry_503=True)
            seen += j["messages"]
            cursor = j["last_id"]
            if not j["messages"]:
                time.sleep(0.2)
        self.assertEqual(sorted(m["data"].encode() for m in seen), sorted(acked))
        self.assertEqual(len(seen), total)
        # Both consumers' copies of the stream agreed with the new leader's.
        for srv in (a, b):
            self.assertRegex(self.metrics(srv), r"(?m)^sluice_cluster_diverged_total 0$")

    def test_all_nats_down_503_then_recovery(self):
        a = self.node(replicas=3)
        b = self.node(replicas=3)
        sub = self.conn(b, timeout=60)
        sse_open(sub, "/topics/t")
        first = self.publish(a, "t", b"first").json()["id"]
        r = self.publish(a, "t", b"before")
        self.assertEqual(r.status, 200, r)
        mid = r.json()["id"]
        self.assertEqual(sse_next(sub)[2], b"first")
        self.assertEqual(sse_next(sub)[2], b"before")

        self.nats.stop_all()
        time.sleep(0.5)
        for body in (b"during-1", b"during-2"):
            t0 = time.monotonic()
            r = self.publish(a, "t", body)
            took = time.monotonic() - t0
            self.assertJsonError(r, 503)
            self.assertLess(took, 8.0, "a publish must not hang while NATS is down")
        # The subscriber on B is still connected: nothing closed it.
        self.assertTrue(b.alive() and a.alive())
        self.assertIn("sluice_cluster_connected 0", self.metrics(a))
        # A short poll cannot know what another node stored: 503, at once.
        t0 = time.monotonic()
        with b.conn() as c:
            r = c.get("/topics/t?since=%s&timeout=0" % quote(mid))
        self.assertJsonError(r, 503)
        self.assertLess(time.monotonic() - t0, 3.0)
        # A stream that resumes before the node's newest must read the
        # stream, and is told: a WebSocket gets close 1011 (it was cut off
        # with no close frame), an SSE stream ends after its retry line.
        # Every failed read is counted and logged.
        with self.conn(b, timeout=10) as ws:
            ws_open(ws, "/topics/t?since=%s" % quote(first))
            op, payload = ws_read_frame(ws)
            self.assertEqual((op, payload), (8, struct.pack("!H", 1011) + b"storage error"))
        with self.conn(b, timeout=10) as sse:
            sse_open(sse, "/topics/t", [("Last-Event-ID", first)])
            self.assertIn(b"retry:", sse.read_to_eof())
        failures = re.search(r"^sluice_cluster_read_failures_total (\d+)$", self.metrics(b), re.M)
        self.assertGreaterEqual(int(failures.group(1)), 3)
        self.assertTrue(b.find_logs(r"a read of the stream failed.*step=horizon"))

        self.nats.start_all()
        deadline = time.monotonic() + 40
        while True:
            r = self.publish(a, "t", b"after")
            if r.status == 200:
                break
            self.assertJsonError(r, 503)
            self.assertLess(time.monotonic(), deadline, "publishing did not come back")
            time.sleep(0.2)
        mid, _, data = sse_next(sub)
        self.assertEqual((mid, data), (r.json()["id"], b"after"))
        self.assertIn("sluice_cluster_connected 1", self.metrics(a))

    def test_a_read_whose_request_times_out_is_tried_again(self):
        # The stream's leader stalls past one request's wait (2 s), then
        # answers: the read is tried again and the poll gets its message,
        # where it answered 503 (CI saw one on a healthy cluster under
        # load: a poll on one node right after a publish on another).  The
        # node talks to another server, which stays up: pausing its own
        # would end its connection (two pings missed) and the retry with it.
        self.node(replicas=3)  # makes the stream
        own = (self.nats.stream_leader("SLUICE") + 1) % 3
        a = self.node(replicas=3, servers=self.nats.url(own))
        first = self.publish(a, "t", b"one").json()["id"]
        self.assertEqual(self.publish(a, "t", b"two").status, 200)
        retries = 0
        # Once, unless the leader moved (CI saw the request answered at
        # once, one server's view of the leader lagging): then again with
        # the new one paused, or later if it is the node's own server.
        for _ in range(3):
            leader = self.nats.stream_leader("SLUICE")
            if leader == own:
                time.sleep(1)
                continue
            with a.conn(timeout=30) as c:
                self.nats.kill(leader, signal.SIGSTOP)
                try:
                    c.send(build_request("GET", "/topics/t?since=%s&timeout=0" % quote(first)))
                    time.sleep(2.6)
                finally:
                    self.nats.kill(leader, signal.SIGCONT)
                r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual([m["data"] for m in r.json()["messages"]], ["two"])
            m = self.metrics(a)
            retries = int(re.search(r"(?m)^sluice_cluster_read_retries_total (\d+)$", m).group(1))
            if retries:
                break
        self.assertGreaterEqual(retries, 1, "the paused leader never held a read's request")
        self.assertRegex(m, r"(?m)^sluice_cluster_read_failures_total 0$")
        self.assertTrue(a.find_logs(r"a request of a read of the stream failed.*step=horizon"))

    def test_a_node_started_and_stopped_while_messages_stream_in(self):
        # Nodes of two workers start and stop while another node publishes.
        # A node that started so crashed (SIGSEGV) every time: its stream
        # consumer delivers before cluster_open returns, and the delivery
        # read the cluster's epoch through the bus's pointer, still NULL.
        # A stopping worker let go of the messages left in its inbox by
        # clearing a field of each, which another worker, whose inbox has
        # the same messages, was reading (ThreadSanitizer, in CI's threads
        # pass, reported it once; this test has not reproduced that one).
        # Each node now starts, delivers, and exits 0 with no sanitizer
        # report.
        a = self.node(replicas=1)
        stop, errors = threading.Event(), []

        def publisher():
            try:
                with a.conn(timeout=30) as c:
                    for _ in range(100000):
                        if stop.is_set():
                            return
                        r = self.publish(a, "flow", b"x" * 64, conn=c)
                        if r.status != 200:
                            errors.append(r)
                            return
            except Exception as e:
                errors.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        try:
            for _ in range(4):
                b = self.node(replicas=1, workers=2)
                sub = self.conn(b)
                sse_open(sub, "/topics/flow")
                sse_next(sub)
                self.assertEqual(b.stop(), 0, b.log_text()[-3000:])
                san = [l for l in b.lines if "Sanitizer" in l or "runtime error:" in l]
                self.assertEqual(san, [], b.log_text()[-3000:])
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(errors, [])

    def test_nats_servers_flapping_never_crash_a_node(self):
        # Every NATS server killed one after another, right after the
        # nodes reconnected, again and again: a node's NATS client then
        # reconnects to a server that dies under it.  libnats 3.4.1
        # (Debian) crashed the process when it recreated an ordered
        # consumer on a connection that had just died (a NULL thread
        # detached in js.c _recreateOrderedCons; seen once in CI under
        # ASan): sluice uses no ordered consumer.  Then everything
        # published after the flapping reaches both nodes' subscribers.
        nodes = [self.node(replicas=3, workers=1) for _ in range(3)]
        subs = []
        for n in nodes:
            s = self.conn(n, timeout=60)
            sse_open(s, "/topics/flap")
            subs.append(s)
        r = self.publish(nodes[0], "flap", b"before")
        self.assertEqual(r.status, 200, r)
        for s in subs:
            self.assertEqual(sse_next(s)[2], b"before")
        rounds = int(os.environ.get("SLUICE_TEST_FLAP_ROUNDS", "12"))
        for i in range(rounds):
            # Start every server without waiting for JetStream: the nodes
            # reconnect at once, then lose them again a few ms apart.
            for j in range(self.nats.n):
                self.nats.start(j, wait=False)
            deadline = time.monotonic() + 10
            while not all("sluice_cluster_connected 1" in self.metrics(n) for n in nodes):
                self.assertLess(time.monotonic(), deadline, "nodes did not reconnect")
                time.sleep(0.02)
            time.sleep(0.002 * (i % 6))
            for j in range(self.nats.n):
                self.nats.kill((i + j) % self.nats.n)
                time.sleep(0.001 * (i % 3))
            for n in nodes:
                self.assertTrue(n.alive(), "a node died while NATS flapped (round %d)" % i)
        self.nats.start_all()
        deadline = time.monotonic() + 40
        while True:
            r = self.publish(nodes[1], "flap", b"after")
            if r.status == 200:
                break
            self.assertJsonError(r, 503)
            self.assertLess(time.monotonic(), deadline, "publishing did not come back")
            time.sleep(0.2)
        for s in subs:
            mid, _, data = sse_next(s)
            self.assertEqual((mid, data), (r.json()["id"], b"after"))

    def test_sluice_node_killed_clients_resume_on_another(self):
        a = self.node()
        b = self.node()
        # Clients on A (SSE and long-poll) while messages flow.
        sse = self.conn(a)
        sse_open(sse, "/topics/n")
        ids = []
        for i in range(5):
            r = self.publish(b, "n", b"n%d" % i)
            ids.append(r.json()["id"])
        got = [sse_next(sse) for _ in range(5)]
        last_sse = got[-1][0]
        self.assertEqual(last_sse, ids[-1])
        a.signal(signal.SIGKILL)
        a.wait_exit()
        # Published while the clients have no node.
        for i in range(5, 12):
            r = self.publish(b, "n", b"n%d" % i)
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
        # They come back on B with their last ID: exactly what they missed.
        c = self.conn(b)
        sse_open(c, "/topics/n", [("Last-Event-ID", last_sse)])
        again = [sse_next(c) for _ in range(7)]
        self.assertEqual([g[0] for g in again], ids[5:])
        self.assertEqual([g[2] for g in again], [b"n%d" % i for i in range(5, 12)])
        j = self.longpoll(b, "n", ids[2], timeout=0)
        self.assertEqual([m["id"] for m in j["messages"]], ids[3:])
        # Nothing more, nothing twice: the next message is the next event.
        r = self.publish(b, "n", b"last")
        self.assertEqual(sse_next(c)[0], r.json()["id"])

    @unittest.skipUnless(nats_version() >= (2, 10, 0) or os.environ.get("SLUICE_TEST_NATS_PAUSE"),
                         "nats-server %d.%d.%d: under a paused stream leader, about 1 run in "
                         "30 loses one acknowledged message on a node whose consumer reads "
                         "the paused server's copy of the stream, which lacks it (2.9.10; "
                         "docs/cluster.md, 'NATS server versions'); 2.10 or "
                         "SLUICE_TEST_NATS_PAUSE=1 runs it" % nats_version())
    def test_nats_server_paused_publish_latency_bounded(self):
        # A failure says what each node delivered around a missing message,
        # whether it saw its copy of the stream disagree with the leader's,
        # its consumer's log lines and each NATS server's own copy.
        # Room for every message of the run: with the default 1,000 per
        # topic, what a stalled node had not delivered yet could be
        # dropped by retention before it comes back (a gap, not a loss).
        keep = 'sluice.topic("*", {backlog = 100000})\n'
        a = self.node(extra=keep)
        b = self.node(extra=keep)
        sub = self.conn(b, timeout=60)
        sse_open(sub, "/topics/p")
        sub_a = self.conn(a, timeout=60)
        sse_open(sub_a, "/topics/p")
        leader = self.nats.stream_leader("SLUICE")
        acked, latencies, errors, ack_times = {}, [], [], []
        stop = threading.Event()

        def publisher():
            try:
                with a.conn(timeout=30) as c:
                    i = 0
                    while not stop.is_set() and i < 20000:
                        body = b"p-%05d" % i
                        while True:
                            t0 = time.monotonic()
                            r = self.publish(a, "p", body, key="p%d" % i, conn=c)
                            latencies.append(time.monotonic() - t0)
                            if r.status == 200:
                                acked[body] = r.json()["id"]
                                ack_times.append(time.monotonic())
                                break
                            if r.status != 503:
                                errors.append(r)
                                return
                            time.sleep(0.05)
                        i += 1
            except Exception as e:
                errors.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        time.sleep(1)
        paused = time.monotonic()
        self.nats.kill(leader, signal.SIGSTOP)
        time.sleep(10)
        self.nats.kill(leader, signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(2)
        stop.set()
        t.join(60)
        self.assertEqual(errors, [])
        worst = max(latencies)
        print("\nNATS stream leader paused 10 s: longest publish %.2f s, %d acknowledged"
              % (worst, len(acked)), file=sys.stderr)
        # Bounded by the PubAck wait (CLUSTER_PUBLISH_TIMEOUT_MS) and the
        # client's own connect timeout, with room for a loaded machine.
        self.assertLess(worst, 8.0)
        # Whether the other two elect a leader within the pause is NATS's
        # affair (its election timeout is seconds): told, not asserted.
        during = sum(1 for t in ack_times if paused < t < resumed)
        print("acknowledged during the pause: %d" % during, file=sys.stderr)
        # Both nodes' live streams: everything acknowledged, once, in order,
        # with the acknowledged IDs.
        want = [(acked[k], k) for k in sorted(acked)]
        streams = {}
        for name, conn in (("B", sub), ("A", sub_a)):
            got = []
            try:
                for _ in range(len(acked)):
                    got.append(sse_next(conn))
            except AssertionError:
                pass  # one short: told below
            streams[name] = [(g[0], g[2]) for g in got]
        counters = {}
        for name, srv in (("A", a), ("B", b)):
            m = re.search(r"(?m)^sluice_cluster_diverged_total (\d+)$", self.metrics(srv))
            counters[name] = int(m.group(1)) if m else -1
        bad = [n for n in ("B", "A") if streams[n] != want]
        if bad or any(counters.values()):
            seen = ["lost on %s; sluice_cluster_diverged_total %s" % (bad, counters)]
            for name in bad:
                got = streams[name]
                missing = sorted(set(acked) - {g[1] for g in got})
                first = int(missing[0].split(b"-")[1]) if missing else 0
                near = [(i, d.decode()) for i, d in got if abs(int(d.split(b"-")[1]) - first) <= 2]
                seen.append("%s got %d of %d, missing %s; near it (id, body) %s; acked %s"
                            % (name, len(got), len(acked), missing[:3], near,
                               [(k.decode(), acked[k]) for k in sorted(acked)
                                if abs(int(k.split(b"-")[1]) - first) <= 2]))
            for name, srv in (("A", a), ("B", b)):
                seen.append("%s: %s" % (name, " | ".join(l for l in srv.logs()
                                                          if "cluster:" in l)[-2000:]))
            # Each NATS server's own copy of the stream (its replica's state).
            for i in range(self.nats.n):
                try:
                    url = ("http://127.0.0.1:%d/jsz?accounts=true&streams=true"
                           % self.nats.http_ports[i])
                    with urllib.request.urlopen(url, timeout=2) as r:
                        jsz = json.loads(r.read())
                    for acc in jsz.get("account_details") or []:
                        for st in acc.get("stream_detail") or []:
                            if st.get("name") == "SLUICE":
                                seen.append("n%d%s: %s" % (i, " (was paused)" if i == leader else "",
                                                           st.get("state")))
                except OSError as e:
                    seen.append("n%d: %s" % (i, e))
            self.fail("\n".join(seen))

    @unittest.skipUnless(shutil.which("nginx"), "nginx not installed (dev.sh installs it)")
    def test_longpolls_alternating_nodes_behind_round_robin_nginx(self):
        a = self.node(workers=1)
        b = self.node(workers=1)
        port = free_port()
        d = self.tmpdir()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("daemon off;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
                    "events { worker_connections 256; }\n"
                    "http { access_log off; client_body_temp_path %s; proxy_temp_path %s;\n"
                    "  upstream s { server 127.0.0.1:%d; server 127.0.0.1:%d; }\n"
                    "  server { listen 127.0.0.1:%d; location / { proxy_pass http://s;\n"
                    "    proxy_http_version 1.1; proxy_buffering off; proxy_read_timeout 60s; } } }\n"
                    % (d, d, d, d, a.port, b.port, port))
        ng = subprocess.Popen(["nginx", "-c", conf, "-p", d], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (ng.kill(), ng.wait(10)))
        deadline = time.monotonic() + 10
        while True:
            try:
                with RawConn.tcp("127.0.0.1", port, timeout=2) as c:
                    c.get("/topics/x?timeout=0")
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "nginx did not start")
                time.sleep(0.1)
        total = 60
        published = []

        def publisher():
            for i in range(total):
                with RawConn.tcp("127.0.0.1", port) as c:
                    r = c.request("POST", "/topics/lp", body=b"lp%d" % i)
                published.append((r.status, r.json().get("id") if r.status == 200 else None))
                time.sleep(0.01)

        # "now" before any publish, through the balancer.
        with RawConn.tcp("127.0.0.1", port) as c:
            cursor = c.get("/topics/lp?timeout=0").json()["last_id"]
        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            with RawConn.tcp("127.0.0.1", port, timeout=30) as c:
                r = c.get("/topics/lp?since=%s&timeout=5" % quote(cursor))
            self.assertEqual(r.status, 200, r)
            j = r.json()
            seen += j["messages"]
            cursor = j["last_id"]
        t.join(30)
        self.assertEqual([st for st, _ in published], [200] * total)
        self.assertEqual([m["data"] for m in seen], ["lp%d" % i for i in range(total)])
        self.assertEqual([m["id"] for m in seen], [i for _, i in published])

    def test_stream_with_other_settings_is_refused(self):
        self.node(replicas=3, stream="ORDERS")
        d = self.tmpdir()
        script = cluster_app(d, servers=self.nats.urls(), replicas=1, stream="ORDERS")
        rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", d, script])
        self.assertEqual(rc, 1, err)
        self.assertIn("stream ORDERS exists with other settings: replicas 3 (want 1)", err)


@unittest.skipUnless(have_nats(), "nats-server not installed (dev.sh installs it)")
class ClusterSecureTest(SluiceTestCase):
    """A NATS server that takes TLS connections only, with client
    certificates, and a user and password: cluster = {user, password,
    tls = {ca, cert, key}} on a real server, through the node's NATS loop
    (non-blocking TLS reads and writes)."""

    def setUp(self):
        d = self.tmpdir()
        self.server_cert, server_key = make_cert(d, "nats-server")
        self.client_cert, self.client_key = make_cert(d, "sluice-node", cn="sluice-node")
        # The client's self-signed certificate is its own CA.
        conf = ("tls { cert_file: %s, key_file: %s, ca_file: %s, verify: true, timeout: 2 }\n"
                "authorization { user: \"sluice\", password: \"s3cret pass\" }\n"
                % (json.dumps(self.server_cert), json.dumps(server_key),
                   json.dumps(self.client_cert)))
        self.nats = NatsCluster(1, extra_conf=conf)
        self.addCleanup(self.nats.cleanup)
        self.nats.start_all()

    def app(self, **over):
        settings = dict(servers=self.nats.url(0), user="sluice", password="s3cret pass",
                        tls={"ca": self.server_cert, "cert": self.client_cert,
                             "key": self.client_key})
        settings.update(over)
        return cluster_app(self.tmpdir(), **settings)

    def publish(self, srv, topic, body):
        with srv.conn() as c:
            return c.request("POST", "/topics/" + topic, body=body)

    def test_tls_with_a_client_certificate_and_a_password(self):
        a = self.start(app=self.app(), args=["-w", "1"])
        b = self.start(app=self.app(), args=["-w", "2"])
        s = self.conn(b)
        sse_open(s, "/topics/secure")
        # Bodies larger than a TLS record (16 KiB) and than the client's
        # read buffer (32 KiB): read in pieces, on the loop, from a socket
        # that does not block.
        bodies = [b"small", b"x" * 20000, b"0123456789" * 10000, b"last"]
        ids = []
        for body in bodies:
            r = self.publish(a, "secure", body)
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
        for want_id, body in zip(ids, bodies):
            mid, _, data = sse_next(s)
            self.assertEqual(mid, want_id)
            self.assertEqual(data, body)
        # A resume reads the stream over the same connection.
        with b.conn() as c:
            r = c.get("/topics/secure?since=%s&timeout=0" % quote(ids[0]))
        self.assertEqual(r.status, 200, r)
        self.assertEqual([m["id"] for m in r.json()["messages"]], ids[1:])

    def test_a_wrong_password_or_no_certificate_is_refused_at_start(self):
        for over in (dict(password="wrong"), dict(tls={"ca": self.server_cert})):
            rc, _, err = run_sluice(["--check", self.app(**over)])
            self.assertEqual(rc, 0, err)  # well formed: only the server can refuse them
            rc, _, err = run_sluice(["-l", "127.0.0.1:0", "-d", self.tmpdir(),
                                     self.app(**over)], timeout=30)
            self.assertEqual(rc, 1, err)
            self.assertIn("cluster: cannot connect to", err, over)


class ClusterConfigTest(SluiceTestCase):
    """--check validates the cluster block (no NATS needed)."""

    def check(self, **cluster):
        d = self.tmpdir()
        return run_sluice(["--check", cluster_app(d, **cluster)])

    def assertChecks(self, r, ok, want=None, what=None):
        rc, out, err = r
        self.assertEqual(rc, 0 if ok else 1, (what, out, err))
        if want:
            self.assertIn(want, err, what)

    def test_check(self):
        self.assertChecks(self.check(servers="nats://127.0.0.1:4222", replicas=3, stream="S1"),
                          True)
        self.assertChecks(self.check(servers=["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]),
                          True)
        for bad, want in ((dict(servers="127.0.0.1:4222"), "bad server"),
                          (dict(servers="nats://x:1", replicas=9), "replicas"),
                          (dict(servers="nats://x:1", stream="a.b"), "stream name"),
                          (dict(servers="nats://x:1", user="u"), "user and password"),
                          (dict(servers="nats://x:1", bogus=1), "unknown cluster setting 'bogus'"),
                          (dict(servers=7), "cluster.servers")):
            self.assertChecks(self.check(**bad), False, want, bad)
        # Retention that one stream cannot keep.
        d = self.tmpdir()
        script = cluster_app(d, 'sluice.topic("rooms.*", {backlog = 10})\n', servers="nats://x:1")
        self.assertChecks(run_sluice(["--check", script]), False,
                          "'rooms.*' (backlog 10, max_age 0) differs from the default")
        script = cluster_app(d, 'sluice.topic("*", {backlog = 10, max_age = 60})\n'
                             'sluice.topic("rooms.*", {backlog = 10, max_age = 60})\n',
                             servers="nats://x:1")
        self.assertChecks(run_sluice(["--check", script]), True)
        # --cluster wins over the script's servers, and is checked too.
        d = self.tmpdir()
        self.assertChecks(
            run_sluice(["--check", "--cluster", "bogus", cluster_app(d, servers="nats://x:1")]),
            False, "bad server 'bogus'")


if __name__ == "__main__":
    unittest.main()
