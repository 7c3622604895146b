"""Durable, resumable topics, judged from outside: publish, restart on the
same data directory, resume on every transport (long-poll, SSE, WebSocket)
and get exactly what was missed, in order, without duplicates; resume
while publishes go on; one connection on two topics; retention by count
and by age with the gap signal; unknown IDs; IDs across restarts; the
operator commands `sluice topics` and `sluice dump` beside a running
server.

The clients here (publisher, long-poll loop, SSE and WebSocket readers) are
small and synchronous on raw sockets so that every wait has a deadline;
test_crash.py imports them.  Standard library only.
"""

import base64
import collections
import hashlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ConnectionClosed, RawConn, SluiceTestCase,
                     app, build_request, run)

STORAGE_APP = app("storage_app.lua")

QUIET = 0.3       # seconds of silence that say "nothing more is coming"
COLLECT = 15.0    # bound on waiting for expected messages


# -- IDs ---------------------------------------------------------------------

def seq_of(mid):
    """The seq of an ID: the decimal after the last '-'."""
    return int(mid.rsplit("-", 1)[1])


def epoch_of(mid):
    return mid.rsplit("-", 1)[0]


# -- publishing ----------------------------------------------------------------

class PublishError(AssertionError):
    pass


class Publisher:
    """A keep-alive connection that publishes and returns acknowledged IDs."""

    def __init__(self, server, timeout=10.0):
        self.server = server
        self.timeout = timeout
        self.c = None

    def publish(self, topic, data, event=None):
        if isinstance(data, str):
            data = data.encode()
        path = "/topics/" + topic + ("?event=" + event if event else "")
        if self.c is None:
            self.c = RawConn.tcp("127.0.0.1", self.server.port, self.timeout)
        try:
            r = self.c.request("POST", path, body=data)
        except BaseException:
            self.close()
            raise
        if r.closes():
            self.close()
        if r.status != 200:
            raise PublishError("POST %s -> %d %r" % (path, r.status, r.body))
        v = r.json()
        if not isinstance(v, dict) or not isinstance(v.get("id"), str):
            raise PublishError("POST %s -> bad answer %r" % (path, r.body))
        return v["id"]

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def publish_many(server, topic, datas, event=None):
    """Publish each of DATAS in turn; returns the list of IDs."""
    p = Publisher(server)
    try:
        return [p.publish(topic, d, event) for d in datas]
    finally:
        p.close()


class PublisherThread(threading.Thread):
    """Publishes to TOPIC continuously (at most MAX messages, at most
    SECONDS) and records (id, data) of every acknowledged publish, in
    acknowledgement order.  Stops at the first failure (recorded in
    .error; a publish that got no answer is recorded in .unacked)."""

    def __init__(self, server, topic, tag, max_count=400, seconds=4.0, pause=0.0):
        super().__init__(daemon=True)
        self.server = server
        self.topic = topic
        self.tag = tag
        self.max_count = max_count
        self.seconds = seconds
        self.pause = pause
        self.acked = []      # [(id, data)]
        self.unacked = []    # data of publishes that got no answer
        self.error = None
        self.stop_flag = threading.Event()

    def run(self):
        p = Publisher(self.server, timeout=10.0)
        deadline = time.monotonic() + self.seconds
        try:
            for i in range(self.max_count):
                if self.stop_flag.is_set() or time.monotonic() > deadline:
                    break
                data = "%s-%d" % (self.tag, i)
                try:
                    mid = p.publish(self.topic, data)
                except BaseException as e:
                    self.unacked.append(data)
                    self.error = e
                    break
                self.acked.append((mid, data))
                if self.pause:
                    time.sleep(self.pause)
        finally:
            p.close()


# -- subscribing ---------------------------------------------------------------
#
# Every subscriber yields normalised items through next(deadline):
#   {"id", "topic", "event", "data"}  a message (data as str; base64 decoded
#                                     to bytes when the transport flagged it)
#   {"gap": topic-or-None}            the gap signal
# or None when the deadline passes first.


def _fill(c, deadline):
    """One recv on RawConn C bounded by DEADLINE: True when bytes came,
    False on timeout; raises ConnectionClosed at EOF."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    c.settimeout(max(0.01, left))
    try:
        if c._fill():
            return True
    except (socket.timeout, TimeoutError):
        return False
    raise ConnectionClosed("connection closed by the server")


def _norm(m):
    data = m.get("data")
    if m.get("encoding") == "base64":
        data = base64.b64decode(data)
    return {"id": m.get("id"), "topic": m.get("topic"), "event": m.get("event"),
            "data": data}


def _query(path, params):
    if not params:
        return path
    return path + ("&" if "?" in path else "?") + "&".join(
        "%s=%s" % kv for kv in params)


class LongPollSub:
    """A long-poll client loop: each next() answer comes from one poll
    (timeout <= 1 s) that asks from the last_id of the previous one.
    via: how the first poll carries RESUME ("since", "last_event_id",
    "header")."""

    kind = "longpoll"

    def __init__(self, server, path, resume=None, via="since", limit=None):
        self.server = server
        self.path = path
        self.cursor = resume
        self.via = via
        self.limit = limit
        self.first = True
        self.pending = collections.deque()
        self.answers = []

    def poll_once(self, timeout):
        params, headers = [("timeout", "%.2f" % timeout)], [("Connection", "close")]
        if self.limit:
            params.append(("limit", str(self.limit)))
        if self.cursor:
            if self.first and self.via == "header":
                headers.append(("Last-Event-ID", self.cursor))
            elif self.first and self.via == "last_event_id":
                params.append(("last_event_id", self.cursor))
            else:
                params.append(("since", self.cursor))
        with RawConn.tcp("127.0.0.1", self.server.port, timeout + 10) as c:
            r = c.request("GET", _query(self.path, params), headers)
        if r.status != 200:
            raise AssertionError("long-poll %s -> %r" % (self.path, r))
        v = r.json()
        self.answers.append(v)
        if not isinstance(v.get("messages"), list) or not isinstance(v.get("last_id"), str):
            raise AssertionError("bad long-poll answer %r" % r.body)
        if v.get("gap"):
            self.pending.append({"gap": None})
        for m in v["messages"]:
            self.pending.append(_norm(m))
        self.cursor = v["last_id"]
        self.first = False
        return v

    def next(self, deadline):
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.poll_once(min(1.0, left))
        return self.pending.popleft()

    def close(self):
        pass


class SSESub:
    """An EventSource-like reader.  via: "header" (Last-Event-ID) or
    "last_event_id" (query)."""

    kind = "sse"

    def __init__(self, server, path, resume=None, via="header"):
        self.several = path.startswith("/multi/")
        params, headers = [], [("Accept", "text/event-stream")]
        if resume:
            if via == "header":
                headers.append(("Last-Event-ID", resume))
            else:
                params.append(("last_event_id", resume))
        self.c = RawConn.tcp("127.0.0.1", server.port, 10.0)
        try:
            self.c.send(build_request("GET", _query(path, params), headers))
            version, status, reason, hdrs, raw = self.c.read_head()
        except BaseException:
            self.c.close()
            raise
        if status != 200:
            self.c.close()
            raise AssertionError("SSE %s -> %d %r" % (path, status, raw))

    def next(self, deadline):
        while True:
            i = self.c.buf.find(b"\n\n")
            if i < 0:
                if not _fill(self.c, deadline):
                    return None
                continue
            block = bytes(self.c.buf[:i]).decode("utf-8")
            del self.c.buf[:i + 2]
            ev = {}
            data = []
            for line in block.split("\n"):
                line = line.rstrip("\r")
                if not line or line.startswith(":"):
                    continue
                k, _, v = line.partition(":")
                if v.startswith(" "):
                    v = v[1:]
                if k == "data":
                    data.append(v)
                else:
                    ev[k] = v
            if not data:
                continue  # retry: or a heartbeat
            text = "\n".join(data)
            event = ev.get("event")
            if event == "sluice.gap":
                return {"gap": json.loads(text).get("topic")}
            if self.several:
                # over several topics: the JSON object, naming its topic
                # (docs/protocol.md, "Several topics on one stream")
                return _norm(json.loads(text))
            if event and event.endswith(".base64"):
                event = event[:-7]
                if event == "message":
                    event = None
                text = base64.b64decode(text)
            return {"id": ev.get("id"), "topic": None, "event": event, "data": text}

    def close(self):
        self.c.close()


class WSSub:
    """A WebSocket client with ?format=json.  via: "last_event_id" (query)
    or "header" (Last-Event-ID)."""

    kind = "ws"

    def __init__(self, server, path, resume=None, via="last_event_id"):
        params, headers = [("format", "json")], []
        if resume:
            if via == "header":
                headers.append(("Last-Event-ID", resume))
            else:
                params.append(("last_event_id", resume))
        key = base64.b64encode(os.urandom(16)).decode()
        headers += [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
        self.c = RawConn.tcp("127.0.0.1", server.port, 10.0)
        try:
            self.c.send(build_request("GET", _query(path, params), headers))
            version, status, reason, hdrs, raw = self.c.read_head()
        except BaseException:
            self.c.close()
            raise
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        got = dict((k.lower(), v) for k, v in hdrs).get("sec-websocket-accept")
        if status != 101 or got != accept:
            self.c.close()
            raise AssertionError("WebSocket %s -> %d %r" % (path, status, raw))

    def _frame(self, deadline):
        """(opcode, payload) of one complete frame, or None on timeout."""
        buf = self.c.buf
        while True:
            if len(buf) >= 2:
                b0, b1 = buf[0], buf[1]
                if b1 & 0x80:
                    raise AssertionError("server frame is masked")
                n, off = b1 & 0x7F, 2
                if n == 126 and len(buf) >= 4:
                    n, off = struct.unpack("!H", bytes(buf[2:4]))[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, off = struct.unpack("!Q", bytes(buf[2:10]))[0], 10
                if (b1 & 0x7F) < 126 or off > 2:
                    if len(buf) >= off + n:
                        if not b0 & 0x80:
                            raise AssertionError("fragmented frame (unexpected here)")
                        payload = bytes(buf[off:off + n])
                        del buf[:off + n]
                        return b0 & 0x0F, payload
            if not _fill(self.c, deadline):
                return None

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        else:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.c.send_quietly(head + mask + body)

    def next(self, deadline):
        while True:
            f = self._frame(deadline)
            if f is None:
                return None
            op, payload = f
            if op == 0x9:
                self._send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                raise ConnectionClosed("WebSocket closed by the server: %r" % payload)
            if op != 0x1:
                raise AssertionError("binary frame with ?format=json: %r" % payload[:100])
            v = json.loads(payload.decode("utf-8"))
            if v.get("gap") is True:
                return {"gap": v.get("topic")}
            return _norm(v)

    def close(self):
        self._send(0x8, struct.pack("!H", 1000))
        self.c.close()


# (name, class, via): every way a client resumes.
TRANSPORTS = [
    ("longpoll-since", LongPollSub, "since"),
    ("longpoll-last_event_id", LongPollSub, "last_event_id"),
    ("longpoll-header", LongPollSub, "header"),
    ("sse-header", SSESub, "header"),
    ("sse-query", SSESub, "last_event_id"),
    ("ws-query", WSSub, "last_event_id"),
    ("ws-header", WSSub, "header"),
]

# One way per transport, for the tests that repeat a lot.
MAIN_TRANSPORTS = [TRANSPORTS[0], TRANSPORTS[3], TRANSPORTS[4], TRANSPORTS[5]]


def collect(sub, count, timeout=COLLECT):
    """The next COUNT items (messages and gap signals); fewer if TIMEOUT
    passes first."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        it = sub.next(deadline)
        if it is None:
            break
        out.append(it)
    return out


def collect_until(sub, last_id, timeout=COLLECT):
    """Items until the message LAST_ID (included) or TIMEOUT."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        it = sub.next(deadline)
        if it is None:
            return out
        out.append(it)
        if it.get("id") == last_id:
            return out


def quiet(sub, seconds=QUIET):
    """Whatever arrives within SECONDS (should be nothing)."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        it = sub.next(deadline)
        if it is None:
            return out
        out.append(it)


def ids(items):
    return [it["id"] for it in items if "gap" not in it]


def gaps(items):
    return [it["gap"] for it in items if "gap" in it]


def sluice_cmd(*args):
    p = run([BIN] + list(args), timeout=20)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


def sluice_topics(data_dir):
    """`sluice topics -d DIR` as {topic: (count, oldest, newest)}."""
    rc, out, err = sluice_cmd("topics", "-d", data_dir)
    if rc != 0:
        raise AssertionError("sluice topics -> %d: %s" % (rc, err))
    lines = out.splitlines()
    if not lines or not lines[0].startswith("#"):
        raise AssertionError("sluice topics: no # header line: %r" % out[:300])
    res = {}
    for l in lines[1:]:
        f = l.split("\t")
        if len(f) != 4:
            raise AssertionError("sluice topics: bad line %r" % l)
        res[f[0]] = (int(f[1]), f[2], f[3])
    return res


def sluice_dump(data_dir, topic, since=None):
    """`sluice dump TOPIC [--since ID] -d DIR` as a list of dicts."""
    args = ["dump", topic] + (["--since", since] if since else []) + ["-d", data_dir]
    rc, out, err = sluice_cmd(*args)
    if rc != 0:
        raise AssertionError("sluice %s -> %d: %s" % (" ".join(args), rc, err))
    return [json.loads(l) for l in out.splitlines() if l.strip()]


# -- tests ------------------------------------------------------------------------

class StorageCase(SluiceTestCase):

    def setUp(self):
        self.data = self.tmpdir()

    def server(self, data=None, app_path=STORAGE_APP):
        return self.start(app=app_path, data_dir=data or self.data)

    def restart(self, s):
        self.assertStopsCleanly(s)
        return self.server(data=s.data_dir)

    def open_sub(self, cls, via, server, path, resume):
        sub = cls(server, path, resume, via)
        self.addCleanup(sub.close)
        return sub

    def assertResumes(self, sub, expect, live=None, live_topic=None, server=None,
                      expect_gaps=()):
        """SUB yields exactly EXPECT (ids, in order) and the gap signals
        EXPECT_GAPS, then the live messages published to LIVE_TOPIC, then
        nothing."""
        want = len(expect) + len(expect_gaps)
        got = collect(sub, want)
        self.assertEqual(ids(got), expect, got)
        self.assertEqual(sorted(gaps(got), key=str), sorted(expect_gaps, key=str), got)
        if live:
            live_ids = publish_many(server, live_topic, live)
            got2 = collect(sub, len(live_ids))
            self.assertEqual(ids(got2), live_ids, got2)
            self.assertEqual([it["data"] for it in got2], list(live))
        self.assertEqual(quiet(sub), [], "unexpected extra items")
        return got


class ResumeAfterRestartTest(StorageCase):

    def test_resume_from_middle_after_restart_every_transport(self):
        s = self.server()
        published = {}
        for name, cls, via in TRANSPORTS:
            topic = "res." + name
            datas = ["%s message %d" % (name, i) for i in range(50)]
            published[name] = (topic, datas, publish_many(s, topic, datas, event="ev"))
        s = self.restart(s)
        for name, cls, via in TRANSPORTS:
            with self.subTest(transport=name):
                topic, datas, mids = published[name]
                sub = self.open_sub(cls, via, s, "/topics/" + topic, mids[24])
                got = self.assertResumes(sub, mids[25:], live=["live 1", "live 2", "live 3"],
                                         live_topic=topic, server=s)
                self.assertEqual([it["data"] for it in got], datas[25:])
                self.assertEqual({it["event"] for it in got}, {"ev"})
                if cls is not SSESub:
                    self.assertEqual({it["topic"] for it in got}, {topic})

    def test_longpoll_pages_with_limit(self):
        s = self.server()
        mids = publish_many(s, "pages", ["p%d" % i for i in range(23)])
        s = self.restart(s)
        sub = LongPollSub(s, "/topics/pages", mids[2], limit=5)
        got = collect(sub, 20)
        self.assertEqual(ids(got), mids[3:])
        # Pages of at most 5, each last_id the last message's ID.
        sizes = [len(a["messages"]) for a in sub.answers]
        self.assertEqual(sizes, [5, 5, 5, 5])
        for a in sub.answers:
            self.assertEqual(a["last_id"], a["messages"][-1]["id"])
        self.assertEqual(quiet(sub), [])

    def test_ids_increase_across_restarts_and_old_ids_resume(self):
        s = self.server()
        run1 = publish_many(s, "epochs", ["a%d" % i for i in range(5)])
        s = self.restart(s)
        run2 = publish_many(s, "epochs", ["b%d" % i for i in range(5)])
        other = publish_many(s, "epochs.other", ["o"])
        # Two runs that publish nothing must not disturb the old IDs.
        s = self.restart(s)
        s = self.restart(s)
        run3 = publish_many(s, "epochs", ["c%d" % i for i in range(3)])
        every = run1 + run2 + run3
        seqs = [seq_of(m) for m in every]
        self.assertEqual(seqs, sorted(set(seqs)), every)
        self.assertLess(seq_of(run2[-1]), seq_of(other[0]))
        self.assertLess(seq_of(other[0]), seq_of(run3[0]))
        self.assertEqual(len({epoch_of(m) for m in run1}), 1)
        self.assertEqual(len({epoch_of(m) for m in run2}), 1)
        self.assertEqual(len({epoch_of(m) for m in run3}), 1)
        self.assertEqual(len({epoch_of(run1[0]), epoch_of(run2[0]), epoch_of(run3[0])}), 3,
                         "a new epoch per run")
        for name, cls, via in MAIN_TRANSPORTS:
            with self.subTest(transport=name, resume="run1"):
                sub = self.open_sub(cls, via, s, "/topics/epochs", run1[1])
                self.assertResumes(sub, every[2:])
                sub.close()
            with self.subTest(transport=name, resume="run1 last"):
                sub = self.open_sub(cls, via, s, "/topics/epochs", run1[-1])
                self.assertResumes(sub, run2 + run3)
                sub.close()
            with self.subTest(transport=name, resume="run2 last"):
                sub = self.open_sub(cls, via, s, "/topics/epochs", run2[-1])
                self.assertResumes(sub, run3)
                sub.close()


class ResumeWhilePublishingTest(StorageCase):

    def run_reconnecting(self, s, cls, via, topic):
        seed = publish_many(s, topic, ["seed"])[0]
        pub = PublisherThread(s, topic, "c", max_count=600, seconds=3.0)
        seen = []
        last = seed
        reconnects = 0
        rnd = random.Random(seq_of(seed))
        pub.start()
        try:
            # Reconnect at least 6 times while the publisher runs.
            while reconnects < 6 or pub.is_alive():
                if reconnects > 60:
                    break
                sub = cls(s, "/topics/" + topic, last, via)
                try:
                    until = time.monotonic() + rnd.uniform(0.05, 0.4)
                    while True:
                        it = sub.next(until)
                        if it is None:
                            break
                        self.assertNotIn("gap", it, "gap while resuming from a retained ID")
                        seen.append(it)
                        last = it["id"]
                finally:
                    sub.close()
                reconnects += 1
        finally:
            pub.stop_flag.set()
            pub.join(timeout=15)
        self.assertFalse(pub.is_alive())
        self.assertIsNone(pub.error, "publisher failed: %r" % pub.error)
        acked = pub.acked
        self.assertGreater(len(acked), 10)
        # The rest, on one more connection.
        if acked and last != acked[-1][0]:
            sub = cls(s, "/topics/" + topic, last, via)
            try:
                seen += collect_until(sub, acked[-1][0])
                seen += quiet(sub)
            finally:
                sub.close()
        self.assertEqual(gaps(seen), [])
        self.assertEqual(ids(seen), [m for m, _ in acked])
        self.assertEqual([it["data"] for it in seen], [d for _, d in acked])
        return reconnects

    def test_reconnect_during_publishing_every_transport(self):
        s = self.server()
        for name, cls, via in MAIN_TRANSPORTS:
            with self.subTest(transport=name):
                self.run_reconnecting(s, cls, via, "cont." + name)

    def test_reconnect_across_transports(self):
        """One client that switches transport at every reconnect."""
        s = self.server()
        topic = "cont.mixed"
        seed = publish_many(s, topic, ["seed"])[0]
        pub = PublisherThread(s, topic, "m", max_count=600, seconds=3.0)
        seen, last, i = [], seed, 0
        pub.start()
        try:
            while (i < 8 or pub.is_alive()) and i < 80:
                name, cls, via = MAIN_TRANSPORTS[i % len(MAIN_TRANSPORTS)]
                sub = cls(s, "/topics/" + topic, last, via)
                try:
                    until = time.monotonic() + 0.05 + 0.05 * (i % 5)
                    while True:
                        it = sub.next(until)
                        if it is None:
                            break
                        seen.append(it)
                        last = it["id"]
                finally:
                    sub.close()
                i += 1
        finally:
            pub.stop_flag.set()
            pub.join(timeout=15)
        self.assertIsNone(pub.error)
        acked = pub.acked
        sub = LongPollSub(s, "/topics/" + topic, last)
        if last != acked[-1][0]:
            seen += collect_until(sub, acked[-1][0])
        seen += quiet(sub)
        self.assertEqual(gaps(seen), [])
        self.assertEqual(ids(seen), [m for m, _ in acked])

    def test_reconnect_across_restart_while_publishing(self):
        """The publisher stops, the server restarts, the publisher goes on:
        a long-poll client that reconnected meanwhile misses nothing."""
        s = self.server()
        topic = "cont.restart"
        seed = publish_many(s, topic, ["seed"])[0]
        acked = []
        sub = LongPollSub(s, "/topics/" + topic, seed)
        seen = []
        for rnd in range(3):
            pub = PublisherThread(s, topic, "r%d" % rnd, max_count=200, seconds=1.0)
            pub.start()
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                it = sub.next(until)
                if it is not None:
                    seen.append(it)
            pub.join(timeout=15)
            self.assertIsNone(pub.error)
            acked += pub.acked
            s = self.restart(s)
            sub.server = s
        if ids(seen)[-1:] != [acked[-1][0]]:
            seen += collect_until(sub, acked[-1][0])
        seen += quiet(sub)
        self.assertEqual(gaps(seen), [])
        self.assertEqual(ids(seen), [m for m, _ in acked])


class MultiTopicTest(StorageCase):

    def publish_mixed(self, s, a, b, n, seed):
        rnd = random.Random(seed)
        p = Publisher(s)
        out = []
        try:
            for i in range(n):
                t = a if rnd.random() < 0.5 else b
                out.append((p.publish(t, "%s:%d" % (t, i)), t))
        finally:
            p.close()
        return out

    def test_multi_topic_resume_merged_in_id_order(self):
        s = self.server()
        plan = {}
        for k, (name, cls, via) in enumerate(TRANSPORTS):
            a, b = "mt.%s.a" % name, "mt.%s.b" % name
            # A message of another topic sits between theirs.
            publish_many(s, "mt.unrelated", ["x"])
            plan[name] = (a, b, self.publish_mixed(s, a, b, 30, k))
        s = self.restart(s)
        for name, cls, via in TRANSPORTS:
            with self.subTest(transport=name):
                a, b, msgs = plan[name]
                self.assertEqual({t for _, t in msgs[13:]}, {a, b})
                sub = self.open_sub(cls, via, s, "/multi/%s/%s" % (a, b), msgs[12][0])
                got = collect(sub, 17)
                self.assertEqual(ids(got), [m for m, _ in msgs[13:]])
                self.assertEqual([it["data"].split(":")[0] for it in got],
                                 [t for _, t in msgs[13:]])
                if cls is not SSESub:
                    self.assertEqual([it["topic"] for it in got], [t for _, t in msgs[13:]])
                # Live, both topics, in publish order.
                p = Publisher(s)
                live = [p.publish(b, "live b"), p.publish(a, "live a"), p.publish(b, "live b2")]
                p.close()
                got2 = collect(sub, 3)
                self.assertEqual(ids(got2), live)
                self.assertEqual(quiet(sub), [])

    def test_multi_topic_reconnect_while_both_publish(self):
        """Two publishers, one per topic, while a /multi client reconnects
        with the last ID it saw: it gets the union, in ID order, once."""
        s = self.server()
        for name, cls, via in MAIN_TRANSPORTS:
            with self.subTest(transport=name):
                a, b = "mc.%s.a" % name, "mc.%s.b" % name
                last = publish_many(s, a, ["seed"])[0]
                pubs = [PublisherThread(s, t, t, max_count=400, seconds=2.0) for t in (a, b)]
                seen, i = [], 0
                for p in pubs:
                    p.start()
                try:
                    while (i < 6 or any(p.is_alive() for p in pubs)) and i < 60:
                        sub = cls(s, "/multi/%s/%s" % (a, b), last, via)
                        try:
                            until = time.monotonic() + 0.05 + 0.07 * (i % 4)
                            while True:
                                it = sub.next(until)
                                if it is None:
                                    break
                                seen.append(it)
                                last = it["id"]
                        finally:
                            sub.close()
                        i += 1
                finally:
                    for p in pubs:
                        p.stop_flag.set()
                        p.join(timeout=15)
                for p in pubs:
                    self.assertIsNone(p.error)
                acked = sorted(pubs[0].acked + pubs[1].acked, key=lambda x: seq_of(x[0]))
                sub = LongPollSub(s, "/multi/%s/%s" % (a, b), last)
                if last != acked[-1][0]:
                    seen += collect_until(sub, acked[-1][0])
                seen += quiet(sub)
                self.assertEqual(gaps(seen), [])
                self.assertEqual(ids(seen), [m for m, _ in acked])
                self.assertEqual([it["data"] for it in seen], [d for _, d in acked])

    def test_multi_topic_gap_only_for_the_trimmed_topic(self):
        s = self.server()
        a, b = "short.mix", "long.mix"
        msgs = []
        p = Publisher(s)
        for i in range(16):
            t = a if i % 2 == 0 else b
            msgs.append((p.publish(t, "%s:%d" % (t, i)), t))
        p.close()
        # short.mix (indexes 0, 2, .. 14) keeps its newest 5: 6 .. 14.
        kept_a = [m for m, t in msgs if t == a][3:]
        self.assertEqual(sluice_topics(s.data_dir)[a], (5, kept_a[0], kept_a[-1]))
        for name, cls, via in MAIN_TRANSPORTS:
            with self.subTest(transport=name):
                # msgs[1] (long.mix) is older than short.mix's backlog: gap
                # for short.mix only; long.mix is complete after it.
                sub = self.open_sub(cls, via, s, "/multi/%s/%s" % (a, b), msgs[1][0])
                expect = [m for m, t in msgs[2:] if t == b or m in kept_a]
                want_gap = [a] if cls is not LongPollSub else [None]
                self.assertResumes(sub, expect, expect_gaps=want_gap)
                sub.close()
                # From msgs[5], after the newest trimmed one (msgs[4]): no gap.
                sub = self.open_sub(cls, via, s, "/multi/%s/%s" % (a, b), msgs[5][0])
                self.assertResumes(sub, [m for m, t in msgs[6:]])
                sub.close()


class RetentionTest(StorageCase):

    def test_retention_by_count_and_gap(self):
        s = self.server()
        for name, cls, via in TRANSPORTS:
            with self.subTest(transport=name):
                topic = "short." + name
                mids = publish_many(s, topic, ["n%d" % i for i in range(12)])
                t = sluice_topics(s.data_dir)[topic]
                self.assertEqual(t, (5, mids[7], mids[11]))
                # Older than the backlog: every retained message + gap.
                sub = self.open_sub(cls, via, s, "/topics/" + topic, mids[1])
                topic_gap = None if cls is LongPollSub else topic
                got = self.assertResumes(sub, mids[7:], expect_gaps=[topic_gap])
                self.assertEqual([it["data"] for it in got if "gap" not in it],
                                 ["n%d" % i for i in range(7, 12)])
                sub.close()
                # The newest trimmed one: the client has all before the
                # retained backlog, so no gap.
                sub = self.open_sub(cls, via, s, "/topics/" + topic, mids[6])
                self.assertResumes(sub, mids[7:])
                sub.close()
                # Within the backlog: the rest, no gap, then live ones.
                sub = self.open_sub(cls, via, s, "/topics/" + topic, mids[9])
                self.assertResumes(sub, mids[10:], live=["after"], live_topic=topic, server=s)
                sub.close()

    def test_retention_by_count_survives_restart(self):
        s = self.server()
        mids = publish_many(s, "short.restart", ["n%d" % i for i in range(9)])
        s = self.restart(s)
        mids += publish_many(s, "short.restart", ["m%d" % i for i in range(2)])
        self.assertEqual(sluice_topics(s.data_dir)["short.restart"], (5, mids[6], mids[10]))
        for name, cls, via in MAIN_TRANSPORTS:
            with self.subTest(transport=name):
                sub = self.open_sub(cls, via, s, "/topics/short.restart", mids[3])
                gap = None if cls is LongPollSub else "short.restart"
                self.assertResumes(sub, mids[6:], expect_gaps=[gap])

    def test_retention_by_age(self):
        """max_age = 1: the messages that are retained live about a second,
        so each check opens its subscribers right after publishing (the
        replay is taken at subscribe time) and only then reads."""
        s = self.server()
        old = {}
        for name, cls, via in TRANSPORTS:
            old[name] = publish_many(s, "aged." + name, ["old%d" % i for i in range(4)])
        idle = {}
        for name, cls, via in TRANSPORTS:
            idle[name] = publish_many(s, "aged.idle." + name, ["idle%d" % i for i in range(3)])
        time.sleep(2.2)
        # The idle topic ages through the writer's sweep (bounded wait).
        deadline = time.monotonic() + 10
        idle_counts = lambda: [sluice_topics(s.data_dir)["aged.idle." + name][0]
                               for name, _, _ in TRANSPORTS]
        while any(idle_counts()) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(idle_counts(), [0] * len(TRANSPORTS))
        for name, cls, via in TRANSPORTS:
            topic = "aged." + name
            gap = None if cls is LongPollSub else topic
            with self.subTest(transport=name):
                new = publish_many(s, topic, ["new0", "new1"])
                sub1 = self.open_sub(cls, via, s, "/topics/" + topic, old[name][1])
                sub2 = self.open_sub(cls, via, s, "/topics/" + topic, old[name][-1])
                if cls is LongPollSub:  # the replay is taken at the poll
                    sub1.poll_once(0)
                    sub2.poll_once(0)
                # aged out: every retained message and the gap
                self.assertResumes(sub1, new, expect_gaps=[gap])
                # from the newest aged-out message: the rest, no gap
                self.assertResumes(sub2, new)
                sub1.close()
                sub2.close()
            with self.subTest(transport=name, resume="idle topic emptied"):
                gap = None if cls is LongPollSub else "aged.idle." + name
                sub = self.open_sub(cls, via, s, "/topics/aged.idle." + name, idle[name][0])
                if cls is LongPollSub:
                    # One poll: asking on is test_longpoll_gap_not_repeated.
                    v = sub.poll_once(0)
                    self.assertEqual((v["messages"], v.get("gap")), ([], True), v)
                else:
                    self.assertResumes(sub, [], expect_gaps=[gap], live=["fresh"],
                                       live_topic="aged.idle." + name, server=s)
                sub.close()

    def test_unknown_ids_replay_all_with_gap(self):
        other = self.server(data=self.tmpdir())
        foreign = publish_many(other, "unk", ["elsewhere%d" % i for i in range(20)])
        self.assertStopsCleanly(other)
        s = self.server()
        mids = publish_many(s, "unk", ["here%d" % i for i in range(5)])
        bad = {
            "other data dir": foreign[2],            # seq within ours
            "other data dir, seq ahead": foreign[-1],  # seq beyond ours
            "well-formed nonsense": "zzzzzz-99999999",
            "malformed": "not-an-id-x",
        }
        self.assertNotEqual(epoch_of(foreign[2]), epoch_of(mids[0]))
        for name, cls, via in TRANSPORTS:
            for what, rid in bad.items():
                with self.subTest(transport=name, id=what):
                    sub = self.open_sub(cls, via, s, "/topics/unk", rid)
                    gap = None if cls is LongPollSub else "unk"
                    got = self.assertResumes(sub, mids, expect_gaps=[gap])
                    self.assertEqual([it["data"] for it in got if "gap" not in it],
                                     ["here%d" % i for i in range(5)])
                    sub.close()

    def test_longpoll_gap_not_repeated(self):
        """A long-poll whose resume ID aged out of an emptied topic gets
        {"messages":[],"gap":true}; asking again with the last_id of that
        answer must not report the same gap again (the client has seen
        everything there is), and must get the next message."""
        s = self.server()
        old = publish_many(s, "aged.again", ["o1", "o2"])
        deadline = time.monotonic() + 12
        while sluice_topics(s.data_dir)["aged.again"][0] and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(sluice_topics(s.data_dir)["aged.again"][0], 0)
        sub = LongPollSub(s, "/topics/aged.again", old[0])
        v = sub.poll_once(0)
        self.assertEqual((v["messages"], v.get("gap")), ([], True), v)
        v = sub.poll_once(0)
        self.assertEqual(v["messages"], [], v)
        self.assertNotIn("gap", v, "the same gap reported again after asking from last_id "
                         "%s: %r" % (sub.answers[0]["last_id"], v))
        live = publish_many(s, "aged.again", ["fresh"])
        v = sub.poll_once(1)
        self.assertEqual([m["id"] for m in v["messages"]], live, v)
        self.assertNotIn("gap", v, v)

    def test_longpoll_empty_answer_cursor_survives_restart(self):
        """The last_id of an empty long-poll answer is a resume point like
        any other: after a restart it must still be known (no gap, no
        replay of what the client had)."""
        s = self.server()
        mids = publish_many(s, "cursor", ["c1", "c2", "c3"])
        s = self.restart(s)
        # (a) a poll without since, before this run published anything
        a = LongPollSub(s, "/topics/cursor").poll_once(0)
        # (b) a poll resuming from the previous run's newest ID
        b = LongPollSub(s, "/topics/cursor", mids[-1]).poll_once(0)
        for v in (a, b):
            self.assertEqual(v["messages"], [], v)
            self.assertNotIn("gap", v, v)
        s = self.restart(s)
        for what, v in (("poll without since", a), ("poll since the newest ID", b)):
            with self.subTest(cursor=what):
                sub = LongPollSub(s, "/topics/cursor", v["last_id"])
                got = sub.poll_once(0)
                self.assertEqual((got["messages"], got.get("gap")), ([], None),
                                 "GET /topics/cursor?since=%s after a restart (the last_id "
                                 "of an empty answer of the previous run)" % v["last_id"])

    def test_longpoll_gap_answer_shape(self):
        s = self.server()
        mids = publish_many(s, "short.shape", ["s%d" % i for i in range(8)])
        sub = LongPollSub(s, "/topics/short.shape", mids[0])
        v = sub.poll_once(0)
        self.assertIs(v.get("gap"), True, v)
        self.assertEqual([m["id"] for m in v["messages"]], mids[3:])
        self.assertEqual(v["last_id"], mids[-1])
        # Asking on from last_id: nothing, no gap.
        v = sub.poll_once(0)
        self.assertEqual(v["messages"], [])
        self.assertNotIn("gap", v)
        self.assertEqual(v["last_id"], mids[-1])


class OperatorCommandsTest(StorageCase):

    def test_topics_and_dump_while_running(self):
        s = self.server()
        a = publish_many(s, "op.a", ["a%d" % i for i in range(7)], event="tick")
        b = publish_many(s, "op.b", ["b0", "b1\nsecond line", "b2 \"quoted\""])
        binary = bytes(range(256))
        c = publish_many(s, "op.bin", [binary])
        short = publish_many(s, "short.op", ["s%d" % i for i in range(9)])
        t = sluice_topics(s.data_dir)
        self.assertEqual(t["op.a"], (7, a[0], a[-1]))
        self.assertEqual(t["op.b"], (3, b[0], b[-1]))
        self.assertEqual(t["op.bin"], (1, c[0], c[0]))
        self.assertEqual(t["short.op"], (5, short[4], short[-1]))
        d = sluice_dump(s.data_dir, "op.a")
        self.assertEqual([m["id"] for m in d], a)
        self.assertEqual([m["data"] for m in d], ["a%d" % i for i in range(7)])
        self.assertEqual({m["event"] for m in d}, {"tick"})
        self.assertEqual({m["topic"] for m in d}, {"op.a"})
        d = sluice_dump(s.data_dir, "op.a", since=a[3])
        self.assertEqual([m["id"] for m in d], a[4:])
        d = sluice_dump(s.data_dir, "op.b")
        self.assertEqual([m["data"] for m in d], ["b0", "b1\nsecond line", "b2 \"quoted\""])
        d = sluice_dump(s.data_dir, "op.bin")
        self.assertEqual(len(d), 1)
        self.assertEqual(d[0].get("encoding"), "base64", d)
        self.assertEqual(base64.b64decode(d[0]["data"]), binary)
        d = sluice_dump(s.data_dir, "short.op")
        self.assertEqual([m["id"] for m in d], short[4:])
        # While publishes go on, the commands keep answering consistently.
        first = publish_many(s, "op.live", ["first"])
        pub = PublisherThread(s, "op.live", "l", max_count=400, seconds=2.0)
        pub.start()
        try:
            for _ in range(5):
                d = sluice_dump(s.data_dir, "op.live")
                seqs = [seq_of(m["id"]) for m in d]
                self.assertEqual(seqs, sorted(set(seqs)))
                tl = sluice_topics(s.data_dir).get("op.live")
                if tl:
                    self.assertGreaterEqual(tl[0], len(d))
                time.sleep(0.2)
        finally:
            pub.stop_flag.set()
            pub.join(timeout=15)
        self.assertIsNone(pub.error)
        d = sluice_dump(s.data_dir, "op.live")
        self.assertEqual([(m["id"], m["data"]) for m in d], [(first[0], "first")] + pub.acked)
        # The server still serves after the readers came and went.
        self.assertTrue(publish_many(s, "op.a", ["after"]))
        self.assertStopsCleanly(s)
        # And the commands work with no server running.
        self.assertEqual(sluice_topics(s.data_dir)["op.a"][0], 8)


class LogCheckpointTest(StorageCase):
    """Durable mode acknowledges a publish once it is in the write-ahead log
    and moves the log into LMDB at checkpoints, about once a second: the
    metrics show the log drain, and the messages stay readable throughout,
    across a restart and after a crash."""

    def metrics(self, s):
        body = s.conn().get("/metrics").body.decode()
        out = {}
        for line in body.splitlines():
            if line.startswith("sluice_storage_"):
                name, value = line.split()
                out[name] = int(value)
        return out

    def test_log_drains_into_lmdb_within_seconds(self):
        s = self.server()
        mids = publish_many(s, "ckpt.a", ["c%d" % i for i in range(20)])
        m = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = self.metrics(s)
            if m["sluice_storage_log_messages"] == 0 and m["sluice_storage_checkpoints_total"] >= 1:
                break
            time.sleep(0.1)
        self.assertEqual(m["sluice_storage_log_messages"], 0, m)
        self.assertGreaterEqual(m["sluice_storage_checkpoints_total"], 1, m)
        self.assertEqual(m["sluice_storage_checkpoint_failures_total"], 0, m)
        self.assertEqual(m["sluice_storage_messages"], 20, m)
        # Readable from LMDB alone now, and from the log again after more.
        more = publish_many(s, "ckpt.a", ["d0", "d1"])
        d = sluice_dump(s.data_dir, "ckpt.a")
        self.assertEqual([x["id"] for x in d], mids + more)
        s = self.restart(s)
        d = sluice_dump(s.data_dir, "ckpt.a")
        self.assertEqual([x["id"] for x in d], mids + more)
        self.assertEqual(self.metrics(s)["sluice_storage_log_messages"], 0)


if __name__ == "__main__":
    unittest.main()
