"""The budgets of script code can't be beaten from Lua (issue 25, items 7
to 9): the instruction budget, the wall-clock deadline and the memory
limit stop a script however it catches their errors (pcall, xpcall,
coroutines, error handlers, to-be-closed variables, debug.sethook), in every
place script code runs (handlers, filters, on_message, on_close, timers,
on_publish, top-level code at start, --check and reload), and the worker
goes on serving.

Why it is shaped so: apps/lua_budget.lua has one route per way of trying;
each test makes the request, expects the documented answer within a bound
well under the client's timeout, and then asks /healthz on the same (only)
worker: a worker stuck in a loop would not answer it.

Run: /usr/bin/python3 tests/integration/test_lua_budget.py [-v] [Class.test]
"""

import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, SluiceTestCase, app, run_sluice
from test_lua_api import SSE, WS, http, wait_until

APP = app("lua_budget.lua")

# Ways the app's /spin/:shape tries to go on past an overrun.
SHAPES = ["pcall", "nested", "xpcall", "coroutine", "resume", "load", "gsub", "sort",
          "sethook", "wrap_close", "close", "move", "rep"]

# An answer within this many seconds means the budget stopped the script
# (the app's budget is 2 million instructions and 0.5 s per run).
PROMPT = 5.0


class BudgetCase(SluiceTestCase):
    def setUp(self):
        self.s = self.start(APP)

    def healthy(self):
        r = http(self.s, "GET", "/healthz", timeout=PROMPT)
        self.assertEqual((r.status, r.body), (200, b"ok"))

    def timed(self, method, path, body=None):
        t0 = time.monotonic()
        r = http(self.s, method, path, body, timeout=PROMPT * 2)
        return r, time.monotonic() - t0

    def assertStopped(self, path, log, method="GET", body=None):
        mark = self.s.mark()
        r, took = self.timed(method, path, body)
        self.assertEqual(r.status, 500, r)
        self.assertLess(took, PROMPT, path)
        self.s.wait_log(log, since=mark)
        self.healthy()
        return took


class HandlerTest(BudgetCase):
    def test_each_shape_is_stopped(self):
        for shape in SHAPES:
            with self.subTest(shape=shape):
                self.assertStopped("/spin/" + shape,
                                   r"script stopped: instruction budget exceeded")

    def test_dead_coroutine_closed_later(self):
        """A coroutine the overrun killed, kept in a variable and closed by
        the next request: its looping __close handler never runs."""
        self.assertStopped("/spin/keep_dead", r"instruction budget exceeded")
        self.assertStopped("/spin/close_dead", r"instruction budget exceeded")

    def test_deadline_stops_long_c_calls(self):
        """Few instructions, each long (comparing two 2 MiB strings): only
        the wall-clock deadline (0.5 s here) stops it."""
        took = self.assertStopped("/slow_c", r"script stopped: time limit exceeded")
        self.assertGreater(took, 0.4)

    def test_quadratic_pattern_stopped(self):
        """A quadratic pattern on a 60 KB body: the matcher's steps count
        as instructions, so the budget stops it (Lua's own matcher ran
        8 s here); a linear pattern on the same body passes."""
        body = b"a" * 60000
        took = self.assertStopped("/quadratic", r"instruction budget exceeded",
                                  method="POST", body=body)
        self.assertLess(took, 1.0)
        r = http(self.s, "POST", "/linear", body)
        self.assertEqual((r.status, r.body), (200, b"60000"))

    def test_finalizers_and_hook_out_of_reach(self):
        r = http(self.s, "GET", "/gc/finalizer")
        # setmetatable with __gc refused, the file and req metatables
        # hidden, debug.getregistry refused
        self.assertEqual(r.body, b"false false false false")

    def test_subscribe_options_with_raising_index(self):
        r = http(self.s, "GET", "/metaopts/mo?timeout=0")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(http(self.s, "GET", "/healthz").status, 200)

    def test_bytecode_refused(self):
        r = http(self.s, "GET", "/bytecode")
        f, err, g, err2 = r.body.decode().split("|")
        self.assertEqual(f, "nil")
        self.assertIn("binary chunk", err)
        self.assertEqual((g, err2), ("2", "nil"))  # text chunks still load


class CallbackTest(BudgetCase):
    def test_timer(self):
        for shape in ("pcall", "xpcall", "coroutine"):
            mark = self.s.mark()
            self.assertEqual(http(self.s, "GET", "/timer/" + shape).status, 200)
            self.s.wait_log(r"instruction budget exceeded", since=mark, timeout=PROMPT)
            self.healthy()

    def test_on_publish(self):
        for shape in ("pcall", "xpcall"):
            self.assertStopped("/pub/spin." + shape, r"instruction budget exceeded",
                               method="POST", body=b"x")

    def test_filter(self):
        sse = SSE.connect(self, self.s, "/sub/f?where=filter&shape=pcall")
        mark = self.s.mark()
        r, took = self.timed("POST", "/pub/f", b"x")
        self.assertEqual(r.status, 200, r)
        self.s.wait_log(r"instruction budget exceeded .*callback=filter", since=mark,
                        timeout=PROMPT)
        self.healthy()

    def test_on_message(self):
        ws = WS.connect(self, self.s, "/sub/m?where=on_message&shape=xpcall")
        mark = self.s.mark()
        ws.send_text("hello")
        self.assertEqual(ws.recv_close(timeout=PROMPT)[0], 1011)
        self.s.wait_log(r"instruction budget exceeded .*callback=on_message", since=mark)
        self.healthy()

    def test_on_close(self):
        ws = WS.connect(self, self.s, "/sub/c?where=on_close&shape=nested")
        mark = self.s.mark()
        ws.close()
        self.s.wait_log(r"instruction budget exceeded .*callback=on_close", since=mark,
                        timeout=PROMPT)
        self.healthy()


class MemoryTest(BudgetCase):
    def test_growth_refused(self):
        """The handler grows toward 100 MiB; the app's limit is 16 MiB."""
        before = self.s.mark()
        self.assertStopped("/grow", r"script stopped: memory limit exceeded")
        # its garbage is collected: the next request has room
        r = http(self.s, "GET", "/gc/garbage")
        self.assertEqual(r.status, 200, r)
        self.assertLess(int(r.body), 16 * 1024 * 1024)

    def test_collector_cannot_be_stopped(self):
        r = http(self.s, "GET", "/gc/stop")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.body.startswith(b"false false"), r.body)
        self.assertIn(b"'stop' is not allowed", r.body)
        # 80 MiB of garbage later, the heap is still small
        for _ in range(20):
            r = http(self.s, "GET", "/gc/garbage")
            self.assertEqual(r.status, 200, r)
        self.assertLess(int(r.body), 16 * 1024 * 1024)


TOP_LOOP = """local sluice = require "sluice"
sluice.route("GET", "/v", function() return 200, "%s" end)
%s
"""

LOOPS = {
    "pcall": "while true do pcall(function() while true do end end) end",
    "xpcall": "while true do xpcall(function() while true do end end, "
              "function() while true do end end) end",
    "deadline": 'local s, t = string.rep("x", 2 * 1024 * 1024), string.rep("x", 2 * 1024 * 1024)\n'
                'local same = 0\n'
                'for _ = 1, 1e8 do if s == t then same = same + 1 end end',
}


class TopLevelTest(SluiceTestCase):
    def script(self, text):
        d = self.tmpdir()
        path = os.path.join(d, "app.lua")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_returns_promptly(self):
        """--check on a looping chunk exits 1 with the reason; the load's
        deadline is 5 s, so the C-call loop takes that long."""
        for name, loop in LOOPS.items():
            with self.subTest(loop=name):
                path = self.script(TOP_LOOP % ("x", loop))
                t0 = time.monotonic()
                rc, out, err = run_sluice(["--check", path], timeout=30)
                took = time.monotonic() - t0
                self.assertEqual(rc, 1, err)
                self.assertRegex(err, r"instruction budget exceeded|time limit exceeded")
                self.assertLess(took, 8.0)

    def test_reload_with_looping_script_keeps_old_app(self):
        path = self.script(TOP_LOOP % ("v1", ""))
        s = self.start(path, args=["-w", "2"])
        for name in ("pcall", "xpcall"):
            with open(path, "w") as f:
                f.write(TOP_LOOP % ("v2", LOOPS[name]))
            mark = s.mark()
            s.signal(signal.SIGHUP)
            s.wait_log(r"reload failed", since=mark, timeout=PROMPT)
            with s.conn() as c:
                self.assertEqual(c.get("/v").body, b"v1")
        # the main thread is free: SIGTERM still stops the server
        mark = s.mark()
        with open(path, "w") as f:
            f.write(TOP_LOOP % ("v2", LOOPS["pcall"]))
        s.signal(signal.SIGHUP)
        time.sleep(0.1)
        self.assertEqual(s.stop(timeout=PROMPT * 2), 0)


if __name__ == "__main__":
    unittest.main()
