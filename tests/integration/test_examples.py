"""The example apps under examples/, end to end with real clients.

Each example runs in the real binary (harness.Server) and is driven the way
its README tells users to drive it: HTTP with urllib, WebSocket with
Debian's python3-websockets, Server-Sent Events over a raw socket (parsed
here, so the wire format is checked too).

  chat      login (JWT for one room), 401 without a valid token (missing,
            garbage, wrong secret, expired, alg none, no room), 403 with a
            token for another room, the socket closed with 4001 and the SSE
            stream ended when the token expires, two sockets talking in one
            room, room isolation, the length limit, history by resuming with
            ?last_event_id=, posting over HTTP
  feed      timer-fed SSE with rotating event names, resume with
            Last-Event-ID (no gap, no duplicate), the sluice.gap event when
            the resume point fell out of the backlog, the events option
  filters   each user gets only its messages and the broadcasts, transformed;
            on_publish drops invalid bodies (422) and normalises the rest;
            the same through a long-poll replay
  presence  join/leave events, the roster at /who, one join per user however
            many tabs, skip_self, the events option, a peer that vanishes,
            SIGTERM with rooms open, the roster after a reload

Why it is shaped so: absence ("bob does not get it") is never checked by
sleeping: a later sentinel message that everyone gets shows that nothing
came before it.  Every wait is bounded.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import websockets  # noqa: E402  (Debian's python3-websockets)
import websockets.exceptions  # noqa: E402

EXAMPLES = os.path.join(harness.SOURCE_DIR, "examples")
WAIT = 10.0  # seconds: bound of any single wait for a message


def example(name):
    return os.path.join(EXAMPLES, name, "app.lua")


def arun(coro, timeout=60):
    """Run one async test body, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- HTTP ------------------------------------------------------------------------

class Http:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Http %s %r>" % (self.status, self.body[:300])


def http(method, url, body=None, headers=None):
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return Http(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Http(e.code, e.headers, e.read())


# -- WebSocket -------------------------------------------------------------------

async def ws_open(url, **kw):
    return await websockets.connect(url, open_timeout=WAIT, close_timeout=2, **kw)


async def recv(ws, timeout=WAIT):
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws, timeout=WAIT):
    return json.loads(await recv(ws, timeout))


async def ws_status(url):
    """The HTTP status that refused a WebSocket handshake (None if it opened)."""
    try:
        ws = await ws_open(url)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return None


# -- SSE over a raw socket ---------------------------------------------------------

class Sse:
    """A Server-Sent Events reader on a raw socket: every event with its
    fields, parsed the WHATWG way (enough for what sluice sends)."""

    def __init__(self, server, path, last_event_id=None):
        self.conn = server.conn(timeout=WAIT)
        headers = [("Accept", "text/event-stream")]
        if last_event_id is not None:
            headers.append(("Last-Event-ID", last_event_id))
        self.conn.send(harness.build_request("GET", path, headers))
        _, self.status, _, self.headers, _ = self.conn.read_head()

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def event(self):
        """The next event {"id", "event", "data"} (comments and retry-only
        blocks skipped); raises on timeout or close."""
        while True:
            block = self.conn.read_until(b"\n\n").decode("utf-8")
            ev = {"id": None, "event": "message", "data": []}
            seen = False
            for line in block.split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if name == "data":
                    ev["data"].append(value)
                    seen = True
                elif name == "event":
                    ev["event"] = value
                elif name == "id":
                    ev["id"] = value
            if seen:
                ev["data"] = "\n".join(ev["data"])
                return ev

    def events(self, n):
        return [self.event() for _ in range(n)]

    def close(self):
        self.conn.close()


# -- a server per test class -----------------------------------------------------------

class ExampleCase(unittest.TestCase):
    APP = None
    ENV = {}
    ARGS = []

    @classmethod
    def setUpClass(cls):
        saved = {k: os.environ.get(k) for k in cls.ENV}
        os.environ.update(cls.ENV)
        try:
            cls.server = harness.Server(app=example(cls.APP), args=cls.ARGS)
            try:
                cls.server.start()
            except BaseException:
                cls.server.kill()
                raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()  # raises if it crashed or did not exit 0

    def url(self, path):
        return self.server.url(path)

    def ws_url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.server.port, path)

    def sse(self, path, last_event_id=None):
        s = Sse(self.server, path, last_event_id)
        self.addCleanup(s.close)
        return s

    def assertAlive(self):
        self.assertTrue(self.server.alive(), "server died:\n" + self.server.log_text())


_seq = [0]


def unique(prefix):
    _seq[0] += 1
    return "%s%d%d" % (prefix, os.getpid() % 10000, _seq[0])


# ================================================================================
# chat
# ================================================================================

CHAT_SECRET = "test-secret-%d" % os.getpid()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def make_jwt(claims, secret=CHAT_SECRET, alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing = (head + "." + body).encode()
    if alg == "none":
        return head + "." + body + "."
    sig = hmac.new(secret.encode(), signing, hashlib.sha256).digest()
    return head + "." + body + "." + b64url(sig)


class ChatTest(ExampleCase):
    APP = "chat"
    ENV = {"CHAT_SECRET": CHAT_SECRET}

    def login(self, name, room):
        r = http("POST", self.url("/login"), json.dumps({"name": name, "room": room}),
                 {"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r)
        return r.json()["token"]

    def room_url(self, room, token, **q):
        q["token"] = token
        return self.ws_url("/rooms/%s?%s" % (room, urllib.parse.urlencode(q)))

    def chat(self, env):
        """The {"from", "text"} of a JSON envelope."""
        self.assertIn("id", env, env)
        return json.loads(env["data"])

    def test_page(self):
        r = http("GET", self.url("/"))
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("content-type", ""))
        self.assertIn(b"<title>sluice chat</title>", r.body)
        self.assertIn(b"new WebSocket", r.body)

    def test_login_signs_an_hs256_jwt(self):
        tok = self.login("alice", "lobby")
        parts = tok.split(".")
        self.assertEqual(len(parts), 3, tok)
        self.assertEqual(json.loads(b64url_decode(parts[0]))["alg"], "HS256")
        claims = json.loads(b64url_decode(parts[1]))
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["room"], "lobby")
        self.assertGreater(claims["exp"], time.time())
        # signed with CHAT_SECRET from the environment, in base64url
        want = hmac.new(CHAT_SECRET.encode(), (parts[0] + "." + parts[1]).encode(),
                        hashlib.sha256).digest()
        self.assertEqual(b64url_decode(parts[2]), want)
        self.assertNotRegex(tok, r"[+/=]")
        # the other ways to give the name and room
        r = http("POST", self.url("/login?name=bob&room=r1"))
        self.assertEqual(r.status, 200, r)
        r = http("POST", self.url("/login"), "name=carol&room=r2",
                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["user"], r.json()["room"]), ("carol", "r2"))
        for bad in ('{"name":"no spaces","room":"r"}', '{"name":"","room":"r"}', '{}',
                    '{"name":"%s","room":"r"}' % ("x" * 33), '{"name":"dave"}',
                    '{"name":"dave","room":"a.b"}', '{"name":"dave","room":"%s"}' % ("r" * 65)):
            r = http("POST", self.url("/login"), bad)
            self.assertEqual(r.status, 400, (bad, r))
            self.assertIn("error", r.json())

    def test_names_of_every_length_round_trip(self):
        # the base64url encoder pads nothing and handles 1, 2 and 3-byte tails
        for n in range(1, 13):
            name = "u" * n
            room = unique("len")
            tok = self.login(name, room)
            r = http("POST", self.url("/rooms/%s/messages" % room),
                     "x", {"Authorization": "Bearer " + tok})
            self.assertEqual(r.status, 200, (name, r))

    def test_bad_token_is_401(self):
        room = unique("auth")
        now = int(time.time())
        bad = {
            "missing": None,
            "garbage": "not-a-jwt",
            "wrong secret": make_jwt({"sub": "alice", "room": room, "exp": now + 60},
                                     secret="other"),
            "expired": make_jwt({"sub": "alice", "room": room, "exp": now - 10}),
            "alg none": make_jwt({"sub": "alice", "room": room, "exp": now + 60}, alg="none"),
            "bad subject": make_jwt({"sub": "has space", "room": room, "exp": now + 60}),
            "no room": make_jwt({"sub": "alice", "exp": now + 60}),
            "tampered": self.login("alice", room)[:-2] + "AA",
        }

        async def body():
            for what, tok in bad.items():
                url = self.ws_url("/rooms/%s" % room)
                if tok is not None:
                    url += "?token=" + tok
                self.assertEqual(await ws_status(url), 401, what)
            # a token the test signed with the same secret is accepted
            good = make_jwt({"sub": "zed", "room": room, "exp": now + 60})
            self.assertIsNone(await ws_status(self.room_url(room, good)))

        arun(body())
        # plain HTTP: 401 with a JSON error, also for posting
        r = http("GET", self.url("/rooms/%s?token=nope&timeout=0" % room))
        self.assertEqual(r.status, 401, r)
        self.assertIn("error", r.json())
        r = http("POST", self.url("/rooms/%s/messages" % room), "hi",
                 {"Authorization": "Bearer nope"})
        self.assertEqual(r.status, 401, r)
        r = http("GET", self.url("/rooms/bad.room?token=" + self.login("alice", room)))
        self.assertEqual(r.status, 400, r)
        self.assertAlive()

    def test_two_sockets_talk_in_one_room(self):
        room = unique("talk")
        ta, tb = self.login("alice", room), self.login("bob", room)

        async def body():
            a = await ws_open(self.room_url(room, ta))
            b = await ws_open(self.room_url(room, tb))
            try:
                await a.send("hi bob")
                for ws in (a, b):  # the sender gets its own message back, stored
                    env = await recv_json(ws)
                    self.assertEqual(env["topic"], "room." + room)
                    self.assertEqual(self.chat(env), {"from": "alice", "text": "hi bob"})
                await b.send("hello alice ✓")
                for ws in (a, b):
                    self.assertEqual(self.chat(await recv_json(ws)),
                                     {"from": "bob", "text": "hello alice ✓"})
                # what a client claims in its text is just text: "from" is
                # the token's subject
                await b.send('{"from":"alice","text":"spoof"}')
                m = self.chat(await recv_json(a))
                self.assertEqual(m["from"], "bob")
                self.assertEqual(m["text"], '{"from":"alice","text":"spoof"}')
            finally:
                await a.close()
                await b.close()

        arun(body())

    def test_rooms_are_isolated(self):
        r1, r2 = unique("iso"), unique("iso")
        ta, tc = self.login("alice", r1), self.login("carol", r2)

        async def body():
            a = await ws_open(self.room_url(r1, ta))
            c = await ws_open(self.room_url(r2, tc))
            try:
                await a.send("only for room one")
                self.assertEqual(self.chat(await recv_json(a))["text"], "only for room one")
                await c.send("room two sentinel")
                env = await recv_json(c)  # the first thing carol sees
                self.assertEqual(env["topic"], "room." + r2)
                self.assertEqual(self.chat(env)["text"], "room two sentinel")
                await a.send("after")
                self.assertEqual(self.chat(await recv_json(a))["text"], "after")
            finally:
                await a.close()
                await c.close()

        arun(body())

    def test_long_messages_are_refused(self):
        room = unique("long")
        ta, tb = self.login("alice", room), self.login("bob", room)

        async def body():
            a = await ws_open(self.room_url(room, ta))
            b = await ws_open(self.room_url(room, tb))
            try:
                await a.send("x" * 501)
                err = await recv_json(a)
                self.assertNotIn("id", err)
                self.assertIn("too long", err["error"])
                await a.send(b"\x01\x02")  # binary frames are not chat
                self.assertIn("error", await recv_json(a))
                await a.send("   ")
                self.assertIn("error", await recv_json(a))
                # the limit counts characters, not bytes
                await a.send("é" * 500)
                self.assertEqual(self.chat(await recv_json(b))["text"], "é" * 500)
                self.assertEqual(self.chat(await recv_json(a))["text"], "é" * 500)
                # bob never got the refused ones: his next one is this
                await a.send("ok")
                self.assertEqual(self.chat(await recv_json(b))["text"], "ok")
                self.assertTrue(a.open)
            finally:
                await a.close()
                await b.close()

        arun(body())

    def test_history_by_resuming(self):
        room = unique("hist")
        ta, tb = self.login("alice", room), self.login("bob", room)

        async def body():
            a = await ws_open(self.room_url(room, ta))
            ids = []
            try:
                for text in ("one", "two", "three"):
                    await a.send(text)
                    env = await recv_json(a)
                    self.assertEqual(self.chat(env)["text"], text)
                    ids.append(env["id"])
            finally:
                await a.close()
            # after "one": exactly "two", "three", then live, no gap frame
            b = await ws_open(self.room_url(room, tb, last_event_id=ids[0]))
            try:
                got = [await recv_json(b), await recv_json(b)]
                self.assertEqual([g["id"] for g in got], ids[1:])
                self.assertEqual([self.chat(g)["text"] for g in got], ["two", "three"])
                await b.send("four")
                live = await recv_json(b)
                self.assertEqual(self.chat(live), {"from": "bob", "text": "four"})
            finally:
                await b.close()
            # the page's "recent history": an ID the server does not know
            # replays what the room keeps, after a gap frame
            c = await ws_open(self.room_url(room, tb, last_event_id="0"))
            try:
                self.assertEqual(await recv_json(c), {"gap": True, "topic": "room." + room})
                texts = [self.chat(await recv_json(c))["text"] for _ in range(4)]
                self.assertEqual(texts, ["one", "two", "three", "four"])
            finally:
                await c.close()
            # no resume point: only what comes after
            d = await ws_open(self.room_url(room, tb))
            try:
                await d.send("five")
                self.assertEqual(self.chat(await recv_json(d))["text"], "five")
            finally:
                await d.close()

        arun(body())

    def test_post_over_http_reaches_sockets(self):
        room = unique("post")
        ta, tb = self.login("alice", room), self.login("bob", room)

        async def body():
            b = await ws_open(self.room_url(room, tb))
            try:
                r = await asyncio.to_thread(
                    http, "POST", self.url("/rooms/%s/messages" % room), "from curl",
                    {"Authorization": "Bearer " + ta})
                self.assertEqual(r.status, 200, r)
                env = await recv_json(b)
                self.assertEqual(env["id"], r.json()["id"])
                self.assertEqual(self.chat(env), {"from": "alice", "text": "from curl"})
                r = await asyncio.to_thread(
                    http, "POST", self.url("/rooms/%s/messages" % room), "y" * 501,
                    {"Authorization": "Bearer " + ta})
                self.assertEqual(r.status, 400, r)
            finally:
                await b.close()

        arun(body())

    def test_sse_reader_sees_the_room(self):
        room = unique("sse")
        ta = self.login("alice", room)
        s = self.sse("/rooms/%s?token=%s" % (room, ta))
        self.assertEqual(s.status, 200)
        r = http("POST", self.url("/rooms/%s/messages" % room), "hello sse",
                 {"Authorization": "Bearer " + ta})
        self.assertEqual(r.status, 200, r)
        ev = s.event()
        self.assertEqual(ev["id"], r.json()["id"])
        self.assertEqual(json.loads(ev["data"]), {"from": "alice", "text": "hello sse"})


    def test_token_opens_only_its_room(self):
        mine, other = unique("own"), unique("other")
        tok = self.login("alice", mine)

        async def body():
            # subscribe: WebSocket, SSE and long-poll all refused with 403
            self.assertEqual(await ws_status(self.room_url(other, tok)), 403)
            self.assertIsNone(await ws_status(self.room_url(mine, tok)))
            # a valid token with another room, signed by the test
            forged = make_jwt({"sub": "alice", "room": mine, "exp": int(time.time()) + 60})
            self.assertEqual(await ws_status(self.room_url(other, forged)), 403)

        arun(body())
        r = http("GET", self.url("/rooms/%s?token=%s&timeout=0" % (other, tok)))
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json(), {"error": "token is for another room"})
        s = Sse(self.server, "/rooms/%s?token=%s" % (other, tok))
        self.addCleanup(s.close)
        self.assertEqual(s.status, 403)
        # post: refused in the other room, accepted in its own
        r = http("POST", self.url("/rooms/%s/messages" % other), "intruder",
                 {"Authorization": "Bearer " + tok})
        self.assertEqual(r.status, 403, r)
        r = http("POST", self.url("/rooms/%s/messages" % mine), "home",
                 {"Authorization": "Bearer " + tok})
        self.assertEqual(r.status, 200, r)
        # nothing reached the other room
        r = http("GET", self.url("/rooms/%s?token=%s&since=0&timeout=0"
                                 % (other, self.login("bob", other))))
        self.assertEqual(r.json()["messages"], [], r)

    def test_socket_closed_when_its_token_expires(self):
        room = unique("exp")
        exp = int(time.time()) + 2
        tok = make_jwt({"sub": "alice", "room": room, "exp": exp})
        other = self.login("bob", room)  # an hour's token: stays open

        async def body():
            a = await ws_open(self.room_url(room, tok))
            b = await ws_open(self.room_url(room, other))
            try:
                await a.send("before expiry")
                self.assertEqual(self.chat(await recv_json(a))["text"], "before expiry")
                self.assertEqual(self.chat(await recv_json(b))["text"], "before expiry")
                # idle from here: the server closes it at exp, with 4001
                with self.assertRaises(websockets.exceptions.ConnectionClosed) as cm:
                    await asyncio.wait_for(a.recv(), timeout=WAIT)
                closed_at = time.time()
                self.assertEqual(a.close_code, 4001)
                self.assertEqual(a.close_reason, "expired")
                self.assertGreaterEqual(closed_at, exp - 0.01)  # not before the token expired
                self.assertLess(closed_at, exp + 3.0)
                # the other socket goes on
                await b.send("after")
                self.assertEqual(self.chat(await recv_json(b))["text"], "after")
            finally:
                await a.close()
                await b.close()
            # the expired token opens nothing any more
            self.assertEqual(await ws_status(self.room_url(room, tok)), 401)

        arun(body())

    def test_sse_stream_ends_when_its_token_expires(self):
        room = unique("sexp")
        tok = make_jwt({"sub": "alice", "room": room, "exp": int(time.time()) + 2})
        s = self.sse("/rooms/%s?token=%s" % (room, tok))
        self.assertEqual(s.status, 200)
        start = time.monotonic()
        # The stream says why before it ends (an EventSource would
        # otherwise just reconnect with the expired token).
        ev = s.event()
        self.assertEqual(ev["event"], "sluice.close", ev)
        self.assertEqual(json.loads(ev["data"]), {"code": 4001, "reason": "expired"})
        s.conn.wait_closed(WAIT)
        self.assertLess(time.monotonic() - start, 5.0)
        self.assertAlive()


# ================================================================================
# feed
# ================================================================================

FEED_BACKLOG = 50


class FeedTest(ExampleCase):
    APP = "feed"
    ENV = {"FEED_INTERVAL": "0.1", "FEED_BACKLOG": str(FEED_BACKLOG)}
    KINDS = ["tick", "quote", "counter"]

    def check_sequence(self, events):
        """Consecutive counts, event names cycling with the count, IDs all
        different."""
        ns = [json.loads(e["data"])["n"] for e in events]
        self.assertEqual(ns, list(range(ns[0], ns[0] + len(ns))), events)
        for e, n in zip(events, ns):
            self.assertEqual(e["event"], self.KINDS[(n - 1) % 3], e)
            self.assertTrue(e["id"], e)
        self.assertEqual(len({e["id"] for e in events}), len(events))
        return ns

    def wait_count(self, at_least):
        """Wait (bounded) until the feed has published message number
        at_least: a fresh subscriber's first event is the next one."""
        s = self.sse("/feed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            n = json.loads(s.event()["data"])["n"]
            if n >= at_least:
                s.close()
                return n
        self.fail("the feed did not reach %d" % at_least)

    def test_page(self):
        r = http("GET", self.url("/"))
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("content-type", ""))
        self.assertIn(b"import { Sluice } from '/sluice.js'", r.body)
        self.assertIn(b"url: '/feed'", r.body)
        js = http("GET", self.url("/sluice.js"))
        self.assertEqual(js.status, 200, js)
        self.assertIn("javascript", js.headers.get("content-type", ""))
        with open(os.path.join(harness.SOURCE_DIR, "clients", "js", "sluice.js"), "rb") as f:
            self.assertEqual(js.body, f.read())

    def test_timer_events_arrive_over_sse(self):
        s = self.sse("/feed")
        self.assertEqual(s.status, 200)
        self.assertIn("text/event-stream", s.header("content-type"))
        events = s.events(7)
        self.check_sequence(events)
        for e in events:
            d = json.loads(e["data"])
            if e["event"] == "quote":
                self.assertEqual(d["symbol"], "SLC")
                self.assertIsInstance(d["price"], (int, float))
            elif e["event"] == "tick":
                self.assertRegex(d["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_resume_with_last_event_id_gets_what_was_missed(self):
        s = self.sse("/feed")
        first = s.events(3)
        last_n = self.check_sequence(first)[-1]
        s.close()
        # a few messages go by while we are away (fewer than the backlog)
        self.wait_count(last_n + 4)
        s2 = self.sse("/feed", last_event_id=first[-1]["id"])
        again = s2.events(6)
        self.assertNotEqual(again[0]["event"], "sluice.gap", again[0])
        ns = self.check_sequence(again)
        self.assertEqual(ns[0], last_n + 1, "no gap and no duplicate at the seam")
        self.assertNotIn(first[-1]["id"], [e["id"] for e in again])

    def test_gap_event_when_the_resume_point_is_gone(self):
        s = self.sse("/feed")
        ev = s.event()
        n = json.loads(ev["data"])["n"]
        s.close()
        # more than the backlog goes by: ev's ID is no longer retained
        self.wait_count(n + FEED_BACKLOG + 3)
        s2 = self.sse("/feed", last_event_id=ev["id"])
        gap = s2.event()
        self.assertEqual(gap["event"], "sluice.gap", gap)
        self.assertIsNone(gap["id"])
        self.assertEqual(json.loads(gap["data"]), {"topic": "feed.ticks"})
        replay = s2.events(FEED_BACKLOG + 2)  # the retained ones, then live
        ns = self.check_sequence(replay)
        self.assertGreater(ns[0], n + 1, "the oldest retained message comes after a gap")
        # an ID from nowhere gets the same signal
        s3 = self.sse("/feed", last_event_id="0")
        self.assertEqual(s3.event()["event"], "sluice.gap")
        self.check_sequence(s3.events(3))

    def test_events_option_keeps_only_the_named_ones(self):
        s = self.sse("/feed?events=quote")
        events = s.events(3)
        self.assertEqual([e["event"] for e in events], ["quote"] * 3)
        ns = [json.loads(e["data"])["n"] for e in events]
        self.assertEqual([b - a for a, b in zip(ns, ns[1:])], [3, 3])

    def test_long_poll_reads_the_same_feed(self):
        s = self.sse("/feed")
        ev = s.event()
        r = http("GET", self.url("/feed?since=%s&timeout=10" % urllib.parse.quote(ev["id"])))
        self.assertEqual(r.status, 200, r)
        v = r.json()
        self.assertGreaterEqual(len(v["messages"]), 1)
        self.assertEqual(json.loads(v["messages"][0]["data"])["n"],
                         json.loads(ev["data"])["n"] + 1)


# ================================================================================
# filters
# ================================================================================

class FiltersTest(ExampleCase):
    APP = "filters"

    def send(self, to, body):
        return http("POST", self.url("/send?to=%s" % urllib.parse.quote(to)), body,
                    {"Content-Type": "application/json"})

    def test_each_user_gets_only_its_messages_transformed(self):
        alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
        sa = self.sse("/inbox?user=" + alice)
        sb = self.sse("/inbox?user=" + bob)
        self.assertEqual((sa.status, sb.status), (200, 200))

        async def body():
            c = await ws_open(self.ws_url("/inbox?user=" + carol))
            try:
                sent = []

                def post(to, b, status=200):
                    r = self.send(to, b)
                    self.assertEqual(r.status, status, (to, b, r))
                    if status == 200:
                        sent.append(r.json()["id"])
                    else:
                        self.assertIn("error", r.json())
                    return r

                await asyncio.to_thread(post, alice, '{"text":"  hi alice  ","from":"bob","x":1}')
                await asyncio.to_thread(post, "*", '{"text":"to everyone"}')
                await asyncio.to_thread(post, bob, 'this is not json', 422)
                await asyncio.to_thread(post, bob, '{"text":""}', 422)
                await asyncio.to_thread(post, bob, '{"from":"x"}', 422)
                await asyncio.to_thread(post, bob, '[1,2]', 422)
                await asyncio.to_thread(post, bob, '{"text":"hi","from":"bad name"}', 422)
                await asyncio.to_thread(post, bob, '{"text":"for bob"}')
                await asyncio.to_thread(post, "*", '{"text":"end","from":"admin"}')
                # carol (WebSocket) gets the two broadcasts only
                c1, c2 = await recv(c), await recv(c)
                return sent, json.loads(c1), json.loads(c2)
            finally:
                await c.close()

        sent, c1, c2 = arun(body())
        self.assertEqual(c1, {"greeting": "Hello, %s!" % carol, "from": "anonymous",
                              "text": "to everyone", "sent_at": c1["sent_at"],
                              "broadcast": True})
        self.assertEqual(c2["text"], "end")

        a = sa.events(3)
        self.assertEqual([e["id"] for e in a], [sent[0], sent[1], sent[3]])
        self.assertEqual([e["event"] for e in a], ["direct", "broadcast", "broadcast"])
        d = json.loads(a[0]["data"])
        # normalised by on_publish (trimmed, unknown fields gone), routing
        # envelope stripped and greeting added by alice's filter
        self.assertEqual(set(d), {"greeting", "from", "text", "sent_at", "broadcast"})
        self.assertEqual(d["greeting"], "Hello, %s!" % alice)
        self.assertEqual(d["text"], "hi alice")
        self.assertEqual(d["from"], "bob")
        self.assertIs(d["broadcast"], False)
        self.assertLessEqual(abs(d["sent_at"] - time.time()), 60)

        b = sb.events(3)
        self.assertEqual([e["id"] for e in b], [sent[1], sent[2], sent[3]])
        self.assertEqual([json.loads(e["data"])["text"] for e in b],
                         ["to everyone", "for bob", "end"])
        for e in b:
            self.assertEqual(json.loads(e["data"])["greeting"], "Hello, %s!" % bob)

    def test_invalid_bodies_are_never_stored(self):
        user = unique("dave")
        r = self.send(user, "{broken")
        self.assertEqual(r.status, 422, r)
        ok = self.send(user, '{"text":"valid"}')
        self.assertEqual(ok.status, 200, ok)
        # replay of everything the topic keeps, through this user's filter:
        # the valid one is there, nothing else addressed to this user
        r = http("GET", self.url("/inbox?user=%s&since=0&timeout=0&limit=1000" % user))
        self.assertEqual(r.status, 200, r)
        mine = [m for m in r.json()["messages"] if not json.loads(m["data"])["broadcast"]]
        self.assertEqual([m["id"] for m in mine], [ok.json()["id"]])
        self.assertEqual(json.loads(mine[0]["data"])["text"], "valid")
        self.assertEqual(mine[0]["event"], "direct")

    def test_long_poll_waits_past_other_users_messages(self):
        erin, frank = unique("erin"), unique("frank")
        first = self.send(erin, '{"text":"e1"}')
        self.assertEqual(first.status, 200)

        async def body():
            poll = asyncio.create_task(asyncio.to_thread(
                http, "GET", self.url("/inbox?user=%s&since=%s&timeout=20"
                                      % (erin, first.json()["id"]))))
            await asyncio.sleep(0.3)
            r = await asyncio.to_thread(self.send, frank, '{"text":"not for erin"}')
            self.assertEqual(r.status, 200)
            r = await asyncio.to_thread(self.send, erin, '{"text":"e2"}')
            self.assertEqual(r.status, 200)
            return await poll

        r = arun(body())
        self.assertEqual(r.status, 200, r)
        texts = [json.loads(m["data"])["text"] for m in r.json()["messages"]]
        self.assertEqual(texts, ["e2"])

    def poll_until(self, user, since, want_text, limit=5, rounds=200):
        """Short polls (timeout=0) from since, following last_id like a
        client, until a direct message with want_text arrives (bounded).
        Returns (answers, texts of the direct messages seen)."""
        answers, texts = [], []
        for _ in range(rounds):
            r = http("GET", self.url("/inbox?user=%s&since=%s&timeout=0&limit=%d"
                                     % (user, urllib.parse.quote(since), limit)))
            self.assertEqual(r.status, 200, r)
            v = r.json()
            answers.append(v)
            texts += [json.loads(m["data"])["text"] for m in v["messages"]
                      if not json.loads(m["data"])["broadcast"]]
            if want_text in texts:
                break
            since = v["last_id"]
        return answers, texts

    def test_short_polls_progress_past_filtered_messages(self):
        # More than `limit` messages for someone else, then one for grace:
        # following last_id, grace's polls must reach it.
        grace, frank = unique("grace"), unique("frank")
        cursor = self.send(grace, '{"text":"g1"}').json()["id"]
        for i in range(12):
            self.assertEqual(self.send(frank, '{"text":"f%d"}' % i).status, 200)
        self.assertEqual(self.send(grace, '{"text":"g2"}').status, 200)
        answers, texts = self.poll_until(grace, cursor, "g2")
        self.assertEqual(texts, ["g2"],
                         "a poll whose whole batch of `limit` stored messages is "
                         "filtered out must still move its cursor (last_id) past "
                         "them; answers: %r" % answers[:3])

    def test_unknown_resume_id_skips_no_message(self):
        # Resuming from an ID the server does not know replays what is kept;
        # with a filter that drops a whole batch the cursor must not jump
        # past the messages not yet examined.
        hank, frank = unique("hank"), unique("frank")
        for i in range(7):
            self.assertEqual(self.send(frank, '{"text":"f%d"}' % i).status, 200)
        self.assertEqual(self.send(hank, '{"text":"h1"}').status, 200)
        answers, texts = self.poll_until(hank, "0", "h1")
        self.assertTrue(answers[0].get("gap"), answers[0])
        self.assertEqual(texts, ["h1"], "hank's message was skipped; answers: %r" % answers[:3])

    def test_bad_names(self):
        self.assertEqual(http("GET", self.url("/inbox?user=a%20b&timeout=0")).status, 400)
        self.assertEqual(http("GET", self.url("/inbox?timeout=0")).status, 400)
        self.assertEqual(self.send("a b", '{"text":"x"}').status, 400)
        self.assertAlive()


# ================================================================================
# presence
# ================================================================================

class PresenceTest(ExampleCase):
    """The presence example on the built-in presence, with two workers: one
    roster whichever worker a connection or a /who lands on."""
    APP = "presence"
    ARGS = ["--workers", "2"]

    def who_full(self, room):
        r = http("GET", self.url("/rooms/%s/who" % room))
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.headers.get("content-type", ""))
        v = r.json()
        self.assertEqual(v["room"], room)
        return v

    def who(self, room):
        return self.who_full(room)["users"]

    def wait_who(self, room, users):
        deadline = time.monotonic() + WAIT
        while True:
            got = self.who(room)
            if got == users or time.monotonic() > deadline:
                self.assertEqual(got, users)
                return
            time.sleep(0.05)

    def join_url(self, room, user, **q):
        q["user"] = user
        return self.ws_url("/rooms/%s/ws?%s" % (room, urllib.parse.urlencode(q)))

    async def join(self, room, user, **q):
        """Opens a member's WebSocket; returns it and its roster frame."""
        ws = await ws_open(self.join_url(room, user, **q))
        roster = await recv_json(ws)
        self.assertEqual(roster["event"], "roster", roster)
        self.assertEqual(roster["room"], room)
        self.assertIn(user, roster["users"])
        return ws, roster["users"]

    async def next_event(self, ws, me=None):
        """The next envelope, past the member's own join (which its
        connection may or may not get: the join is published as it
        subscribes)."""
        while True:
            env = await recv_json(ws)
            if me and env["event"] == "sluice.join" and json.loads(env["data"])["id"] == me:
                continue
            return env

    def presence(self, env, event):
        self.assertEqual(env["event"], event, env)
        return json.loads(env["data"])

    def test_join_leave_and_roster(self):
        room = unique("room")
        topic = "presence." + room

        async def body():
            self.assertEqual(self.who(room), [])
            a, roster = await self.join(room, "alice")
            self.assertEqual(roster, ["alice"])
            self.assertEqual(self.who(room), ["alice"])
            b, roster = await self.join(room, "bob")
            self.assertEqual(roster, ["alice", "bob"])
            d = self.presence(await self.next_event(a, "alice"), "sluice.join")
            self.assertEqual(d, {"topic": topic, "id": "bob", "info": {"name": "bob"}})
            v = self.who_full(room)
            self.assertEqual((v["users"], v["connections"]), (["alice", "bob"], 2))
            # bob speaks: alice gets it, bob does not (skip_self)
            await b.send("hello")
            self.assertEqual(self.presence(await self.next_event(a, "alice"), "say"),
                             {"user": "bob", "text": "hello"})
            await a.send("hi bob")
            self.assertEqual(self.presence(await self.next_event(b, "bob"), "say"),
                             {"user": "alice", "text": "hi bob"})
            await b.close()
            d = self.presence(await self.next_event(a, "alice"), "sluice.leave")
            self.assertEqual(d, {"topic": topic, "id": "bob", "info": {"name": "bob"}})
            self.assertEqual(self.who(room), ["alice"])
            await a.close()
            self.wait_who(room, [])

        arun(body())

    def test_one_roster_across_workers(self):
        room = unique("many")

        async def body():
            conns = []
            for i in range(8):  # SO_REUSEPORT spreads them over both workers
                ws, _ = await self.join(room, "u%d" % i)
                conns.append(ws)
            names = ["u%d" % i for i in range(8)]
            for _ in range(6):  # each /who is a new connection: both workers answer
                v = self.who_full(room)
                self.assertEqual((v["users"], v["connections"]), (sorted(names), 8))
            for ws in conns:
                await ws.close()
            self.wait_who(room, [])

        arun(body())

    def test_one_join_per_user_however_many_connections(self):
        room = unique("tabs")

        async def body():
            w, _ = await self.join(room, "watcher")
            t1, _ = await self.join(room, "zoe")
            self.assertEqual(self.presence(await self.next_event(w, "watcher"),
                                           "sluice.join")["id"], "zoe")
            t2, _ = await self.join(room, "zoe")  # no second join
            await t1.close()  # zoe still has a tab: no leave
            self.wait_who(room, ["watcher", "zoe"])
            y, _ = await self.join(room, "yan")  # sentinel
            self.assertEqual(self.presence(await self.next_event(w, "watcher"),
                                           "sluice.join")["id"], "yan")
            await t2.close()
            d = self.presence(await self.next_event(w, "watcher"), "sluice.leave")
            self.assertEqual(d["id"], "zoe")
            self.assertEqual(self.who(room), ["watcher", "yan"])
            await y.close()
            await w.close()

        arun(body())

    def test_events_option_and_vanishing_peer(self):
        room = unique("ev")

        async def body():
            only, _ = await self.join(room, "quiet", events="sluice.join,sluice.leave")
            talk, _ = await self.join(room, "talker")
            self.assertEqual(self.presence(await self.next_event(only, "quiet"),
                                           "sluice.join")["id"], "talker")
            await talk.send("nobody filters me")  # "say": not for `only`
            # talker vanishes without a close handshake
            talk.transport.abort()
            d = self.presence(await self.next_event(only, "quiet"), "sluice.leave")
            self.assertEqual(d["id"], "talker")
            self.wait_who(room, ["quiet"])
            await only.close()

        arun(body())

    def test_refusals(self):
        room = unique("no")
        r = http("GET", self.url("/rooms/%s/ws?user=alice" % room))
        self.assertEqual(r.status, 400, r)
        self.assertEqual(self.who(room), [], "a refused request joins nobody")

        async def body():
            self.assertEqual(await ws_status(self.join_url(room, "bad name")), 400)
            self.assertEqual(await ws_status(self.ws_url("/rooms/%s/ws" % room)), 400)

        arun(body())
        self.assertEqual(http("GET", self.url("/rooms/a.b/who")).status, 400)
        self.assertEqual(http("GET", self.url("/healthz")).status, 200)  # built in


class PresenceStopTest(unittest.TestCase):
    """SIGTERM with rooms open: every member leaves (a "sluice.leave" is
    published while the server shuts down); it still closes the sockets with
    1001 and exits 0."""

    def test_stop_with_rooms_open(self):
        server = harness.Server(app=example("presence"), args=["--workers", "2"])
        self.addCleanup(server.kill)
        server.start()
        url = "ws://127.0.0.1:%d/rooms/stop/ws?user=" % server.port

        async def body():
            a = await ws_open(url + "alice")
            b = await ws_open(url + "bob")
            self.assertEqual((await recv_json(a))["event"], "roster")
            self.assertEqual((await recv_json(b))["event"], "roster")
            server.signal(harness.SIGTERM)
            for ws in (a, b):
                try:
                    while True:
                        await recv(ws)
                except websockets.exceptions.ConnectionClosed:
                    pass
                self.assertEqual(ws.close_code, 1001)

        arun(body())
        self.assertEqual(server.wait_exit(), 0, server.log_text())


class PresenceReloadTest(unittest.TestCase):
    """The roster lives outside the script's Lua states: a reload keeps it,
    and the connections opened before still leave it."""

    def test_reload_keeps_the_roster(self):
        server = harness.Server(app=example("presence"), args=["--workers", "2"])
        self.addCleanup(server.kill)
        server.start()
        url = "ws://127.0.0.1:%d/rooms/gen/ws?user=" % server.port

        def who():
            return http("GET", server.url("/rooms/gen/who")).json()["users"]

        async def event(ws, me):
            while True:
                env = await recv_json(ws)
                if env["event"] == "roster":
                    continue
                if env["event"] == "sluice.join" and json.loads(env["data"])["id"] == me:
                    continue
                return env

        async def body():
            a = await ws_open(url + "alice")
            b = await ws_open(url + "bob")
            self.assertEqual(json.loads((await event(a, "alice"))["data"])["id"], "bob")
            self.assertEqual(who(), ["alice", "bob"])
            mark = server.mark()
            server.signal(signal.SIGHUP)
            server.wait_log(r"reloaded", since=mark)
            self.assertEqual(who(), ["alice", "bob"])
            c = await ws_open(url + "carol")
            env = await event(a, "alice")  # the old connections still get events
            self.assertEqual(env["event"], "sluice.join")
            self.assertEqual(json.loads(env["data"])["id"], "carol")
            self.assertEqual(who(), ["alice", "bob", "carol"])
            await b.close()  # bob's subscription is the old generation's
            env = await event(a, "alice")
            self.assertEqual(env["event"], "sluice.leave")
            self.assertEqual(json.loads(env["data"]),
                             {"topic": "presence.gen", "id": "bob", "info": {"name": "bob"}})
            self.assertEqual(who(), ["alice", "carol"])
            await a.close()
            await c.close()

        arun(body())


if __name__ == "__main__":
    unittest.main(verbosity=2)
