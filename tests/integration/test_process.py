"""Process: flags (SPEC.md's table), --check, -V/-h, bad flags, port 0 and
the listening line, script settings overridden by flags, graceful
SIGTERM/SIGINT with an answer in flight, text and JSON logs."""

import json
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, Server, ServerError, RawConn, app, build_request, curl,
                     free_port, run_sluice, BIN, SOURCE_DIR)

GOOD = """local sluice = require "sluice"
sluice.route("GET", "/ping", function(req) return 200, "pong" end)
"""

SYNTAX_ERROR = """local sluice = require "sluice"

sluice.route("GET", "/ping", function(req)
  return 200, "pong"
end

local y = 2
"""

LOAD_ERROR = """local sluice = require "sluice"
sluice.route("GET", "/ping", function(req) return 200, "pong" end)
local t = nil
local z = t.field
"""


class CommandLineTest(SluiceTestCase):
    def script(self, text, name="app.lua"):
        p = os.path.join(self.tmpdir(), name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_version(self):
        for flag in ("-V", "--version"):
            rc, out, err = run_sluice([flag])
            self.assertEqual(rc, 0, out + err)
            self.assertRegex(out + err, r"\d+\.\d+")

    def test_help(self):
        for flag in ("-h", "--help"):
            rc, out, err = run_sluice([flag])
            self.assertEqual(rc, 0, out + err)
            text = out + err
            for opt in ("--listen", "--tls-listen", "--tls-cert", "--tls-key", "--data",
                        "--workers", "--check", "--log-level", "--log-format"):
                self.assertIn(opt, text)

    def test_bad_flag_exits_1(self):
        rc, out, err = run_sluice(["--no-such-flag"])
        self.assertEqual(rc, 1, out + err)
        self.assertTrue((out + err).strip(), "no message for a bad flag")

    def test_bad_flag_values_exit_1(self):
        d = self.tmpdir()
        for args in (["-l", "not-an-address"], ["-l", "127.0.0.1:99999"],
                     ["--log-format", "xml"], ["--log-level", "loud"],
                     ["--workers", "zero"], ["-l"]):
            rc, out, err = run_sluice(args + ["-d", d])
            self.assertEqual(rc, 1, "%r: rc=%s %s" % (args, rc, out + err))

    def test_check_good(self):
        rc, out, err = run_sluice(["--check", self.script(GOOD)])
        self.assertEqual(rc, 0, out + err)
        rc, out, err = run_sluice(["--check", app("routes.lua")])
        self.assertEqual(rc, 0, out + err)

    def test_check_default_app(self):
        rc, out, err = run_sluice(["--check", os.path.join(SOURCE_DIR, "scripts", "default.lua")])
        self.assertEqual(rc, 0, out + err)

    def test_check_syntax_error(self):
        p = self.script(SYNTAX_ERROR, "bad_syntax.lua")
        rc, out, err = run_sluice(["--check", p])
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(out + err, r"bad_syntax\.lua:\d+")

    def test_check_load_error(self):
        p = self.script(LOAD_ERROR, "bad_load.lua")
        rc, out, err = run_sluice(["--check", p])
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(out + err, r"bad_load\.lua:4\b")

    def test_check_missing_file(self):
        p = os.path.join(self.tmpdir(), "missing.lua")
        rc, out, err = run_sluice(["--check", p])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("missing.lua", out + err)

    def test_start_with_broken_script_exits_1(self):
        p = self.script(SYNTAX_ERROR, "bad_start.lua")
        rc, out, err = run_sluice(["-l", "127.0.0.1:0", "-d", self.tmpdir(), p])
        self.assertEqual(rc, 1, out + err)
        self.assertRegex(out + err, r"bad_start\.lua:\d+")

    def test_start_with_missing_script_exits_1(self):
        p = os.path.join(self.tmpdir(), "nope.lua")
        rc, out, err = run_sluice(["-l", "127.0.0.1:0", "-d", self.tmpdir(), p])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("nope.lua", out + err)

    def test_port_in_use_exits_1(self):
        s = self.start(app("routes.lua"))
        rc, out, err = run_sluice(["-l", "127.0.0.1:%d" % s.port, "-d", self.tmpdir(),
                                   app("routes.lua")])
        self.assertEqual(rc, 1, out + err)


class FlagsTest(SluiceTestCase):
    def test_long_listen_and_data_flags(self):
        d = self.tmpdir()
        s = self.start(app("routes.lua"), listen=[],
                       args=["--listen", "127.0.0.1:0", "--data", os.path.join(d, "x")],
                       expect_listeners=1)
        self.assertServes(s)
        self.assertStopsCleanly(s)

    def test_workers_accepted(self):
        for args in (["-w", "2"], ["--workers", "1"]):
            s = self.start(app("routes.lua"), args=args)
            for i in range(5):
                self.assertServes(s)
            self.assertStopsCleanly(s)

    def test_log_level_debug_accepted(self):
        s = self.start(app("routes.lua"), args=["--log-level", "debug"])
        self.assertServes(s)

    def test_log_level_warn_hides_access_lines(self):
        port = free_port()
        s = Server(app("routes.lua"), listen=["127.0.0.1:%d" % port],
                   args=["--log-level", "warn"], expect_listeners=0)
        self.addCleanup(s.kill)
        s.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                c = RawConn.tcp("127.0.0.1", port)
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, s.log_text())
                time.sleep(0.1)
        with c:
            self.assertEqual(c.get("/hello/quiet").status, 200)
            self.assertEqual(c.get("/log?tag=loud").status, 200)
        s.wait_log(r"marker-from-lua loud")
        self.assertEqual(s.find_logs(r"/hello/quiet"), [], s.log_text())

    def test_flags_override_script_listen(self):
        # the script asks for two listeners; -l overrides with one
        s = self.start(app("config_listen.lua"), listen=["127.0.0.1:0"])
        self.assertServes(s)
        self.assertEqual(len(s.find_logs(r"listening on")), 1, s.log_text())

    def test_script_listen_used_without_flag(self):
        s = self.start(app("config_listen.lua"), listen=[], expect_listeners=2)
        for h, p, t in s.listeners:
            with RawConn.tcp(h, p) as c:
                self.assertEqual(c.get("/ping").body, b"pong")

    def test_listening_line_port_is_real(self):
        s = self.start(app("routes.lua"))
        self.assertNotEqual(s.port, 0)
        s.wait_log(r"listening on 127\.0\.0\.1:%d\b" % s.port)
        self.assertServes(s)


class ShutdownTest(SluiceTestCase):
    def test_sigterm_exit_0(self):
        s = self.start(app("routes.lua"))
        self.assertServes(s)
        self.assertStopsCleanly(s, signal.SIGTERM)

    def test_sigint_exit_0(self):
        s = self.start(app("routes.lua"))
        self.assertServes(s)
        self.assertStopsCleanly(s, signal.SIGINT)

    def test_sigterm_idle_keepalive_connections(self):
        s = self.start(app("routes.lua"))
        conns = []
        for i in range(5):
            c = self.conn(s)
            self.assertEqual(c.get("/ping").status, 200)
            conns.append(c)
        self.assertStopsCleanly(s)
        for c in conns:
            c.wait_closed(5)

    def test_sigterm_default_app(self):
        s = self.start()
        r = curl(s.url("/healthz"))
        self.assertEqual(r.status, 200, r)
        self.assertStopsCleanly(s)

    def test_signals_right_after_listening_line(self):
        # the listening line tells tests and supervisors the server is up:
        # a signal sent just after it must get the documented behaviour
        for i in range(5):
            s = self.start(app("routes.lua"), ready_probe=False)
            s.signal(signal.SIGHUP)
            try:
                s.wait_log(r"reload")
            except ServerError:
                self.fail("SIGHUP sent just after the listening line: no reload "
                          "(exit code %s):\n%s" % (s.proc.poll(), s.log_text()))
            self.assertServes(s)
            self.assertStopsCleanly(s)
        for i in range(5):
            s = self.start(app("routes.lua"), ready_probe=False)
            self.assertStopsCleanly(s)

    def test_sigterm_with_a_publish_in_the_last_pass_relaxed(self):
        """With relaxed durability each worker commits its own publishes at
        the end of a loop pass.  A timer that publishes every millisecond
        makes a publish in the pass that ends the loop at SIGTERM: the
        worker must still commit and answer it and exit at once (it used to
        wait in the loop for a wake that never came), and every publish
        the timer made must be stored, in order."""
        d = self.tmpdir()
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write('local sluice = require "sluice"\n'
                    'sluice.config{ storage = { durability = "relaxed" } }\n'
                    'local n = 0\n'
                    'sluice.every(0.001, function()\n'
                    '  n = n + 1\n'
                    '  sluice.publish("ticks", tostring(n))\n'
                    'end)\n')
        data = os.path.join(d, "data")
        for _ in range(3):
            s = self.start(path, args=["-w", "1"], data_dir=data)
            time.sleep(0.2)
            s.signal(signal.SIGTERM)
            self.assertEqual(s.wait_exit(timeout=5), 0, s.log_text())
        s2 = self.start(data_dir=data)
        r = curl(s2.url("/topics/ticks?last_event_id=0-0&timeout=0&limit=1000"))
        self.assertEqual(r.status, 200, r)
        got = [int(m["data"]) for m in json.loads(r.body)["messages"]]
        # Three runs, each counting from 1 with nothing missing.
        starts = [i for i, v in enumerate(got) if v == 1] + [len(got)]
        self.assertEqual(len(starts), 4, got)
        for a, b in zip(starts, starts[1:]):
            self.assertEqual(got[a:b], list(range(1, b - a + 1)), got)

    def test_sigterm_answer_in_flight_finishes(self):
        s = self.start(app("routes.lua"))
        c = self.conn(s, timeout=30)
        c.send(build_request("GET", "/big"))
        version, status, reason, headers, raw = c.read_head()
        self.assertEqual(status, 200)
        length = int(dict((k.lower(), v) for k, v in headers)["content-length"])
        got = len(c.buf)
        # the answer is far bigger than the socket buffers: still in flight
        s.signal(signal.SIGTERM)
        time.sleep(0.3)
        body = c.read_exact(length)
        self.assertEqual(len(body), 32 * 1024 * 1024)
        self.assertEqual(body[-16:], b"0123456789abcdef")
        rc = s.wait_exit()
        self.assertEqual(rc, 0, s.log_text())

    def test_sigterm_stops_accepting(self):
        s = self.start(app("routes.lua"))
        port = s.port
        self.assertStopsCleanly(s)
        with self.assertRaises(OSError):
            with RawConn.tcp("127.0.0.1", port, timeout=2) as c:
                c.get("/ping")


class LogFormatTest(SluiceTestCase):
    def test_text_access_line(self):
        s = self.start(app("routes.lua"))
        with s.conn() as c:
            c.get("/hello/text")
        line = s.wait_log(r"path=/hello/text").string
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z info access ")
        for f in (r"method=GET", r"status=200", r"bytes=\d+", r"duration_ms=[\d.]+",
                  r"remote=127\.0\.0\.1:\d+"):
            self.assertRegex(line, r"\b" + f)

    def test_json_logs(self):
        s = self.start(app("routes.lua"), log_format="json")
        with s.conn() as c:
            c.get("/hello/json")
            c.request("POST", "/echo", body=b"12345")
            c.get("/missing")
            c.get("/log?tag=j")
            c.get("/error")
        s.wait_log(r"/error")
        s.wait_log(r"/log")
        recs = s.json_logs()  # every line is JSON
        for rec in recs:
            self.assertIsInstance(rec, dict)
            for k in ("ts", "level", "msg"):
                self.assertIn(k, rec, rec)
        access = [r for r in recs if "path" in r and "status" in r]
        by_path = {r["path"]: r for r in access}
        a = by_path["/hello/json"]
        self.assertEqual(a["method"], "GET")
        self.assertEqual(a["status"], 200)
        self.assertIsInstance(a["bytes"], int)
        self.assertIsInstance(a["duration_ms"], (int, float))
        self.assertEqual(by_path["/echo"]["method"], "POST")
        self.assertEqual(by_path["/missing"]["status"], 404)
        self.assertEqual(by_path["/error"]["status"], 500)
        self.assertTrue(any("marker-from-lua j" in r.get("msg", "") for r in recs), recs)
        errs = [r for r in recs if r["level"] == "error"]
        self.assertTrue(errs, recs)
        self.assertTrue(any("stack traceback" in json.dumps(r) for r in errs), errs)
        self.assertTrue(any("listening on 127.0.0.1:" in json.dumps(r) for r in recs))


if __name__ == "__main__":
    unittest.main()
