"""Lua routes: sluice.route with :param and * segments, the req fields,
plain and JSON responses, custom headers, 404/405, sluice.log, handler
errors (500 + traceback, server goes on) and the instruction budget."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, RawConn, app, build_request, curl)


class RoutesTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(app("routes.lua"))
        self.c = self.conn(self.s)

    def test_plain_route(self):
        r = curl(self.s.url("/ping"))
        self.assertEqual((r.rc, r.status, r.body), (0, 200, b"pong"), r)

    def test_param(self):
        r = self.c.get("/hello/alice")
        self.assertEqual((r.status, r.body), (200, b"hello alice"))

    def test_two_params(self):
        r = self.c.get("/rooms/lobby/users/bob")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"room": "lobby", "user": "bob"})

    def test_param_does_not_cross_segments(self):
        r = self.c.get("/hello/alice/extra")
        self.assertJsonError(r, 404)
        r = self.c.get("/hello/")
        self.assertIn(r.status, (404,), r)

    def test_splat(self):
        r = self.c.get("/files/a/b/c.txt")
        self.assertEqual((r.status, r.body), (200, b"a/b/c.txt"))
        r = self.c.get("/files/one")
        self.assertEqual((r.status, r.body), (200, b"one"))

    def test_query_not_part_of_route(self):
        r = self.c.get("/hello/bob?x=1")
        self.assertEqual((r.status, r.body), (200, b"hello bob"))

    def test_req_fields(self):
        r = self.c.request("POST", "/inspect?a=1&b=hello%20world&c=x+y&d=%E2%9C%93&empty=",
                           [("X-Mixed-Case", "Value One"), ("Content-Type", "text/plain")],
                           b"the body")
        self.assertEqual(r.status, 200, r)
        v = r.json()
        self.assertEqual(v["method"], "POST")
        self.assertEqual(v["path"], "/inspect")
        self.assertEqual(v["query"]["a"], "1")
        self.assertEqual(v["query"]["b"], "hello world")
        self.assertEqual(v["query"]["c"], "x y")
        self.assertEqual(v["query"]["d"], "\u2713")
        self.assertEqual(v["query"]["empty"], "")
        self.assertEqual(v["headers"]["x-mixed-case"], "Value One")
        self.assertEqual(v["headers"]["content-type"], "text/plain")
        self.assertEqual(v["headers"]["host"], "localhost")
        self.assertNotIn("X-Mixed-Case", v["headers"])
        self.assertEqual(v["body"], "the body")
        self.assertEqual(v["remote_addr"], "127.0.0.1:%d" % self.c.local_port())
        self.assertEqual(v["transport"], "http")

    def test_req_params_table(self):
        r = self.c.request("DELETE", "/inspect/42")
        self.assertEqual(r.status, 200, r)
        v = r.json()
        self.assertEqual(v["method"], "DELETE")
        self.assertEqual(v["params"], {"id": "42"})

    def test_req_query_empty_get(self):
        r = self.c.get("/inspect")
        self.assertEqual(r.status, 200, r)
        v = r.json()
        self.assertEqual(v["path"], "/inspect")
        self.assertEqual(v["body"], "")
        self.assertIn(v["query"], ({}, []))  # an empty Lua table

    def test_req_body_binary(self):
        body = bytes(range(256))
        r = self.c.request("POST", "/echo", body=body)
        self.assertEqual(r.body, body)
        self.assertEqual(r.header("content-type"), "application/octet-stream")
        r = self.c.request("PUT", "/echo", body=b"put-body")
        self.assertEqual(r.body, b"put-body")

    def test_json_response(self):
        r = self.c.get("/json")
        self.assertEqual(r.status, 201, r)
        self.assertIn("application/json", r.header("content-type"))
        self.assertEqual(r.json(), {"a": 1, "s": "x\"y", "list": [1, 2, 3],
                                    "nested": {"ok": True}})

    def test_json_encode_decode(self):
        r = self.c.get("/encode")
        self.assertEqual(r.json(), {"x": 1})
        r = self.c.request("POST", "/decode", body=json.dumps({"name": "zoe", "n": 7}))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"got": "zoe", "n": 7})

    def test_custom_headers(self):
        r = self.c.get("/custom")
        self.assertEqual((r.status, r.body), (202, b"custom"))
        self.assertEqual(r.header("x-custom"), "yes")
        self.assertEqual(r.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(len(r.header_all("content-type")), 1, r)

    def test_status_codes(self):
        for code in (200, 201, 299, 400, 403, 418, 503):
            r = self.c.get("/status/%d" % code)
            self.assertEqual(r.status, code, r)
            self.assertEqual(r.body, b"status %d" % code)

    def test_header_injection_blocked(self):
        r = self.c.get("/inject")
        self.assertIsNone(r.header("x-injected"), r)
        self.assertServes(self.s)

    def test_404(self):
        r = self.c.get("/no-such-path")
        self.assertJsonError(r, 404)
        r = self.c.request("POST", "/no-such-path", body=b"x")
        self.assertJsonError(r, 404)

    def test_405_with_allow(self):
        r = self.c.get("/only-post")
        self.assertJsonError(r, 405)
        allow = r.header("allow")
        self.assertIsNotNone(allow, r)
        self.assertIn("POST", [m.strip() for m in allow.split(",")])
        r = self.c.request("POST", "/only-post", body=b"")
        self.assertEqual((r.status, r.body), (200, b"posted"))

    def test_405_lists_all_methods(self):
        r = self.c.request("PATCH", "/echo", body=b"x")
        self.assertJsonError(r, 405)
        allow = [m.strip() for m in r.header("allow", "").split(",")]
        self.assertIn("POST", allow)
        self.assertIn("PUT", allow)

    def test_head_on_get_route(self):
        r = self.c.request("HEAD", "/json")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(self.c.get("/ping").body, b"pong")

    def test_sluice_log(self):
        mark = self.s.mark()
        r = self.c.get("/log?tag=abc123")
        self.assertEqual((r.status, r.body), (200, b"logged"))
        line = self.s.wait_log(r"marker-from-lua abc123", since=mark).string
        self.assertRegex(line, r"\bwarn")

    def test_access_log_line(self):
        mark = self.s.mark()
        self.c.get("/hello/logme")
        line = self.s.wait_log(r"path=/hello/logme", since=mark).string
        self.assertRegex(line, r"\baccess\b")
        self.assertRegex(line, r"\bmethod=GET\b")
        self.assertRegex(line, r"\bstatus=200\b")
        self.assertRegex(line, r"\bbytes=\d+")
        self.assertRegex(line, r"\bduration_ms=\d+(\.\d+)?")
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")
        self.c.request("POST", "/len", body=b"abc")
        line = self.s.wait_log(r"method=POST path=/len", since=mark).string
        self.assertRegex(line, r"\bstatus=200\b")
        self.c.get("/nowhere")
        self.s.wait_log(r"path=/nowhere.*status=404", since=mark)


class ScriptErrorTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(app("routes.lua"))

    def test_handler_error_500_traceback(self):
        c = self.conn(self.s)
        mark = self.s.mark()
        r = c.get("/error")
        self.assertJsonError(r, 500)
        self.assertNotIn(b"boom", r.body, "Lua error text leaked to the client")
        self.s.wait_log(r"boom in handler", since=mark)
        self.s.wait_log(r"stack traceback", since=mark)
        # logged at level error
        self.s.wait_log(r"^\S+ error\b.*boom in handler", since=mark)
        # same connection (unless the server chose to close it) and a new one
        if not r.closes():
            self.assertEqual(c.get("/ping").body, b"pong")
        self.assertServes(self.s)

    def test_other_errors_500(self):
        for path in ("/error-table", "/nil-index", "/bad-return"):
            with self.s.conn() as c:
                r = c.get(path)
                self.assertJsonError(r, 500)
        self.assertServes(self.s)

    def test_error_does_not_disturb_other_connections(self):
        other = self.conn(self.s)
        self.assertEqual(other.get("/ping").body, b"pong")
        for i in range(20):
            with self.s.conn() as c:
                self.assertEqual(c.get("/error").status, 500)
        self.assertEqual(other.get("/hello/x").body, b"hello x")

    def test_runaway_stopped_500(self):
        other = self.conn(self.s)
        self.assertEqual(other.get("/ping").body, b"pong")
        c = self.conn(self.s, timeout=60)
        mark = self.s.mark()
        r = c.get("/runaway")
        self.assertJsonError(r, 500)
        self.assertEqual(other.get("/ping").body, b"pong")
        self.assertServes(self.s)
        # the runaway is logged at level error, naming the budget as the
        # reason (not some other failure on the way)
        line = self.s.wait_log(r"^\S+ error\b.*(budget|instruction)", since=mark).string
        self.assertNotIn("invalid option", line)
        self.assertIn("routes.lua:", line)

    def test_runaway_pipelined_with_others(self):
        c = self.conn(self.s, timeout=60)
        c.send(build_request("GET", "/hello/a") + build_request("GET", "/runaway") +
               build_request("GET", "/hello/b"))
        self.assertEqual(c.read_response().body, b"hello a")
        r = c.read_response()
        self.assertEqual(r.status, 500)
        if not r.closes():
            self.assertEqual(c.read_response().body, b"hello b")

    def test_loop_within_budget(self):
        c = self.conn(self.s)
        r = c.get("/loop/100000")
        self.assertEqual((r.status, r.body), (200, b"5000050000"))


if __name__ == "__main__":
    unittest.main()
