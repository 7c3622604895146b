"""The whole Lua API of docs/lua-api.md, driven from outside through the real
binary: each function's normal use and its errors (bad arguments name the
argument in the logged message, `--check` names file:line), every kind of
callback running past its instruction budget, timers and their script
generations, reloads in a loop while WebSocket, SSE and long-poll
subscribers receive, and `--watch`.

Why it is shaped so: the apps under apps/api_*.lua expose one route per API
function so that each test is a request and an observation (an answer, a
frame, a log line, a metric).  WebSocket and SSE clients are small
synchronous ones written here on the harness's RawConn, so that threads can
read several streams at once and close codes are visible as sent; one test
also uses Debian's python3-websockets as an independent client.  Every wait
is bounded; only loopback is used.

Run: /usr/bin/python3 tests/integration/test_lua_api.py [-v] [Class.test]
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (IO_TIMEOUT, SluiceTestCase, RawConn, app, build_request,
                     run_sluice, have_ipv6_loopback)

MAIN = app("api_main.lua")
RELOAD_A = app("api_reload_a.lua")
RELOAD_B = app("api_reload_b.lua")
RELOAD_BROKEN = app("api_reload_broken.lua")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def wait_until(fn, timeout=10.0, interval=0.05, what="condition"):
    """Polls fn() (bounded) until it returns a true value; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %.0fs (last: %r)"
                                 % (what, timeout, v))
        time.sleep(interval)


def seq_of(msg_id):
    """The sequence part of an ID (docs/protocol.md: <epoch>-<seq>)."""
    return int(msg_id.rsplit("-", 1)[1])


# -- clients -----------------------------------------------------------------

class WSClosed(AssertionError):
    pass


class WS:
    """A minimal RFC 6455 client: masked frames out, unmasked in, pings
    answered, fragments joined.  recv() returns ("text", str),
    ("binary", bytes) or ("close", code, reason)."""

    def __init__(self, conn, status, headers, body=b""):
        self.c = conn
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = None  # (code, reason) once a close frame arrived

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @classmethod
    def handshake(cls, server, path, headers=(), protocols=None, timeout=10.0):
        """Sends the upgrade request; returns a WS whatever the status (a
        refused one carries the response body)."""
        c = RawConn.tcp(server.host, server.port, timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        hs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
        if protocols:
            hs.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
        hs += list(headers)
        c.send(build_request("GET", path, hs))
        version, status, reason, rheaders, raw = c.read_head()
        body = b""
        if status == 101:
            accept = dict((k.lower(), v) for k, v in rheaders).get("sec-websocket-accept")
            want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if accept != want:
                c.close()
                raise AssertionError("bad Sec-WebSocket-Accept %r" % accept)
        else:
            cl = dict((k.lower(), v) for k, v in rheaders).get("content-length")
            if cl:
                body = c.read_exact(int(cl))
            c.close()
        return cls(c, status, rheaders, body)

    @classmethod
    def connect(cls, test, server, path, **kw):
        ws = cls.handshake(server, path, **kw)
        test.addCleanup(ws.c.close)
        if ws.status != 101:
            raise AssertionError("WebSocket %s refused: %d %r" % (path, ws.status, ws.body))
        return ws

    def send_frame(self, opcode, payload, fin=True):
        if isinstance(payload, str):
            payload = payload.encode()
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.c.send(head + mask + masked)

    def send_text(self, s):
        self.send_frame(0x1, s)

    def send_binary(self, b):
        self.send_frame(0x2, b)

    def send_close(self, code=1000, reason=b""):
        try:
            self.send_frame(0x8, struct.pack("!H", code) + reason)
        except OSError:
            pass

    def _frame(self):
        b0, b1 = self.c.read_exact(2)
        if b1 & 0x80:
            raise AssertionError("server frame is masked")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.c.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.c.read_exact(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self.c.read_exact(n)

    def recv(self, timeout=10.0):
        """The next message (bounded).  Waits for the first byte of a frame
        with `timeout`, then reads whole frames with a generous socket
        timeout, so a timeout never loses half a frame."""
        if self.closed:
            raise WSClosed("closed already: %r" % (self.closed,))
        deadline = time.monotonic() + timeout
        parts, first = [], None
        self.c.settimeout(IO_TIMEOUT)
        while True:
            left = deadline - time.monotonic()
            if not parts and (left <= 0 or not self.c.readable(left)):
                raise AssertionError("no WebSocket message within %.1fs" % timeout)
            try:
                fin, op, payload = self._frame()
            except socket.timeout:
                raise AssertionError("WebSocket frame cut short")
            if op == 0x9:
                self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                self.closed = (code, reason)
                return ("close", code, reason)
            if op in (0x1, 0x2):
                first = op
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if first == 0x1:
                    return ("text", data.decode("utf-8"))
                return ("binary", data)

    def recv_text(self, timeout=10.0):
        m = self.recv(timeout)
        if m[0] != "text":
            raise AssertionError("expected a text frame, got %r" % (m,))
        return m[1]

    def recv_json(self, timeout=10.0):
        return json.loads(self.recv_text(timeout))

    def recv_close(self, timeout=10.0):
        """Reads until the close frame; returns (code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no close frame within %.0fs" % timeout)
            m = self.recv(left)
            if m[0] == "close":
                return m[1], m[2]

    def quiet(self, seconds):
        """True when nothing arrives for `seconds`."""
        return not self.c.readable(seconds)

    def close(self, code=1000):
        """Client close handshake (bounded)."""
        try:
            self.send_close(code)
            if not self.closed:
                self.recv_close(5.0)
        except (AssertionError, OSError):
            pass
        self.c.close()


class SSE:
    """A minimal EventSource: next_event() returns {"id", "event", "data"}
    (data lines joined with LF); comments and retry lines are skipped."""

    def __init__(self, conn, status, headers):
        self.c = conn
        self.status = status
        self.headers = headers

    @classmethod
    def connect(cls, test, server, path, headers=(), timeout=10.0):
        c = RawConn.tcp(server.host, server.port, timeout)
        test.addCleanup(c.close)
        c.send(build_request("GET", path, [("Accept", "text/event-stream")] + list(headers)))
        version, status, reason, rheaders, raw = c.read_head()
        if status != 200:
            raise AssertionError("SSE %s refused: %d" % (path, status))
        return cls(c, status, rheaders)

    def next_event(self, timeout=10.0):
        """Waits (bounded) for the start of an event, then reads it whole."""
        deadline = time.monotonic() + timeout
        self.c.settimeout(IO_TIMEOUT)
        ev = {}
        data = []
        while True:
            left = deadline - time.monotonic()
            if not ev and not data and (left <= 0 or not self.c.readable(left)):
                raise AssertionError("no SSE event within %.1fs" % timeout)
            try:
                line = self.c.read_until(b"\n").rstrip(b"\r\n").decode("utf-8")
            except socket.timeout:
                raise AssertionError("SSE event cut short")
            if line == "":
                if data or "event" in ev:
                    ev["data"] = "\n".join(data)
                    ev.setdefault("id", None)
                    ev.setdefault("event", None)
                    return ev
                ev, data = {}, []
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "data":
                data.append(v)
            elif k in ("id", "event"):
                ev[k] = v

    def close(self):
        self.c.close()


def http(server, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection; returns the harness Response."""
    with RawConn.tcp(server.host, server.port, timeout) as c:
        return c.request(method, path, headers, body)


def publish(server, topic, data, event=None):
    """POST /pub/TOPIC on api_main.lua: returns the answer's JSON."""
    path = "/pub/" + topic + ("?event=" + event if event else "")
    r = http(server, "POST", path, data)
    if r.status != 200:
        raise AssertionError("publish to %s: %r" % (topic, r))
    return r.json()


def poll(server, topic, since="unknown-0", timeout=0, extra=""):
    """A short poll (timeout 0) or long-poll of /sub/TOPIC; the JSON answer.
    The default since is an unknown ID: every retained message."""
    r = http(server, "GET", "/sub/%s?since=%s&timeout=%s%s" % (topic, since, timeout, extra),
             timeout=timeout + 10)
    if r.status != 200:
        raise AssertionError("poll %s: %r" % (topic, r))
    return r.json()


def script_errors(server):
    r = http(server, "GET", "/metrics")
    m = re.search(r"^sluice_script_errors_total (\d+)$", r.text, re.M)
    if not m:
        raise AssertionError("no sluice_script_errors_total in %r" % r.text[:500])
    return int(m.group(1))


def line_of(path, marker):
    with open(path) as f:
        for i, l in enumerate(f, 1):
            if marker in l:
                return i
    raise AssertionError("%s not in %s" % (marker, path))


class ApiCase(SluiceTestCase):
    """A fresh api_main.lua server per test."""

    server_args = ()

    def setUp(self):
        self.s = self.start(MAIN, args=list(self.server_args))

    def assertErrorsCounted(self, before, n=1, timeout=10.0):
        """sluice_script_errors_total grew by exactly n (bounded wait)."""
        wait_until(lambda: script_errors(self.s) >= before + n, timeout,
                   what="script errors %d" % (before + n))
        time.sleep(0.1)
        self.assertEqual(script_errors(self.s), before + n)

    def assertLogged(self, pattern, since=0, timeout=10.0):
        return self.s.wait_log(pattern, timeout, since)

    def bystander(self, topic="bystander"):
        """A WebSocket subscriber on an unrelated topic; check_bystander()
        proves it still receives after whatever a test broke."""
        ws = WS.connect(self, self.s, "/sub/%s?format=json" % topic)
        return ws

    def check_bystander(self, ws, topic="bystander"):
        pid = publish(self.s, topic, "still here")["id"]
        m = ws.recv_json()
        self.assertEqual((m["id"], m["data"]), (pid, "still here"))
        self.assertEqual(http(self.s, "GET", "/ping").body, b"pong")
        self.assertTrue(self.s.alive())


# -- load-time errors and --check ---------------------------------------------------

class CheckTest(SluiceTestCase):
    """Bad calls while the script loads: `--check` exits 1 naming file:line
    and the argument."""

    def check_script(self, body, header='local sluice = require "sluice"\n-- line 2\n'):
        d = self.tmpdir()
        path = os.path.join(d, "api_bad.lua")
        with open(path, "w") as f:
            f.write(header + body + "\n")
        return run_sluice(["--check", path])

    def assertCheckFails(self, body, pattern, line=3):
        rc, out, err = self.check_script(body)
        self.assertEqual(rc, 1, "script %r: rc=%d out=%r err=%r" % (body, rc, out, err))
        self.assertIn("api_bad.lua:%d:" % line, err, body)
        self.assertRegex(err, pattern, body)
        return err

    def test_check_ok(self):
        for a in (MAIN, RELOAD_A, RELOAD_B):
            rc, out, err = run_sluice(["--check", a])
            self.assertEqual(rc, 0, err)
            self.assertIn("ok", out)

    def test_check_accepts_good_calls_at_load(self):
        rc, out, err = self.check_script(
            'sluice.config{ listen = { "127.0.0.1:0" }, limits = { max_body_size = 1024,\n'
            '  header_timeout = 0.5, instruction_budget = 5000 }, workers = 1,\n'
            '  storage = { durability = "durable" } }\n'
            'sluice.topic("*", { backlog = 10 })\n'
            'sluice.topic("a.b", { backlog = 10000000, max_age = 0.5 })\n'
            'local t = sluice.every(1, function() end)\n'
            't:cancel()\n'
            'sluice.timer(0.001, function() end)\n'
            'sluice.on_publish("*", function(m) return m end)\n'
            'sluice.route("ANY", "/x/:y/*", function() return 200 end)\n'
            'sluice.route("get", "/x", function() return 200 end)\n'
            'assert(sluice.hex(sluice.hmac_sha256("k", "d")):match("^%x+$"))\n'
            'assert(sluice.json.encode(sluice.json.decode("[1]")) == "[1]")\n')
        self.assertEqual(rc, 0, err)

    def test_config_unknown_key(self):
        self.assertCheckFails('sluice.config{ listne = "127.0.0.1:1" }',
                              r"unknown setting 'listne'")

    def test_config_unknown_limit(self):
        self.assertCheckFails('sluice.config{ limits = { max_bdy_size = 1 } }',
                              r"unknown limit 'max_bdy_size'")

    def test_config_not_a_table(self):
        self.assertCheckFails('sluice.config("listen")',
                              r"bad argument #1 to 'config' \(table expected, got string\)")

    def test_config_bad_limit_values(self):
        self.assertCheckFails('sluice.config{ limits = 5 }', r"limits must be a table")
        self.assertCheckFails('sluice.config{ limits = { max_body_size = -1 } }',
                              r"limits\.max_body_size must be a positive number")
        self.assertCheckFails('sluice.config{ limits = { idle_timeout = "long" } }',
                              r"limits\.idle_timeout must be a positive number")

    def test_config_bad_listen(self):
        self.assertCheckFails('sluice.config{ listen = 8080 }',
                              r"listen must be a string or a list")
        self.assertCheckFails('sluice.config{ listen = { "127.0.0.1:1", {} } }',
                              r"listen\[2\] must be a string")

    def test_config_bad_workers_and_storage(self):
        self.assertCheckFails('sluice.config{ workers = 0 }', r"workers must be 1\.\.1024")
        self.assertCheckFails('sluice.config{ storage = { durability = "fast" } }',
                              r"storage\.durability")
        self.assertCheckFails('sluice.config{ [1] = true }', r"keys are names")

    def test_config_bad_types_name_the_setting(self):
        """A wrong type inside the table must name the setting (and not an
        argument #-1 that does not exist)."""
        for body, key in (('sluice.config{ workers = "many" }', "workers"),
                          ('sluice.config{ tls = 5 }', "tls"),
                          ('sluice.config{ data = {} }', "data"),
                          ('sluice.config{ storage = "relaxed" }', "storage")):
            with self.subTest(body=body):
                err = self.assertCheckFails(body, r"bad argument #1 to 'config'|sluice\.config:")
                self.assertNotIn("#-1", err)
                self.assertIn(key, err.splitlines()[0])

    def test_route_errors(self):
        self.assertCheckFails('sluice.route("GET", "no-slash", function() end)',
                              r"bad argument #2 to 'route'")
        self.assertCheckFails('sluice.route("GET", "/a/:", function() end)',
                              r"bad argument #2 to 'route'")
        self.assertCheckFails('sluice.route("GET", "/a", function() end)\n'
                              'sluice.route("get", "/a", function() end)',
                              r"bad argument #2 to 'route' \(duplicate", line=4)
        self.assertCheckFails('sluice.route("GET", "/a", "handler")',
                              r"bad argument #3 to 'route' \(function expected")
        self.assertCheckFails('sluice.route("", "/a", function() end)',
                              r"bad argument #1 to 'route'")
        self.assertCheckFails('sluice.route(nil, "/a", function() end)',
                              r"bad argument #1 to 'route'")

    def test_topic_errors(self):
        self.assertCheckFails('sluice.topic("bad name!", {})', r"bad argument #1 to 'topic'")
        self.assertCheckFails('sluice.topic("a*b", {})', r"bad argument #1 to 'topic'")
        self.assertCheckFails('sluice.topic("", {})', r"bad argument #1 to 'topic'")
        self.assertCheckFails('sluice.topic("x", 5)', r"bad argument #2 to 'topic'")
        self.assertCheckFails('sluice.topic("x", { backlog = 0 })',
                              r"bad argument #2 to 'topic' \(backlog must be 1 to 10000000\)")
        self.assertCheckFails('sluice.topic("x", { backlog = 10000001 })',
                              r"bad argument #2 to 'topic' \(backlog")
        self.assertCheckFails('sluice.topic("x", { max_age = 0 })',
                              r"bad argument #2 to 'topic' \(max_age must be a positive")
        self.assertCheckFails('sluice.topic("x.*", { max_age = -5 })',
                              r"bad argument #2 to 'topic' \(max_age")

    def test_topic_bad_types_name_the_option(self):
        """A non-number backlog/max_age must name argument #2 and the
        option, not a nonexistent argument #-1."""
        for body, key in (('sluice.topic("x", { backlog = "lots" })', "backlog"),
                          ('sluice.topic("x", { max_age = "old" })', "max_age")):
            with self.subTest(body=body):
                err = self.assertCheckFails(body, r"bad argument #2 to 'topic'")
                self.assertIn(key, err.splitlines()[0])

    def test_on_publish_errors(self):
        self.assertCheckFails('sluice.on_publish("bad name!", function(m) return m end)',
                              r"bad argument #1 to 'on_publish'")
        self.assertCheckFails('sluice.on_publish("x", "fn")',
                              r"bad argument #2 to 'on_publish' \(function expected")

    def test_publish_timer_log_errors_at_load(self):
        self.assertCheckFails('sluice.publish("bad topic!", "x")', r"bad argument #1 to 'publish'")
        self.assertCheckFails('sluice.publish("ok", nil)', r"bad argument #2 to 'publish'")
        self.assertCheckFails('sluice.timer(0, function() end)', r"bad argument #1 to 'timer'")
        self.assertCheckFails('sluice.every(1)', r"bad argument #2 to 'every'")
        self.assertCheckFails('sluice.log("verbose", "x")', r"bad argument #1 to 'log'")
        self.assertCheckFails('sluice.hmac_sha256("k")', r"bad argument #2 to 'hmac_sha256'")

    def test_runtime_and_syntax_errors(self):
        self.assertCheckFails('error("oops at load")', r"oops at load")
        self.assertCheckFails('local x = = 1', r"unexpected symbol|syntax")

    def test_server_refuses_to_start_with_a_bad_script(self):
        d = self.tmpdir()
        path = os.path.join(d, "api_bad.lua")
        with open(path, "w") as f:
            f.write('local sluice = require "sluice"\n\nsluice.topic("x", { backlog = 0 })\n')
        rc, out, err = run_sluice(["-l", "127.0.0.1:0", "-d", os.path.join(d, "data"), path])
        self.assertEqual(rc, 1, err)
        self.assertIn("api_bad.lua:3:", err)
        self.assertIn("bad argument #2 to 'topic'", err)


# -- errors raised in handlers ------------------------------------------------------------

class HandlerErrorTest(ApiCase):
    """Bad calls from a request handler: under pcall the error text names
    the argument; without pcall the answer is 500 and the log says it."""

    CASES = {
        "publish_topic": r"bad argument #1 to 'publish' \(invalid topic name",
        "publish_data_table": r"bad argument #2 to 'publish' \(string expected, got table\)",
        "publish_data_nil": r"bad argument #2 to 'publish' \(string expected, got no value\)",
        "publish_event_type": r"bad argument #3 to 'publish' \(event must be a string\)",
        # (an invalid event name is not misuse: nil, err; test_event_names.py)
        "publish_opts_type": r"bad argument #3 to 'publish' \(table expected, got string\)",
        "route_in_handler": r"sluice\.route must be called when the script loads",
        "config_in_handler": r"sluice\.config must be called when the script loads",
        "on_publish_in_handler": r"sluice\.on_publish must be called when the script loads",
        "log_level": r"bad argument #1 to 'log' \(debug, info, warn or error\)",
        "log_level_type": r"bad argument #1 to 'log'",
        "timer_fn": r"bad argument #2 to 'timer' \(function expected",
        "timer_secs_small": r"bad argument #1 to 'timer' \(seconds from 0\.001 to one year\)",
        "timer_secs_large": r"bad argument #1 to 'every' \(seconds from 0\.001 to one year\)",
        "timer_secs_type": r"bad argument #1 to 'every' \(number expected",
        "hmac_key": r"bad argument #1 to 'hmac_sha256'",
        "hmac_data": r"bad argument #2 to 'hmac_sha256'",
        "hex_arg": r"bad argument #1 to 'hex'",
        "jwt_token": r"bad argument #1 to 'verify'",
        "jwt_key": r"bad argument #2 to 'verify'",
        "json_decode": r"Expected|invalid|JSON",
        "json_encode": r"Cannot serialise function",
        "topic_in_handler_bad": r"bad argument #1 to 'topic'",
        "subscribe_topic": r"bad argument #1 to 'subscribe' \(invalid topic name",
        "subscribe_topics_type": r"bad argument #1 to 'subscribe' \(a topic name or a list",
        "subscribe_too_many": r"bad argument #1 to 'subscribe' \(1 to 64 topics\)",
        "subscribe_empty_list": r"bad argument #1 to 'subscribe' \(1 to 64 topics\)",
        "subscribe_opts_type": r"bad argument #2 to 'subscribe' \(table expected",
    }

    def test_errors_under_pcall_name_the_argument(self):
        for case, pattern in self.CASES.items():
            with self.subTest(case=case):
                r = http(self.s, "GET", "/try/" + case)
                self.assertEqual(r.status, 200, r)
                self.assertRegex(r.text, r"api_main\.lua:\d+: ")
                self.assertRegex(r.text, pattern)

    def test_errors_without_pcall_answer_500_and_are_logged(self):
        before = script_errors(self.s)
        n = 0
        for case in ("publish_topic", "publish_event_type", "route_in_handler",
                     "timer_secs_small", "subscribe_topic", "json_decode", "log_level"):
            with self.subTest(case=case):
                mark = self.s.mark()
                r = http(self.s, "GET", "/raw/" + case)
                self.assertJsonError(r, 500)
                self.assertEqual(r.json(), {"error": "script error"})
                self.assertLogged(r"error script error .*(?:%s)" % self.CASES[case], since=mark)
                self.assertLogged(r"stack traceback", since=mark)
                n += 1
        self.assertErrorsCounted(before, n)

    def test_handler_error_and_bad_return(self):
        before = script_errors(self.s)
        mark = self.s.mark()
        r = http(self.s, "GET", "/error")
        self.assertJsonError(r, 500)
        self.assertLogged(r"script error .*api_main\.lua:\d+: handler boom.*traceback", since=mark)
        self.assertErrorsCounted(before, 1)

    def test_bad_return_is_counted(self):
        """A handler that returns something else answers 500, is logged,
        and (like every script error) counted in the metrics."""
        before = script_errors(self.s)
        mark = self.s.mark()
        r = http(self.s, "GET", "/badreturn")
        self.assertJsonError(r, 500)
        self.assertLogged(r"script error .*handler must return a status", since=mark)
        self.assertErrorsCounted(before, 1)


# -- req ---------------------------------------------------------------------------

class RequestTest(ApiCase):
    def test_req_fields(self):
        with RawConn.tcp(self.s.host, self.s.port) as c:
            r = c.request("PATCH", "/inspect/hello%20world/x%2Fy?q=a+b&q=last&e=%C3%A9&flag",
                          [("X-Rep", "1"), ("X-Rep", "2"), ("X-Mixed-CASE", "V")], b"patch body")
            port = c.local_port()
        self.assertEqual(r.status, 200, r)
        v = r.json()
        self.assertEqual(v["method"], "PATCH")
        self.assertEqual(v["path"], "/inspect/hello%20world/x%2Fy")
        self.assertEqual(v["params"], {"a": "hello world", "b": "x/y"})
        self.assertEqual(v["query"]["q"], "a b")  # the first of a repeated name
        self.assertEqual(v["query"]["e"], "\u00e9")
        self.assertIn("flag", v["query"])
        self.assertEqual(v["headers"]["x-rep"], "1, 2")
        self.assertEqual(v["headers"]["x-mixed-case"], "V")
        self.assertNotIn("X-Mixed-CASE", v["headers"])
        self.assertEqual(v["body"], "patch body")
        self.assertEqual(v["remote_addr"], "127.0.0.1:%d" % port)
        self.assertEqual(v["transport"], "http")

    def test_req_body_empty_and_query_plus(self):
        v = http(self.s, "GET", "/inspect?a=x+y%2Bz").json()
        self.assertEqual(v["body"], "")
        self.assertEqual(v["query"], {"a": "x y+z"})
        self.assertEqual(v["params"], {})

    def test_req_splat(self):
        v = http(self.s, "GET", "/splat/a/b%20c/d").json()
        self.assertEqual(v["params"]["*"], "a/b c/d")

    def test_req_transport(self):
        v = http(self.s, "GET", "/inspect", headers=[("Accept", "text/event-stream")]).json()
        self.assertEqual(v["transport"], "sse")
        # A plain GET would be a poll: long unless ?timeout=0.
        self.assertEqual(http(self.s, "GET", "/inspect").json()["transport"], "longpoll")
        for q in ("timeout=0", "timeout=0.0", "a=1&timeout=0"):
            self.assertEqual(http(self.s, "GET", "/inspect?" + q).json()["transport"], "poll", q)
        self.assertEqual(http(self.s, "GET", "/inspect?timeout=5").json()["transport"],
                         "longpoll")
        # Any other method: "http".
        self.assertEqual(http(self.s, "POST", "/inspect/a/b", body=b"x").json()["transport"],
                         "http")
        ws = WS.handshake(self.s, "/inspect")
        # The handler answered a plain response to an upgrade request.
        self.assertEqual(ws.status, 200, ws.body)
        self.assertEqual(json.loads(ws.body)["transport"], "websocket")

    def test_req_lazy_fields_after_a_yield_and_after_the_request(self):
        # query, headers and remote_addr are built when first read: after the
        # handler yielded, and from a later request, they are the first one's.
        # Both requests on one connection, so on one worker (state is per
        # worker), and the second is parsed where the first was.
        with RawConn.tcp(self.s.host, self.s.port) as c:
            r = c.request("GET", "/lazy/after-yield?q=one%20two&z", [("X-First", "a")])
            port = c.local_port()
            self.assertEqual(r.status, 200, r)
            v2 = c.request("GET", "/lazy/kept?q=other", [("X-Second", "b")]).json()
        v = r.json()
        self.assertEqual(v["query"], {"q": "one two", "z": ""})
        self.assertEqual(v["headers"]["x-first"], "a")
        self.assertEqual(v["remote_addr"], "127.0.0.1:%d" % port)
        self.assertEqual(v2["path"], "/lazy/after-yield")
        self.assertEqual(v2["query"], {"q": "one two", "z": ""})
        self.assertEqual(v2["headers"]["x-first"], "a")
        self.assertNotIn("x-second", v2["headers"])
        self.assertEqual(v2["remote_addr"], "127.0.0.1:%d" % port)

    def test_req_header_one_header_without_the_table(self):
        hdrs = [("X-Twice", "a"), ("x-twice", "b"), ("X-One", "1")]
        v = http(self.s, "GET", "/header?name=x-twice", headers=hdrs).json()
        self.assertEqual(v, {"value": "a, b", "headers_built": False})
        v = http(self.s, "GET", "/header?name=X-ONE", headers=hdrs).json()
        self.assertEqual(v["value"], "1")
        v = http(self.s, "GET", "/header?name=x-none", headers=hdrs).json()
        self.assertEqual(v["value"], "absent")

    def test_req_pairs_and_json_see_every_field(self):
        fields = ["body=string", "headers=table", "method=string", "params=table",
                  "path=string", "query=table", "remote_addr=string", "transport=string"]
        r = http(self.s, "GET", "/lazy/pairs?a=1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body.decode().split(","), fields)
        v = http(self.s, "GET", "/lazy/json?a=1", headers=[("X-J", "j")]).json()
        self.assertEqual(sorted(v), [f.split("=")[0] for f in fields])
        self.assertEqual(v["query"], {"a": "1"})
        self.assertEqual(v["headers"]["x-j"], "j")
        self.assertEqual(v["transport"], "longpoll")

    def test_req_fields_set_by_the_handler_stay(self):
        v = http(self.s, "GET", "/lazy/assign?q=1", headers=[("X-A", "a")]).json()
        self.assertEqual(v, {"query": {"mine": "yes"}, "headers": "cleared"})

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 loopback")
    def test_req_remote_addr_ipv6(self):
        s6 = self.start(MAIN, listen=["[::1]:0"])
        with RawConn.tcp("::1", s6.port) as c:
            v = c.get("/inspect").json()
            self.assertEqual(v["remote_addr"], "[::1]:%d" % c.local_port())


# -- publish, on_publish, topic ------------------------------------------------------------

class PublishTest(ApiCase):
    def test_ids_increase_and_replay_in_order(self):
        r = http(self.s, "POST", "/pubmany/order?n=5", b"m")
        self.assertEqual(r.status, 200, r)
        ids = r.json()
        self.assertEqual(len(ids), 5)
        self.assertEqual(len(set(ids)), 5)
        for a, b in zip(ids, ids[1:]):
            self.assertLess(seq_of(a), seq_of(b))
        more = [publish(self.s, "order", "p%d" % i)["id"] for i in range(3)]
        self.assertLess(seq_of(ids[-1]), seq_of(more[0]))
        got = poll(self.s, "order")
        self.assertEqual([m["id"] for m in got["messages"]], ids + more)
        self.assertEqual([m["data"] for m in got["messages"]],
                         ["m1", "m2", "m3", "m4", "m5", "p0", "p1", "p2"])

    def test_event_option(self):
        pid = publish(self.s, "evt", "hello", event="greet")["id"]
        m = poll(self.s, "evt")["messages"]
        self.assertEqual(m, [{"id": pid, "topic": "evt", "event": "greet", "data": "hello"}])

    def test_publish_delivers_to_live_subscriber_before_answer(self):
        ws = WS.connect(self, self.s, "/sub/live?format=json")
        pid = publish(self.s, "live", "now")["id"]
        m = ws.recv_json()
        self.assertEqual((m["id"], m["topic"], m["data"]), (pid, "live", "now"))

    def test_publish_is_durable_when_the_handler_gets_the_id(self):
        """The id comes back only once the message is synced: a SIGKILL
        right after the answer loses nothing."""
        d = self.tmpdir()
        s = self.start(MAIN, data_dir=d)
        ids = [publish(s, "dur", "d%d" % i)["id"] for i in range(3)]
        r = http(s, "POST", "/pubmany/dur?n=2", b"many")
        ids += r.json()
        s.exit_expected = True
        s.proc.kill()
        s.wait_exit()
        s2 = self.start(MAIN, data_dir=d)
        got = poll(s2, "dur")["messages"]
        self.assertEqual([m["id"] for m in got], ids)
        self.assertEqual([m["data"] for m in got], ["d0", "d1", "d2", "many1", "many2"])

    def test_bad_topic_or_event_from_handler_is_500(self):
        before = script_errors(self.s)
        r = http(self.s, "POST", "/rawpub?topic=bad%20topic", b"x")
        self.assertJsonError(r, 500)
        # An invalid event name is a runtime failure (nil, err), not a
        # raise: nothing is stored (test_event_names.py has the rest).
        r = http(self.s, "POST", "/rawpub?topic=ok&event=a%0Db", b"x")
        self.assertEqual((r.status, r.body), (200, b"published"))
        r = http(self.s, "POST", "/rawpub?topic=ok", b"x")
        self.assertEqual((r.status, r.body), (200, b"published"))
        self.assertErrorsCounted(before, 1)
        self.assertEqual([m["data"] for m in poll(self.s, "ok")["messages"]], ["x"])


class OnPublishTest(ApiCase):
    def test_transform_stored_delivered_and_replayed(self):
        ws = WS.connect(self, self.s, "/sub/xf.a?format=json")
        pid = publish(self.s, "xf.a", "hello")["id"]
        m = ws.recv_json()
        self.assertEqual((m["id"], m["data"]), (pid, "xf:hello"))
        self.assertEqual([x["data"] for x in poll(self.s, "xf.a")["messages"]], ["xf:hello"])

    def test_longest_pattern_wins(self):
        publish(self.s, "xf.b", "1")
        publish(self.s, "xf.long.b", "2")
        publish(self.s, "xf.long.exact", "3")
        publish(self.s, "xf.long.exactly", "4")
        self.assertEqual(poll(self.s, "xf.b")["messages"][0]["data"], "xf:1")
        self.assertEqual(poll(self.s, "xf.long.b")["messages"][0]["data"], "long:2")
        self.assertEqual(poll(self.s, "xf.long.exact")["messages"][0]["data"], "exact:3")
        self.assertEqual(poll(self.s, "xf.long.exactly")["messages"][0]["data"], "long:4")
        # No pattern: unchanged.
        publish(self.s, "plain", "5")
        self.assertEqual(poll(self.s, "plain")["messages"][0]["data"], "5")

    def test_msg_fields_no_id_yet(self):
        publish(self.s, "xf.id", "q", event="e1")
        m = poll(self.s, "xf.id")["messages"][0]
        self.assertEqual(m["data"], "id=nil topic=xf.id event=e1")
        self.assertEqual(m["event"], "e1")

    def test_drop(self):
        ws = WS.connect(self, self.s, "/sub/drop.a?format=json")
        self.assertEqual(publish(self.s, "drop.a", "gone"),
                         {"id": None, "err": "dropped by on_publish"})
        kept = publish(self.s, "drop.a", "keep")["id"]
        m = ws.recv_json()
        self.assertEqual((m["id"], m["data"]), (kept, "keep"))
        self.assertEqual([x["data"] for x in poll(self.s, "drop.a")["messages"]], ["keep"])

    def test_topic_change(self):
        old = WS.connect(self, self.s, "/sub/move.a?format=json")
        new = WS.connect(self, self.s, "/sub/moved.a?format=json")
        pid = publish(self.s, "move.a", "relocated")["id"]
        m = new.recv_json()
        self.assertEqual((m["id"], m["topic"], m["data"]), (pid, "moved.a", "relocated"))
        self.assertTrue(old.quiet(0.3))
        self.assertEqual(poll(self.s, "move.a")["messages"], [])
        self.assertEqual([x["id"] for x in poll(self.s, "moved.a")["messages"]], [pid])

    def test_event_change(self):
        publish(self.s, "evchange", "x", event="orig")
        publish(self.s, "evchange", "y")
        self.assertEqual([m["event"] for m in poll(self.s, "evchange")["messages"]],
                         ["changed", "changed"])

    def test_error_in_on_publish_is_500_and_nothing_stored(self):
        by = self.bystander()
        before = script_errors(self.s)
        for topic, pattern in (("opboom", r"boom in on_publish"),
                               ("opbadret", r"on_publish must return the message or nil"),
                               ("opspin", r"instruction budget exceeded")):
            with self.subTest(topic=topic):
                mark = self.s.mark()
                r = http(self.s, "POST", "/pub/" + topic, b"x")
                self.assertJsonError(r, 500)
                self.assertLogged(r"error .*(?:%s)" % pattern, since=mark)
                self.assertEqual(poll(self.s, topic)["messages"], [])
        self.assertErrorsCounted(before, 3)
        self.check_bystander(by)

    def test_on_publish_applies_to_websocket_publishes(self):
        ws = WS.connect(self, self.s, "/sub/xf.ws?format=json")
        ws.send_text("pub:from-ws")
        got = [ws.recv() for _ in range(2)]
        texts = sorted(x[1] for x in got)
        self.assertEqual(texts[0], "returned 1")
        self.assertEqual(json.loads(texts[1])["data"], "xf:from-ws")


class TopicRetentionTest(ApiCase):
    def test_backlog_visible_through_long_poll_replay(self):
        ids = [publish(self.s, "keep3", "m%d" % i)["id"] for i in range(1, 6)]
        # A long-poll from the first ID answers at once with what is left.
        got = poll(self.s, "keep3", since=ids[0], timeout=5)
        self.assertEqual([m["data"] for m in got["messages"]], ["m3", "m4", "m5"])
        self.assertTrue(got.get("gap"))
        # Resuming from a retained ID: no gap, the rest.
        got = poll(self.s, "keep3", since=ids[3])
        self.assertEqual([m["data"] for m in got["messages"]], ["m5"])
        self.assertFalse(got.get("gap", False))
        # A topic without a rule keeps them all (default 1000).
        for i in range(5):
            publish(self.s, "keepall", str(i))
        self.assertEqual(len(poll(self.s, "keepall")["messages"]), 5)

    def test_max_age(self):
        publish(self.s, "aged.x", "old")
        time.sleep(1.5)
        publish(self.s, "aged.x", "new")
        got = poll(self.s, "aged.x")
        self.assertEqual([m["data"] for m in got["messages"]], ["new"])

    def test_topic_declared_from_handler_errors(self):
        r = http(self.s, "GET", "/try/topic_in_handler_bad")
        self.assertIn("bad argument #1 to 'topic'", r.text)


# -- JSON, log, crypto, version, metrics ------------------------------------------------------

class UtilTest(ApiCase):
    def test_json_roundtrip(self):
        v = {"a": [1, 2.5, "x"], "b": {"c": True, "d": False}, "u": "\u00e9\u2713", "s": "q\"/\\"}
        r = http(self.s, "POST", "/json/roundtrip", json.dumps(v).encode())
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(r.json(), v)

    def test_json_cases(self):
        r = http(self.s, "GET", "/json/cases")
        self.assertEqual(r.status, 201, r)
        self.assertIn("application/json", r.header("content-type"))
        v = r.json()
        self.assertEqual(v["empty"], "{}")
        self.assertTrue(v["null_is_sentinel"])
        self.assertEqual(v["list_len"], 3)
        self.assertEqual(v["c"], "\u00e9")
        self.assertEqual(json.loads(v["number"]), 1.5)
        self.assertEqual(json.loads(v["string"]), "a\"b/c")
        self.assertTrue(v["decode_error_caught"])
        self.assertTrue(v["decode_error"])

    def test_json_decode_error_uncaught_is_500(self):
        r = http(self.s, "POST", "/json/roundtrip", b"{oops")
        self.assertJsonError(r, 500)

    def test_log_levels(self):
        line = line_of(MAIN, "-- LOGLINE")
        for level in ("info", "warn", "error"):
            with self.subTest(level=level):
                mark = self.s.mark()
                r = http(self.s, "GET", "/log?level=%s&msg=hi%%20there" % level)
                self.assertEqual(r.status, 200, r)
                self.assertLogged(r" %s api-log-test hi there 42 true nil src=\S*api_main\.lua:%d$"
                                  % (level, line), since=mark)
        # debug is below the default level: nothing.
        mark = self.s.mark()
        http(self.s, "GET", "/log?level=debug&msg=hidden")
        http(self.s, "GET", "/ping")
        self.s.wait_log(r"path=/ping", since=mark)
        self.assertEqual(self.s.find_logs(r"hidden", since=mark), [])

    def test_log_debug_json_format(self):
        s = self.start(MAIN, args=["--log-level", "debug"], log_format="json")
        line = line_of(MAIN, "-- LOGLINE")
        for level in ("debug", "info", "warn", "error"):
            http(s, "GET", "/log?level=%s&msg=j" % level)
        def found():
            out = {}
            for l in s.logs():
                try:
                    o = json.loads(l)
                except ValueError:
                    continue
                if o.get("msg", "").startswith("api-log-test j"):
                    out[o["level"]] = o
            return out if len(out) == 4 else None
        got = wait_until(found, what="four JSON log lines")
        for level, o in got.items():
            self.assertEqual(o["msg"], "api-log-test j 42 true nil")
            self.assertTrue(o["src"].endswith("api_main.lua:%d" % line), o)

    RFC4231 = [
        ("0b" * 20, b"Hi There".hex(),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe".hex(), b"what do ya want for nothing?".hex(),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        ("aa" * 20, "dd" * 50,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        ("".join("%02x" % i for i in range(1, 26)), "cd" * 50,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        ("aa" * 131, (b"This is a test using a larger than block-size key and a larger "
                      b"than block-size data. The key needs to be hashed before being "
                      b"used by the HMAC algorithm.").hex(),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ]

    def test_hmac_sha256_rfc4231(self):
        for i, (key, data, want) in enumerate(self.RFC4231):
            with self.subTest(case=i):
                # The vectors themselves, checked against Python's hmac.
                self.assertEqual(hmac.new(bytes.fromhex(key), bytes.fromhex(data),
                                          hashlib.sha256).hexdigest(), want)
                r = http(self.s, "GET", "/hmac?key=%s&data=%s" % (key, data))
                self.assertEqual((r.status, r.text), (200, want))

    def test_hex(self):
        r = http(self.s, "GET", "/hex?bytes=00ff10ab")
        self.assertEqual(r.text, "00ff10ab|")

    def test_valid_topic(self):
        names = [b"a", b"rooms.lobby:2-x_Y", b"x" * 200,  # valid
                 b"", b"x" * 201, b"a b", b"a/b", b"rooms.*", b"caf\xc3\xa9", b"a\x00"]
        r = http(self.s, "GET", "/valid_topic?names=" + ",".join(n.hex() for n in names))
        self.assertEqual(r.text.split(), ["true"] * 3 + ["false"] * 7 + ["false", "false"])

    def test_version_and_metrics(self):
        r = http(self.s, "GET", "/version")
        rc, out, err = run_sluice(["-V"])
        self.assertEqual(rc, 0)
        self.assertTrue(r.text)
        self.assertIn(r.text, out + err)
        m = http(self.s, "GET", "/metrics").text
        for name in ("sluice_connections", "sluice_messages_published_total",
                     "sluice_script_errors_total", "sluice_publish_latency_seconds_bucket"):
            self.assertIn(name, m)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(claims, key, header=None, alg=hashlib.sha256):
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = b64u(hmac.new(key, signing.encode(), alg).digest())
    return signing + "." + sig


class JwtTest(ApiCase):
    KEY = b"s3cret-key"

    def verify(self, token, key=KEY):
        r = http(self.s, "POST", "/jwt?key=" + key.decode(), token.encode())
        self.assertEqual(r.status, 200, r)
        return r.json()

    def test_valid(self):
        now = int(time.time())
        claims = {"sub": "alice", "n": 5, "room": "lobby", "exp": now + 3600, "nbf": now - 60}
        v = self.verify(make_jwt(claims, self.KEY))
        self.assertEqual(v, {"ok": True, "claims": claims})
        # No exp/nbf at all is fine too.
        self.assertEqual(self.verify(make_jwt({"sub": "bob"}, self.KEY))["claims"], {"sub": "bob"})

    def test_wrong_key(self):
        v = self.verify(make_jwt({"sub": "alice"}, b"other-key"))
        self.assertEqual(v, {"ok": False, "reason": "bad signature"})

    def test_tampered_payload(self):
        t = make_jwt({"sub": "alice", "admin": False}, self.KEY)
        h, p, s = t.split(".")
        forged = h + "." + b64u(json.dumps({"sub": "alice", "admin": True}).encode()) + "." + s
        self.assertEqual(self.verify(forged), {"ok": False, "reason": "bad signature"})
        # A flipped signature character too.
        bad_sig = h + "." + p + "." + ("A" if s[0] != "A" else "B") + s[1:]
        self.assertEqual(self.verify(bad_sig)["reason"], "bad signature")

    def test_alg_none_refused(self):
        h = b64u(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        p = b64u(json.dumps({"sub": "root"}).encode())
        for token in (h + "." + p + ".", h + "." + p + "." + b64u(b"x")):
            self.assertEqual(self.verify(token),
                             {"ok": False, "reason": "unsupported algorithm"})
        # Case games with the name are refused as well.
        h2 = b64u(json.dumps({"alg": "hs256"}).encode())
        self.assertEqual(self.verify(h2 + "." + p + ".")["reason"], "unsupported algorithm")

    def test_alg_hs512_and_hs384(self):
        """HS512 and HS384 verify under the same secret (HS256 only, until
        jwt.c); an HS512 token cut to 32 bytes of MAC is refused."""
        t = make_jwt({"sub": "alice"}, self.KEY, {"alg": "HS512", "typ": "JWT"}, hashlib.sha512)
        self.assertEqual(self.verify(t), {"ok": True, "claims": {"sub": "alice"}})
        t = make_jwt({"sub": "bob"}, self.KEY, {"alg": "HS384", "typ": "JWT"}, hashlib.sha384)
        self.assertEqual(self.verify(t), {"ok": True, "claims": {"sub": "bob"}})
        t = make_jwt({"sub": "eve"}, self.KEY, {"alg": "HS512", "typ": "JWT"}, hashlib.sha256)
        self.assertEqual(self.verify(t), {"ok": False, "reason": "bad signature"})

    def test_expired(self):
        t = make_jwt({"sub": "alice", "exp": int(time.time()) - 30}, self.KEY)
        self.assertEqual(self.verify(t), {"ok": False, "reason": "token expired"})

    def test_not_yet_valid(self):
        t = make_jwt({"sub": "alice", "nbf": int(time.time()) + 3600}, self.KEY)
        self.assertEqual(self.verify(t), {"ok": False, "reason": "token not yet valid"})

    def test_malformed(self):
        good = make_jwt({"sub": "alice"}, self.KEY)
        for token in ("", "abc", "a.b", good + ".extra", "!!!.@@@.###",
                      b64u(b"not json") + "." + good.split(".", 1)[1]):
            with self.subTest(token=token):
                v = self.verify(token)
                self.assertFalse(v["ok"])
                self.assertTrue(v["reason"].startswith("malformed token"), v)

    def test_malformed_reason_text(self):
        """docs/lua-api.md names one reason for every malformed token:
        exactly "malformed token"."""
        good = make_jwt({"sub": "alice"}, self.KEY)
        h = good.split(".")[0]
        sig_of = lambda signing: b64u(hmac.new(self.KEY, signing.encode(), hashlib.sha256).digest())
        not_json_claims = h + "." + b64u(b"not json")
        for token in ("a.b", b64u(b"not json") + "." + good.split(".", 1)[1],
                      not_json_claims + "." + sig_of(not_json_claims)):
            with self.subTest(token=token):
                self.assertEqual(self.verify(token), {"ok": False, "reason": "malformed token"})


# -- timers --------------------------------------------------------------------------------

class TimerTest(ApiCase):
    # These read back, over several requests, Lua state a timer changed:
    # state is per worker, so one worker.
    server_args = ("-w", "1")

    def test_timer_publishes_once(self):
        ws = WS.connect(self, self.s, "/sub/timer.once")
        r = http(self.s, "POST", "/timer/once?tag=t1")
        self.assertEqual((r.status, r.text), (200, "userdata"))
        self.assertEqual(ws.recv_text(), "fired:t1")
        # The publish waited for the commit and returned an id.
        self.assertEqual(ws.recv_text(), "after-commit:true")
        self.assertTrue(ws.quiet(0.4))

    def test_cancelled_timer_never_fires(self):
        ws = WS.connect(self, self.s, "/sub/timer.once")
        r = http(self.s, "POST", "/timer/cancel_once")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(ws.quiet(0.8))

    def test_every_and_cancel(self):
        ws = WS.connect(self, self.s, "/sub/timer.every")
        http(self.s, "POST", "/timer/every")
        for i in range(1, 4):
            self.assertEqual(ws.recv_text(), "tick%d" % i)
        n = int(http(self.s, "POST", "/timer/stop").text)
        self.assertGreaterEqual(n, 3)
        got = []
        while not ws.quiet(0.5):
            got.append(ws.recv_text())
        self.assertEqual(got, ["tick%d" % i for i in range(4, n + 1)])
        self.assertEqual(http(self.s, "GET", "/timer/ticks").text, str(n))

    def test_every_keeps_running_after_errors(self):
        ws = WS.connect(self, self.s, "/sub/timer.err")
        before = script_errors(self.s)
        mark = self.s.mark()
        http(self.s, "POST", "/timer/every_error")
        for i in range(1, 4):
            self.assertEqual(ws.recv_text(), "run%d" % i)
        n = int(http(self.s, "POST", "/timer/every_error_stop").text)
        self.assertLogged(r"error script error .*timer boom 1.*traceback", since=mark)
        self.assertErrorsCounted(before, n)
        while not ws.quiet(0.4):
            ws.recv_text()

    def test_timer_budget_overrun_is_logged_server_fine(self):
        by = self.bystander()
        ws = WS.connect(self, self.s, "/sub/timer.spin")
        before = script_errors(self.s)
        mark = self.s.mark()
        http(self.s, "POST", "/timer/spin")
        self.assertEqual(ws.recv_text(), "before")
        self.assertLogged(r"instruction budget exceeded", since=mark)
        self.assertErrorsCounted(before, 1)
        self.check_bystander(by)


# -- subscriptions: filter, on_message, on_close, options -----------------------------------------

class FilterTest(ApiCase):
    def test_filter_drop_transform_unchanged(self):
        plain = WS.connect(self, self.s, "/sub/ft?format=json")
        filt = WS.connect(self, self.s, "/sub/ft?format=json&filter=basic")
        sse = SSE.connect(self, self.s, "/sub/ft?filter=basic")
        ids = [publish(self.s, "ft", d, event=e)["id"]
               for d, e in (("a", None), ("drop", None), ("up:hello", "orig"), ("b", "keep"))]
        got_plain = [plain.recv_json() for _ in range(4)]
        self.assertEqual([m["data"] for m in got_plain], ["a", "drop", "up:hello", "b"])
        got = [filt.recv_json() for _ in range(3)]
        self.assertEqual([(m["id"], m["event"], m["data"]) for m in got],
                         [(ids[0], None, "a"), (ids[2], "upper", "HELLO"), (ids[3], "keep", "b")])
        self.assertTrue(filt.quiet(0.2))
        evs = [sse.next_event() for _ in range(3)]
        self.assertEqual([(e["id"], e["event"], e["data"]) for e in evs],
                         [(ids[0], None, "a"), (ids[2], "upper", "HELLO"), (ids[3], "keep", "b")])

    def test_filter_sees_message_fields(self):
        ws = WS.connect(self, self.s, "/sub/ff?filter=fields")
        publish(self.s, "ff", "x", event="ev")
        self.assertEqual(ws.recv_text(), "id=true topic=ff event=ev data=x")

    def test_filter_applies_to_replay_and_polls(self):
        first = publish(self.s, "fr", "start")["id"]
        for d in ("a", "drop", "up:z"):
            publish(self.s, "fr", d)
        ws = WS.connect(self, self.s, "/sub/fr?format=json&filter=basic&last_event_id=" + first)
        self.assertEqual([ws.recv_json()["data"] for _ in range(2)], ["a", "Z"])
        got = poll(self.s, "fr", since=first, extra="&filter=basic")
        self.assertEqual([m["data"] for m in got["messages"]], ["a", "Z"])

    def _overrun(self, name, pattern):
        by = self.bystander()
        other = WS.connect(self, self.s, "/sub/fo?format=json")
        victim = WS.connect(self, self.s, "/sub/fo?filter=" + name)
        before = script_errors(self.s)
        mark = self.s.mark()
        publish(self.s, "fo", "fine")
        self.assertEqual(victim.recv_text(), "fine")
        publish(self.s, "fo", "spin" if "spin" in name else "err")
        m = victim.recv()
        self.assertEqual(m[:2], ("close", 1011), "the filter went on: got %r" % (m,))
        self.assertLogged(pattern, since=mark)
        self.assertErrorsCounted(before, 1)
        self.assertEqual([other.recv_json()["data"] for _ in range(2)],
                         ["fine", "spin" if "spin" in name else "err"])
        self.check_bystander(by)

    def test_filter_error_closes_1011(self):
        self._overrun("err", r"script error .*callback=filter.*filter boom")

    def test_filter_budget_overrun_closes_1011(self):
        self._overrun("spin", r"instruction budget exceeded .*callback=filter")

    def test_filter_pcall_cannot_swallow_overrun(self):
        self._overrun("pcallspin", r"instruction budget exceeded .*callback=filter")


class OnMessageTest(ApiCase):
    def test_send_to_that_client_only(self):
        a = WS.connect(self, self.s, "/sub/om")
        b = WS.connect(self, self.s, "/sub/om")
        a.send_text("echo:hi")
        self.assertEqual(a.recv_text(), "echo:hi")
        self.assertTrue(b.quiet(0.3))

    def test_send_binary_and_receive_binary(self):
        a = WS.connect(self, self.s, "/sub/om")
        a.send_text("bin")
        self.assertEqual(a.recv(), ("binary", b"\x00\x01\x02\xff"))
        a.send_binary(b"\x00\xfe\xff")
        self.assertEqual(a.recv_text(), "got binary 3")

    def test_conn_transport(self):
        a = WS.connect(self, self.s, "/sub/om")
        a.send_text("transport")
        self.assertEqual(a.recv_text(), "transport=websocket closed=false")

    def test_conn_topic_names_the_subscription(self):
        a = WS.connect(self, self.s, "/sub/om")
        a.send_text("topic")
        self.assertEqual(a.recv_text(), "topic=om")
        b = WS.connect(self, self.s, "/sub/om.*")  # a pattern keeps its '*'
        b.send_text("topic")
        self.assertEqual(b.recv_text(), "topic=om.*")

    def test_publish_in_on_message_returns_true_and_publishes(self):
        a = WS.connect(self, self.s, "/sub/omp?format=json")
        b = WS.connect(self, self.s, "/sub/omp?format=json")
        a.send_text("pub:hello")
        first = a.recv_text()
        self.assertEqual(first, "returned 1")
        m = a.recv_json()
        self.assertEqual(m["data"], "hello")
        self.assertEqual(b.recv_json(), m)
        self.assertEqual(poll(self.s, "omp")["messages"][0]["id"], m["id"])

    def test_conn_close_code(self):
        for code in (4001, 3000, 1000, 1009):
            with self.subTest(code=code):
                # A server each: one that fails must not hide the others.
                s = self.s if code == 4001 else self.start(MAIN)
                a = WS.connect(self, s, "/sub/om")
                a.send_text("close:%d" % code)
                self.assertEqual(a.recv_close(), (code, "bye"))
                self.assertTrue(a.c.is_closed(5))

    def test_conn_close_bad_code_is_an_error(self):
        a = WS.connect(self, self.s, "/sub/om")
        mark = self.s.mark()
        a.send_text("badclose")
        self.assertEqual(a.recv_close()[0], 1011)
        self.assertLogged(r"bad argument #1 to 'close'", since=mark)

    def _fails(self, cmd, pattern):
        by = self.bystander()
        a = WS.connect(self, self.s, "/sub/omf")
        before = script_errors(self.s)
        mark = self.s.mark()
        a.send_text(cmd)
        m = a.recv()
        self.assertEqual(m[:2], ("close", 1011), "the callback went on: got %r" % (m,))
        self.assertLogged(pattern, since=mark)
        self.assertErrorsCounted(before, 1)
        self.check_bystander(by)

    def test_on_message_error_closes_1011(self):
        self._fails("err", r"script error .*callback=on_message.*on_message boom")

    def test_on_message_budget_overrun_closes_1011(self):
        self._fails("spin", r"instruction budget exceeded .*callback=on_message")

    def test_on_message_pcall_cannot_swallow_overrun(self):
        self._fails("pcallspin", r"instruction budget exceeded .*callback=on_message")

    def test_with_python_websockets(self):
        """An independent client (python3-websockets) for the handshake,
        subprotocol choice and a round trip."""
        import websockets

        async def go():
            uri = "ws://127.0.0.1:%d/sub/pyws?protocol=chat" % self.s.port
            async with websockets.connect(uri, subprotocols=["other", "chat"],
                                          open_timeout=10, close_timeout=5) as ws:
                self.assertEqual(ws.subprotocol, "chat")
                await ws.send("echo:py")
                got = await asyncio.wait_for(ws.recv(), 10)
                self.assertEqual(got, "echo:py")
                await ws.send("close:4321")
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed as e:
                    return e.code
            return None

        self.assertEqual(asyncio.run(go()), 4321)


class OnCloseTest(ApiCase):
    # /closes reads a Lua table that on_close filled on the subscriber's
    # worker: state is per worker, so one worker.
    server_args = ("-w", "1")

    def closes(self, tag):
        return http(self.s, "GET", "/closes/" + tag).json()

    def wait_closed_once(self, tag):
        rec = wait_until(lambda: self.closes(tag)["count"] >= 1 and self.closes(tag),
                         what="on_close of " + tag)
        time.sleep(0.3)
        rec = self.closes(tag)
        self.assertEqual(rec["count"], 1, rec)
        return rec

    def test_websocket_client_leaves(self):
        ws = WS.connect(self, self.s, "/sub/oc?tag=w1")
        self.assertEqual(self.closes("w1")["count"], 0)
        ws.close()
        rec = self.wait_closed_once("w1")
        self.assertEqual(rec, {"count": 1, "send_ok": False, "send_reason": "connection closed",
                               "transport": "closed", "closed": True})

    def test_websocket_client_vanishes(self):
        ws = WS.connect(self, self.s, "/sub/oc?tag=w2")
        ws.c.abort()
        self.wait_closed_once("w2")

    def test_server_side_close(self):
        ws = WS.connect(self, self.s, "/sub/oc?tag=w3")
        ws.send_text("close:4000")
        self.assertEqual(ws.recv_close()[0], 4000)
        ws.c.close()
        self.wait_closed_once("w3")

    def test_sse_client_leaves(self):
        sse = SSE.connect(self, self.s, "/sub/oc?tag=s1")
        publish(self.s, "oc", "one")
        self.assertEqual(sse.next_event()["data"], "one")
        self.assertEqual(self.closes("s1")["count"], 0)
        sse.close()
        self.wait_closed_once("s1")

    def test_poll_ends(self):
        r = http(self.s, "GET", "/sub/oc?tag=p1&timeout=0")
        self.assertEqual(r.status, 200, r)
        self.wait_closed_once("p1")
        publish(self.s, "oc", "x")
        r = http(self.s, "GET", "/sub/oc?tag=p2&timeout=5&since=unknown-0")
        self.assertEqual(r.json()["messages"][0]["data"], "x")
        self.wait_closed_once("p2")

    def _fails(self, kind, pattern):
        by = self.bystander()
        before = script_errors(self.s)
        mark = self.s.mark()
        ws = WS.connect(self, self.s, "/sub/oc?tag=f&onclose=" + kind)
        ws.close()
        self.assertLogged(pattern, since=mark)
        self.assertErrorsCounted(before, 1)
        self.assertEqual(self.closes("f")["count"], 0)
        self.check_bystander(by)

    def test_on_close_error_logged(self):
        self._fails("err", r"script error .*callback=on_close.*on_close boom")

    def test_on_close_budget_overrun_logged(self):
        self._fails("spin", r"instruction budget exceeded .*callback=on_close")


class SubscribeOptionsTest(ApiCase):
    def test_skip_self(self):
        a = WS.connect(self, self.s, "/sub/ss?format=json&skip_self=1")
        b = WS.connect(self, self.s, "/sub/ss?format=json")
        a.send_text("pub:from-a")
        self.assertEqual(a.recv_text(), "returned 1")
        m = b.recv_json()
        self.assertEqual(m["data"], "from-a")
        self.assertTrue(a.quiet(0.3))
        b.send_text("pub:from-b")
        self.assertEqual(b.recv_text(), "returned 1")
        self.assertEqual(a.recv_json()["data"], "from-b")
        self.assertEqual(b.recv_json()["data"], "from-b")
        # Published from HTTP: both get it.
        publish(self.s, "ss", "from-http")
        self.assertEqual(a.recv_json()["data"], "from-http")
        self.assertEqual(b.recv_json()["data"], "from-http")

    def test_events(self):
        ws = WS.connect(self, self.s, "/sub/evs?format=json&events=a,b")
        sse = SSE.connect(self, self.s, "/sub/evs?events=b")
        for d, e in (("1", "a"), ("2", "c"), ("3", None), ("4", "b")):
            publish(self.s, "evs", d, event=e)
        got = [ws.recv_json() for _ in range(2)]
        self.assertEqual([(m["event"], m["data"]) for m in got], [("a", "1"), ("b", "4")])
        self.assertTrue(ws.quiet(0.2))
        ev = sse.next_event()
        self.assertEqual((ev["event"], ev["data"]), ("b", "4"))

    def test_wildcard_live_and_resume(self):
        start = publish(self.s, "rooms.zero", "before")["id"]
        live = WS.connect(self, self.s, "/sub/x?format=json&topics=rooms.*")
        ids = [publish(self.s, t, d)["id"]
               for t, d in (("rooms.one", "1"), ("other.x", "no"), ("rooms.two", "2"))]
        got = [live.recv_json() for _ in range(2)]
        self.assertEqual([(m["id"], m["topic"], m["data"]) for m in got],
                         [(ids[0], "rooms.one", "1"), (ids[2], "rooms.two", "2")])
        self.assertTrue(live.quiet(0.2))
        # Resume the wildcard from `start`: the stored rooms.* after it.
        res = WS.connect(self, self.s, "/sub/x?format=json&topics=rooms.*&last_event_id=" + start)
        got = [res.recv_json() for _ in range(2)]
        self.assertEqual([(m["id"], m["topic"]) for m in got],
                         [(ids[0], "rooms.one"), (ids[2], "rooms.two")])
        # Live after the replay, no duplicate at the seam.
        three = publish(self.s, "rooms.three", "3")["id"]
        self.assertEqual(res.recv_json()["id"], three)
        self.assertEqual(live.recv_json()["id"], three)
        # Long-poll of the wildcard.
        got = poll(self.s, "x", since=start, extra="&topics=rooms.*")
        self.assertEqual([m["id"] for m in got["messages"]], [ids[0], ids[2], three])

    def test_several_topics(self):
        ws = WS.connect(self, self.s, "/sub/x?format=json&topics=t.a,t.b")
        publish(self.s, "t.a", "1")
        publish(self.s, "t.c", "no")
        publish(self.s, "t.b", "2")
        self.assertEqual([ws.recv_json()["topic"] for _ in range(2)], ["t.a", "t.b"])

    def test_last_event_id_option(self):
        first = publish(self.s, "le", "1")["id"]
        publish(self.s, "le", "2")
        ws = WS.connect(self, self.s, "/sub/le?format=json&resume=" + first)
        self.assertEqual(ws.recv_json()["data"], "2")

    def test_format_option(self):
        ws = WS.connect(self, self.s, "/sub/fmt?fmt=json")
        pid = publish(self.s, "fmt", "x")["id"]
        self.assertEqual(ws.recv_json()["id"], pid)

    def test_subprotocol(self):
        ws = WS.handshake(self.s, "/sub/sp?protocol=chat", protocols=["superchat", "chat"])
        self.addCleanup(ws.c.close)
        self.assertEqual(ws.status, 101)
        self.assertEqual(ws.header("sec-websocket-protocol"), "chat")
        ws.send_text("echo:p")
        self.assertEqual(ws.recv_text(), "echo:p")
        for offered in (["superchat"], None, ["chat2", "xchat"]):
            with self.subTest(offered=offered):
                r = WS.handshake(self.s, "/sub/sp?protocol=chat", protocols=offered)
                self.assertEqual(r.status, 400, r.body)
        # No protocol chosen by the app: none in the answer.
        ws2 = WS.handshake(self.s, "/sub/sp", protocols=["chat"])
        self.addCleanup(ws2.c.close)
        self.assertEqual(ws2.status, 101)
        self.assertIsNone(ws2.header("sec-websocket-protocol"))

    def test_bad_option_types_are_500(self):
        by = self.bystander()
        before = script_errors(self.s)
        names = ("filter", "on_message", "on_close", "protocol", "events", "events_item",
                 "last_event_id", "format")
        for name in names:
            with self.subTest(opt=name):
                mark = self.s.mark()
                r = http(self.s, "GET", "/sub/bo?badopt=%s&timeout=0" % name)
                self.assertJsonError(r, 500)
                self.assertLogged(r"error script error .*opts\.%s" % name.split("_item")[0],
                                  since=mark)
                ws = WS.handshake(self.s, "/sub/bo?badopt=" + name)
                self.assertEqual(ws.status, 500, ws.body)
        self.assertErrorsCounted(before, 2 * len(names))
        self.check_bystander(by)


# -- budget overruns: handler and pcall ----------------------------------------------------

class HandlerBudgetTest(ApiCase):
    def test_handler_overrun_is_500(self):
        by = self.bystander()
        before = script_errors(self.s)
        mark = self.s.mark()
        r = http(self.s, "GET", "/spin")
        self.assertJsonError(r, 500)
        self.assertLogged(r"script stopped: instruction budget exceeded .*traceback", since=mark)
        self.assertErrorsCounted(before, 1)
        self.check_bystander(by)

    def test_pcall_cannot_swallow_overrun_with_more_work(self):
        before = script_errors(self.s)
        r = http(self.s, "GET", "/pcallspin_work")
        self.assertJsonError(r, 500)
        self.assertErrorsCounted(before, 1)

    def test_pcall_cannot_swallow_overrun(self):
        """`local ok = pcall(spin); return 200, "swallowed"`: the overrun
        must still stop the handler (docs: "A budget overrun cannot be
        caught with pcall")."""
        before = script_errors(self.s)
        r = http(self.s, "GET", "/pcallspin")
        self.assertJsonError(r, 500)
        self.assertErrorsCounted(before, 1)

    def test_overruns_do_not_disturb_streams(self):
        """Many overruns of each kind while an SSE and a WebSocket
        subscriber stay connected and get everything."""
        sse = SSE.connect(self, self.s, "/sub/calm")
        ws = WS.connect(self, self.s, "/sub/calm?format=json")
        for i in range(3):
            self.assertEqual(http(self.s, "GET", "/spin").status, 500)
            self.assertEqual(http(self.s, "POST", "/pub/opspin", b"x").status, 500)
            pid = publish(self.s, "calm", "c%d" % i)["id"]
            self.assertEqual(sse.next_event()["id"], pid)
            self.assertEqual(ws.recv_json()["id"], pid)


# -- reloads -------------------------------------------------------------------------------

class ReloadTest(SluiceTestCase):
    def setUp(self):
        self.dir = self.tmpdir()
        self.script = os.path.join(self.dir, "api_app.lua")
        shutil.copyfile(RELOAD_A, self.script)

    def install(self, src):
        tmp = self.script + ".tmp"
        if src == "syntax":
            with open(tmp, "w") as f:
                f.write('local sluice = require "sluice"\nsluice.route("GET", "/v", function(\n')
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, self.script)

    def reload(self, s, src):
        """Installs src, sends SIGHUP, waits (bounded) for the outcome;
        True when it loaded."""
        self.install(src)
        mark = s.mark()
        s.signal(signal.SIGHUP)
        m = s.wait_log(r"reloaded app|reload failed", since=mark)
        return "reloaded app" in m.group(0)

    def version(self, s):
        return http(s, "GET", "/version").text

    def test_timers_belong_to_their_generation(self):
        s = self.start(self.script)
        first = None
        cursor = "unknown-0"
        seen = []

        def collect(until, timeout=10.0):
            nonlocal cursor
            deadline = time.monotonic() + timeout
            while not until():
                self.assertLess(time.monotonic(), deadline, "timeout; seen %r" % seen[-20:])
                got = poll(s, "gen", since=cursor, timeout=2)
                seen.extend(m["data"] for m in got["messages"])
                cursor = got["last_id"] or cursor

        collect(lambda: seen.count("A") >= 3)
        # A broken script leaves A and its timer running.
        self.assertFalse(self.reload(s, RELOAD_BROKEN))
        n = len(seen)
        collect(lambda: seen[n:].count("A") >= 3)
        self.assertEqual(self.version(s), "A")
        # B replaces A: after B's first message, only B.
        self.assertTrue(self.reload(s, RELOAD_B))
        self.assertEqual(self.version(s), "B")
        collect(lambda: seen.count("B") >= 8)
        fb = seen.index("B")
        self.assertNotIn("A", seen[fb:], seen)
        self.assertNotIn("BROKEN", seen)
        self.assertEqual(set(seen[:fb]), {"A"})

    def test_subscriptions_keep_their_generation_callbacks(self):
        s = self.start(self.script)
        old = WS.connect(self, s, "/sub/tagged?format=json")
        old_sse = SSE.connect(self, s, "/sub/tagged")
        self.assertTrue(self.reload(s, RELOAD_B))
        new = WS.connect(self, s, "/sub/tagged?format=json")
        pid = http(s, "POST", "/pub/tagged", b"x").json()["id"]
        self.assertEqual(old.recv_json(), {"id": pid, "topic": "tagged", "event": None,
                                           "data": "A:x"})
        self.assertEqual(old_sse.next_event()["data"], "A:x")
        self.assertEqual(new.recv_json()["data"], "B:x")
        old.send_text("hi")
        self.assertEqual(old.recv_text(), "A:hi")
        new.send_text("hi")
        self.assertEqual(new.recv_text(), "B:hi")
        # A failed reload changes nothing; another good one neither for
        # the open subscriptions.
        self.assertFalse(self.reload(s, "syntax"))
        self.assertTrue(self.reload(s, RELOAD_A))
        pid = http(s, "POST", "/pub/tagged", b"y").json()["id"]
        self.assertEqual(old.recv_json()["data"], "A:y")
        self.assertEqual(new.recv_json()["data"], "B:y")
        # The last subscribers of generation A go: its state is freed while
        # generation B's subscriber and the current app carry on.
        old.close()
        old_sse.close()
        self.assertTrue(self.reload(s, RELOAD_B))
        http(s, "POST", "/pub/tagged", b"z")
        self.assertEqual(new.recv_json()["data"], "B:z")
        new.send_text("again")
        self.assertEqual(new.recv_text(), "B:again")
        self.assertEqual(self.version(s), "B")

    def test_reload_loop_while_clients_receive(self):
        """A publisher posts continuously; SSE, WebSocket and long-poll
        subscribers (with generation-A filters) stay connected across ten
        SIGHUPs alternating B/A with broken scripts between; each gets every
        acknowledged message exactly once, in order."""
        s = self.start(self.script)
        marker = http(s, "POST", "/pub/loop", b"marker").json()["id"]
        errors = []
        stop = threading.Event()
        acked = []
        received = {"ws": [], "sse": [], "poll": []}

        ws = WS.connect(self, s, "/sub/loop?format=json&last_event_id=" + marker)
        sse = SSE.connect(self, s, "/sub/loop", headers=[("Last-Event-ID", marker)])

        pub_done = threading.Event()
        drain_until = [time.monotonic() + 120]  # shortened when stopping

        def more(name):
            """A reader goes on while the publisher runs, then until it has
            every acknowledged message (bounded)."""
            if not pub_done.is_set():
                return True
            return len(received[name]) < len(acked) and time.monotonic() < drain_until[0]

        def ws_reader():
            try:
                while more("ws"):
                    try:
                        m = ws.recv(0.5)
                    except AssertionError as e:
                        if "no WebSocket message" in str(e):
                            continue
                        raise
                    if m[0] != "text":
                        errors.append("ws got %r" % (m,))
                        return
                    j = json.loads(m[1])
                    received["ws"].append((j["id"], j["data"]))
            except Exception as e:  # reported by the main thread
                errors.append("ws reader: %r" % e)

        def sse_reader():
            try:
                while more("sse"):
                    try:
                        ev = sse.next_event(0.5)
                    except AssertionError as e:
                        if "no SSE event" in str(e):
                            continue
                        raise
                    received["sse"].append((ev["id"], ev["data"]))
            except Exception as e:
                errors.append("sse reader: %r" % e)

        def poll_reader():
            cursor = marker
            try:
                with RawConn.tcp(s.host, s.port, 15) as c:
                    while more("poll"):
                        r = c.get("/sub/loop?since=%s&timeout=1" % cursor)
                        if r.status != 200:
                            errors.append("poll: %r" % r)
                            return
                        j = r.json()
                        received["poll"].extend((m["id"], m["data"]) for m in j["messages"])
                        cursor = j["last_id"] or cursor
                        if r.closes():
                            errors.append("poll connection closed: %r" % r)
                            return
            except Exception as e:
                errors.append("poll reader: %r" % e)

        def publisher():
            try:
                with RawConn.tcp(s.host, s.port, 15) as c:
                    # Paced (about 1,000 a second at most) so that the
                    # count bound, a safety net, is far beyond the test's
                    # few seconds however fast publishes are acknowledged:
                    # an unpaced publisher once reached it mid-plan.
                    i = 0
                    while not stop.is_set() and i < 50000:
                        data = "m%d" % i
                        r = c.request("POST", "/pub/loop", body=data.encode())
                        if r.status != 200:
                            errors.append("publish %s: %r" % (data, r))
                            return
                        acked.append((r.json()["id"], data))
                        i += 1
                        time.sleep(0.001)
            except Exception as e:
                errors.append("publisher: %r" % e)
            finally:
                pub_done.set()

        threads = [threading.Thread(target=f, daemon=True)
                   for f in (ws_reader, sse_reader, poll_reader, publisher)]
        for t in threads:
            t.start()
        plan = [RELOAD_B, RELOAD_BROKEN, RELOAD_A, "syntax", RELOAD_B, RELOAD_BROKEN,
                RELOAD_A, "syntax", RELOAD_B, RELOAD_BROKEN]
        expect = "A"
        try:
            wait_until(lambda: len(acked) >= 20 or errors, what="first publishes")
            for src in plan:
                time.sleep(0.25)
                n = len(acked)
                ok = self.reload(s, src)
                self.assertEqual(ok, src in (RELOAD_A, RELOAD_B), src)
                if ok:
                    expect = "A" if src == RELOAD_A else "B"
                self.assertEqual(self.version(s), expect)
                # The publisher keeps being answered after each reload.
                wait_until(lambda: len(acked) > n + 5 or errors, what="publishes after reload")
                self.assertEqual(errors, [])
        finally:
            drain_until[0] = time.monotonic() + 15
            stop.set()
            for t in threads:
                t.join(25)
        self.assertEqual(errors, [])
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hangs")
        self.assertGreater(len(acked), 100)
        for name, got in received.items():
            with self.subTest(client=name):
                self.assertEqual(len(got), len(acked), "%s: %d of %d" % (name, len(got), len(acked)))
                self.assertEqual(got, acked)
        # WebSocket and SSE connections stayed open all along.
        self.assertIsNone(ws.closed)
        publish_after = http(s, "POST", "/pub/loop", b"last").json()["id"]
        self.assertEqual(ws.recv_json()["id"], publish_after)
        self.assertEqual(sse.next_event()["id"], publish_after)
        self.assertTrue(s.alive())

    def test_watch_reloads_on_edit(self):
        s = self.start(self.script, args=["--watch"])
        self.assertEqual(self.version(s), "A")
        mark = s.mark()
        self.install(RELOAD_B)
        s.wait_log(r"reloaded app", since=mark, timeout=15)
        self.assertEqual(self.version(s), "B")
        # A broken edit keeps B.
        mark = s.mark()
        self.install(RELOAD_BROKEN)
        s.wait_log(r"reload failed", since=mark, timeout=15)
        self.assertEqual(self.version(s), "B")
        # Editing in place (same inode, a write) is seen too.
        mark = s.mark()
        with open(RELOAD_A) as f:
            text = f.read()
        with open(self.script, "w") as f:
            f.write(text + "\n-- edited in place\n")
        s.wait_log(r"reloaded app", since=mark, timeout=15)
        self.assertEqual(self.version(s), "A")


if __name__ == "__main__":
    unittest.main()
