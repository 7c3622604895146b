"""Deployment (issue 30 #4): `cmake --install` puts the binary, the
default app, the man page sluice(1) (generated from docs/sluice.1.md, and
clean for groff) and deploy/ in place; the installed sluice.service names the installed
binary, passes `systemd-analyze verify` (dev.sh installs systemd and
groff-base for these checks), is hardened, and its command line is one
sluice accepts; the
Grafana dashboard's queries name only series that the admin /metrics
serves."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, SOURCE_DIR, RawConn, SluiceTestCase

BUILD_DIR = os.path.dirname(os.path.abspath(BIN))
UNIT = os.path.join(SOURCE_DIR, "deploy", "sluice.service")


class InstallTest(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.prefix = tempfile.mkdtemp(prefix="sluice-install-")
        p = subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", cls.prefix],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError("cmake --install failed:\n" + p.stdout + p.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.prefix, True)

    def path(self, *parts):
        return os.path.join(self.prefix, *parts)

    def test_files(self):
        exe = self.path("bin", "sluice")
        self.assertTrue(os.access(exe, os.X_OK))
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^sluice \d+\.\d+\.\d+")
        with open(self.path("share", "sluice", "default.lua"), "rb") as a, \
                open(os.path.join(SOURCE_DIR, "scripts", "default.lua"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        for f in ("sluice.service", "sluice.json"):
            self.assertTrue(os.path.exists(self.path("share", "sluice", "deploy", f)), f)

    def test_man_page(self):
        man = self.path("share", "man", "man1", "sluice.1")
        with open(man) as f:
            roff = f.read()
        self.assertTrue(roff.startswith(".TH SLUICE 1 "), roff[:80])
        for flag in ("admin\\-listen", "admin\\-token\\-file", "log\\-format", "SIGHUP"):
            self.assertIn(flag, roff)
        self.assertIn("share/sluice/default.lua", roff)
        if shutil.which("groff"):
            p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", man],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual((p.returncode, p.stderr), (0, ""))
        else:
            self.fail("groff not installed (dev.sh test_deps: groff-base)")
        # Every flag of --help is in the page.
        help_text = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
        for flag in re.findall(r"--[a-z][a-z-]+", help_text):
            self.assertIn(flag.replace("-", "\\-"), roff, flag)

    def test_systemd_unit(self):
        path = self.path("share", "sluice", "deploy", "sluice.service")
        with open(path) as f:
            text = f.read()
        # The installed copy is the repo's with ExecStart on the installed
        # binary (the install's --prefix, not the configured one).
        with open(UNIT) as f:
            self.assertEqual(text, f.read().replace("/usr/local/bin/sluice", self.path("bin", "sluice")))
        self.assertIn("ExecStart=%s " % self.path("bin", "sluice"), text)
        for directive in ("DynamicUser=yes", "StateDirectory=sluice", "LimitNOFILE=",
                          "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                          "CapabilityBoundingSet=", "SystemCallFilter=@system-service",
                          "RestrictAddressFamilies=", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(directive, text)
        # Its command line is one sluice takes (checked with --check, on
        # the built-in app since /etc/sluice/app.lua is not here).
        exec_line = re.search(r"^ExecStart=(.*)$", text, re.M).group(1).split()
        args = [a for a in exec_line[1:] if not a.endswith(".lua")]
        args = [self.tmpdir() if a == "/var/lib/sluice" else a for a in args]
        p = subprocess.run([BIN] + args + ["--check"], capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        analyze = shutil.which("systemd-analyze")
        self.assertTrue(analyze, "systemd-analyze not installed (dev.sh test_deps: systemd)")
        env = dict(os.environ, MANPATH=self.path("share", "man") + ":")
        p = subprocess.run([analyze, "verify", path], capture_output=True, text=True,
                           timeout=60, env=env)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_grafana_dashboard(self):
        with open(os.path.join(SOURCE_DIR, "deploy", "grafana", "sluice.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertGreater(len(exprs), 10)
        names = set()
        for e in exprs:
            names.update(n for n in re.findall(r"\b(sluice_[a-z0-9_]+)", e))
        srv = self.start(args=["--admin-listen", "127.0.0.1:0"], expect_listeners=2)
        m = re.search(r"admin listening on ([0-9.]+):(\d+)", srv.log_text())
        with RawConn.tcp(m.group(1), int(m.group(2))) as c:
            body = c.get("/metrics").text
        served = set(re.findall(r"^# TYPE (\S+)", body, re.M))
        for n in names:
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            self.assertTrue(n in served or base in served, "%s is not in /metrics" % n)


if __name__ == "__main__":
    unittest.main()
