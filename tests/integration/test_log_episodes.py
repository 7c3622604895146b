"""Conditions that last are logged when they start and when they end, not
at every event they cause: a full disk (one error line however many
publishes it refuses, one line when space is back) and running out of file
descriptors ("accept paused" once, not ten times a second while accept
retries; "accept resumed" once).  The disk is made full with a file-size
limit and the descriptors short with a descriptor limit, both through
util-linux prlimit on the server process (and raised again on the running
process with prlimit --pid)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, SluiceTestCase


class LimitedServer(Server):
    def __init__(self, limits, **kw):
        super().__init__(**kw)
        self.limits = limits

    def command(self):
        return ["prlimit"] + self.limits + ["--"] + super().command()

    def set_limit(self, *limits):
        subprocess.run(["prlimit", "--pid", str(self.proc.pid)] + list(limits),
                       check=True, timeout=10)


def post(port, topic, body):
    req = urllib.request.Request("http://127.0.0.1:%d/topics/%s" % (port, topic),
                                 data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@unittest.skipUnless(shutil.which("prlimit"), "util-linux prlimit not installed")
class DiskFullLogTest(SluiceTestCase):
    def test_full_disk_logged_once_per_change(self):
        s = LimitedServer(["--fsize=%d:unlimited" % (3 * 1024 * 1024)], data_dir=self.tmpdir())
        s.start()
        self.addCleanup(s.stop)
        body = os.urandom(16 * 1024)
        for i in range(1000):  # bounded: the limit holds far fewer
            if post(s.port, "full", body + b"%d" % i) == 503:
                break
        else:
            self.fail("the disk never filled")
        s.wait_log(r" error storage refuses writes", timeout=10)
        more = [post(s.port, "full", body) for _ in range(50)]
        self.assertEqual(set(more), {503})
        s.wait_log(r"status=503", since=len(s.logs()) - 1, timeout=10)  # stderr caught up
        errors = [l for l in s.logs() if " error " in l]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("storage refuses writes", errors[0])
        # Space is back: the next publish passes, and that is logged once.
        s.set_limit("--fsize=unlimited:unlimited")
        deadline = time.monotonic() + 10
        while post(s.port, "full", b"again") != 200:
            self.assertLess(time.monotonic(), deadline, "no publish passed with space back")
            time.sleep(0.2)
        for _ in range(5):
            self.assertEqual(post(s.port, "full", b"ok"), 200)
        s.wait_log(r"storage takes writes again", timeout=10)
        s.wait_log(r"status=200", since=len(s.logs()) - 1, timeout=10)  # stderr caught up
        back = s.find_logs(r"storage takes writes again")
        self.assertEqual(len(back), 1, back)
        self.assertRegex(back[0], r"refused=\d+")
        self.assertEqual(len(s.find_logs(r" error storage refuses writes")), 1)


@unittest.skipUnless(shutil.which("prlimit"), "util-linux prlimit not installed")
class DescriptorLimitLogTest(SluiceTestCase):
    def test_accept_paused_logged_once_per_episode(self):
        s = LimitedServer(["--nofile=64"], data_dir=self.tmpdir())
        s.start()
        self.addCleanup(s.stop)
        socks = []
        self.addCleanup(lambda: [c.close() for c in socks])
        for _ in range(100):  # more than 64 descriptors' worth
            c = socket.create_connection((s.host, s.port), timeout=5)
            socks.append(c)
        s.wait_log(r"accept paused", timeout=10)
        time.sleep(2.0)  # accept retries every 100 ms meanwhile: 20 tries
        paused = s.find_logs(r"accept paused")
        self.assertEqual(len(paused), 1, paused)
        self.assertIn("error=", paused[0])
        for c in socks:
            c.close()
        socks.clear()
        # Descriptors freed: a new connection is served, and that is logged once.
        with socket.create_connection((s.host, s.port), timeout=10) as c:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            c.settimeout(10)
            got = b""
            while b"ok" not in got:
                part = c.recv(4096)
                if not part:
                    break
                got += part
        self.assertIn(b"200 OK", got)
        s.wait_log(r"accept resumed", timeout=10)
        self.assertEqual(len(s.find_logs(r"accept resumed")), 1)
        self.assertEqual(len(s.find_logs(r"accept paused")), 1)


if __name__ == "__main__":
    unittest.main()
