"""SIGHUP reloads the app script atomically: a good script replaces the
routes for the next requests without dropping connections; a script that
fails to load (syntax error, error at load, missing file) leaves the old one
serving and logs why with file:line."""

import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, build_request

APP_V = """local sluice = require "sluice"
sluice.route("GET", "/version", function(req) return 200, "%s" end)
sluice.route("GET", "/ping", function(req) return 200, "pong" end)
%s
"""

SYNTAX_ERROR = """local sluice = require "sluice"
sluice.route("GET", "/version", function(req) return 200, "broken" end)

local x = = 1
"""

LOAD_ERROR = """local sluice = require "sluice"
sluice.route("GET", "/version", function(req) return 200, "broken" end)
error("failing at load")
"""


class ReloadTest(SluiceTestCase):
    def setUp(self):
        self.dir = self.tmpdir()
        self.path = os.path.join(self.dir, "app.lua")
        self.write(APP_V % ("v1", ""))
        self.s = self.start(self.path)

    def write(self, text):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)

    def version(self, c=None):
        if c is None:
            with self.s.conn() as c2:
                r = c2.get("/version")
        else:
            r = c.get("/version")
        self.assertEqual(r.status, 200, r)
        return r.body

    def reload(self, expect):
        mark = self.s.mark()
        self.s.signal(signal.SIGHUP)
        return self.s.wait_log(expect, since=mark).string

    def test_good_reload(self):
        keep = self.conn(self.s)
        self.assertEqual(self.version(keep), b"v1")
        self.write(APP_V % ("v2", 'sluice.route("GET", "/new", function() return 200, "new" end)'))
        self.reload(r"reloaded")
        self.assertEqual(self.version(), b"v2")
        # the keep-alive connection survived and sees the new app
        self.assertEqual(self.version(keep), b"v2")
        self.assertEqual(keep.get("/new").body, b"new")

    def test_removed_route_gone_after_reload(self):
        self.write(APP_V % ("v2", 'sluice.route("GET", "/extra", function() return 200, "x" end)'))
        self.reload(r"reloaded")
        with self.s.conn() as c:
            self.assertEqual(c.get("/extra").status, 200)
        self.write(APP_V % ("v3", ""))
        self.reload(r"reloaded")
        with self.s.conn() as c:
            self.assertEqual(c.get("/extra").status, 404)

    def test_syntax_error_keeps_old(self):
        keep = self.conn(self.s)
        self.assertEqual(self.version(keep), b"v1")
        self.write(SYNTAX_ERROR)
        line = self.reload(r"reload failed")
        text = "\n".join(self.s.find_logs(r"app\.lua:\d+"))
        self.assertRegex(line + "\n" + text, r"app\.lua:4\b")
        self.assertEqual(self.version(), b"v1")
        self.assertEqual(self.version(keep), b"v1")
        self.assertTrue(self.s.alive())

    def test_load_error_keeps_old(self):
        self.write(LOAD_ERROR)
        line = self.reload(r"reload failed")
        text = line + "\n" + "\n".join(self.s.find_logs(r"app\.lua:\d+"))
        self.assertRegex(text, r"app\.lua:3\b")
        self.assertIn("failing at load", "\n".join(self.s.logs()))
        self.assertEqual(self.version(), b"v1")

    def test_missing_file_keeps_old(self):
        os.unlink(self.path)
        self.reload(r"reload failed")
        self.assertEqual(self.version(), b"v1")

    def test_good_after_broken(self):
        self.write(SYNTAX_ERROR)
        self.reload(r"reload failed")
        self.write(APP_V % ("v3", ""))
        self.reload(r"reloaded")
        self.assertEqual(self.version(), b"v3")

    def test_many_reloads_while_serving(self):
        keep = self.conn(self.s)
        for i in range(10):
            self.write(APP_V % ("r%d" % i, ""))
            self.reload(r"reloaded")
            self.assertEqual(self.version(keep), b"r%d" % i)
        self.assertTrue(self.s.alive())

    def test_reload_during_pipelined_requests(self):
        # every request is served by one whole app, never a mix or nothing
        c = self.conn(self.s)
        self.write(APP_V % ("v2", ""))
        c.send(build_request("GET", "/version") * 50)
        self.s.signal(signal.SIGHUP)
        for i in range(50):
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertIn(r.body, (b"v1", b"v2"))
        self.s.wait_log(r"reloaded")
        self.assertEqual(self.version(), b"v2")


if __name__ == "__main__":
    unittest.main()
