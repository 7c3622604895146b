"""TLS: --tls-listen/--tls-cert/--tls-key, curl --cacert, openssl s_client
(ALPN h2 first, then http/1.1; TLS 1.2 and 1.3 accepted, 1.1 refused, TLS 1.2 only with
forward-secret AEAD suites), the handshake
timeout, and SIGHUP reloading the certificate for new connections while
open ones go on."""

import hashlib
import os
import re
import shutil
import signal
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SluiceTestCase, RawConn, app, build_request, curl,
                     make_cert, cert_der, run, run_sluice, insecure_tls_context)


def s_client(port, *args, request=None, timeout=20):
    """Run openssl s_client against 127.0.0.1:PORT; returns (rc, output)."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
           "-servername", "localhost"] + list(args)
    inp = b""
    if request is not None:
        # -ign_eof: keep reading the answer after stdin ends
        cmd.append("-ign_eof")
        inp = request
    p = run(cmd, timeout=timeout, input=inp)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


class TlsTest(SluiceTestCase):
    def setUp(self):
        self.dir = self.tmpdir()
        self.cert, self.key = make_cert(self.dir)
        self.s = self.start(app("tls.lua"), listen=["127.0.0.1:0"],
                            tls_listen=["127.0.0.1:0"],
                            args=["--tls-cert", self.cert, "--tls-key", self.key])

    def tls_conn(self, **kw):
        c = RawConn.tls("127.0.0.1", self.s.tls_port, **kw)
        self.addCleanup(c.close)
        return c

    def test_listening_lines(self):
        kinds = sorted(t for h, p, t in self.s.listeners)
        self.assertEqual(kinds, [False, True], self.s.log_text())
        self.assertNotEqual(self.s.port, self.s.tls_port)

    def test_curl_cacert(self):
        r = curl("https://localhost:%d/ping" % self.s.tls_port, "--cacert", self.cert,
                 "--resolve", "localhost:%d:127.0.0.1" % self.s.tls_port)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual((r.status, r.body), (200, b"pong"), r)

    def test_curl_ip_address(self):
        r = curl("https://127.0.0.1:%d/ping" % self.s.tls_port, "--cacert", self.cert)
        self.assertEqual((r.rc, r.status, r.body), (0, 200, b"pong"), r)

    def test_curl_rejects_unknown_ca(self):
        # sanity check of the test itself: verification really happens
        r = curl("https://127.0.0.1:%d/ping" % self.s.tls_port)
        self.assertNotEqual(r.rc, 0, r)

    def test_plain_listener_still_plain(self):
        r = curl(self.s.url("/ping"))
        self.assertEqual((r.status, r.body), (200, b"pong"), r)
        r = curl(self.s.url("/transport"))
        self.assertEqual(r.body, b"longpoll", r)  # a plain GET (see req.transport)

    def test_alpn_http11(self):
        rc, out = s_client(self.s.tls_port, "-alpn", "http/1.1")
        self.assertIn("ALPN protocol: http/1.1", out)

    def test_alpn_h2_selected(self):
        """HTTP/2 is offered first (test_h2.py covers it)."""
        rc, out = s_client(self.s.tls_port, "-alpn", "h2")
        self.assertIn("ALPN protocol: h2", out)
        self.assertServes(self.s)

    def test_alpn_python(self):
        ctx = insecure_tls_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        c = self.tls_conn(context=ctx)
        self.assertEqual(c.sock.selected_alpn_protocol(), "h2")
        c.close()
        ctx = insecure_tls_context()
        ctx.set_alpn_protocols(["http/1.1"])
        c = self.tls_conn(context=ctx)
        self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_tls13(self):
        rc, out = s_client(self.s.tls_port, "-tls1_3",
                           request=b"GET /ping HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Connection: close\r\n\r\n")
        self.assertRegex(out, r"TLSv1\.3")
        self.assertIn("pong", out)

    def test_tls12(self):
        rc, out = s_client(self.s.tls_port, "-tls1_2",
                           request=b"GET /ping HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Connection: close\r\n\r\n")
        self.assertRegex(out, r"Protocol\s*:\s*TLSv1\.2")
        self.assertIn("pong", out)

    def test_tls_versions_python(self):
        for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                        (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            ctx = insecure_tls_context()
            ctx.minimum_version = v
            ctx.maximum_version = v
            c = self.tls_conn(context=ctx)
            self.assertEqual(c.sock.version(), name)
            self.assertEqual(c.get("/ping").body, b"pong")

    def test_tls11_refused(self):
        rc, out = s_client(self.s.tls_port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotRegex(out, r"Cipher is [A-Z0-9]")
        self.assertServes(self.s)

    def test_tls10_refused(self):
        rc, out = s_client(self.s.tls_port, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotRegex(out, r"Cipher is [A-Z0-9]")

    def test_keep_alive_and_pipelining_over_tls(self):
        ctx = ssl.create_default_context(cafile=self.cert)
        c = self.tls_conn(context=ctx)
        for i in range(5):
            self.assertEqual(c.get("/ping").body, b"pong")
        c.send(build_request("GET", "/ping") * 3)
        for i in range(3):
            self.assertEqual(c.read_response().body, b"pong")
        self.assertEqual(c.get("/transport").body, b"longpoll")

    def test_silent_handshake_does_not_block_others(self):
        silent = RawConn.tcp("127.0.0.1", self.s.tls_port)
        self.addCleanup(silent.close)
        partial = RawConn.tcp("127.0.0.1", self.s.tls_port)
        self.addCleanup(partial.close)
        partial.send(b"\x16\x03\x01\x02\x00\x01")
        c = self.tls_conn()
        self.assertEqual(c.get("/ping").body, b"pong")
        self.assertServes(self.s)

    def test_handshake_timeout_drops_silent_client(self):
        c = RawConn.tcp("127.0.0.1", self.s.tls_port)
        self.addCleanup(c.close)
        got = c.wait_closed(10)
        self.assertEqual(got, b"")
        self.assertServes(self.s)

    def test_partial_client_hello_dropped(self):
        c = RawConn.tcp("127.0.0.1", self.s.tls_port)
        self.addCleanup(c.close)
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        c.wait_closed(10)
        self.assertServes(self.s)

    def test_plain_http_on_tls_port(self):
        c = RawConn.tcp("127.0.0.1", self.s.tls_port)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/ping"))
        got = c.wait_closed(10)
        self.assertNotIn(b"pong", got)
        self.assertServes(self.s)

    def test_tls_client_vanishing_mid_request(self):
        for i in range(5):
            c = RawConn.tls("127.0.0.1", self.s.tls_port)
            c.send(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            c.abort()
            c = RawConn.tcp("127.0.0.1", self.s.tls_port)
            c.abort()
        c = self.tls_conn()
        self.assertEqual(c.get("/ping").body, b"pong")

    def test_sighup_reloads_certificate(self):
        old_der = cert_der(self.cert)
        # an open keep-alive connection on the old certificate
        keep = self.tls_conn()
        self.assertEqual(keep.sock.getpeercert(binary_form=True), old_der)
        self.assertEqual(keep.get("/ping").body, b"pong")

        new_cert, new_key = make_cert(self.dir, "new")
        new_der = cert_der(new_cert)
        self.assertNotEqual(old_der, new_der)
        tmpc, tmpk = self.cert + ".tmp", self.key + ".tmp"
        shutil.copy(new_cert, tmpc)
        shutil.copy(new_key, tmpk)
        os.replace(tmpk, self.key)
        os.replace(tmpc, self.cert)

        mark = self.s.mark()
        self.s.signal(signal.SIGHUP)
        self.s.wait_log(r"reload", since=mark)
        deadline = time.monotonic() + 10
        while True:
            c = RawConn.tls("127.0.0.1", self.s.tls_port)
            der = c.sock.getpeercert(binary_form=True)
            r = c.get("/ping")
            c.close()
            self.assertEqual(r.body, b"pong")
            if der == new_der:
                break
            self.assertLess(time.monotonic(), deadline,
                            "new connections still get the old certificate:\n"
                            + self.s.log_text())
            time.sleep(0.2)
        # verification against the new certificate works with curl too
        r = curl("https://127.0.0.1:%d/ping" % self.s.tls_port, "--cacert", new_cert)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        # the connection opened before the reload goes on
        self.assertEqual(keep.get("/ping").body, b"pong")
        self.assertEqual(keep.get("/ping").body, b"pong")

    def test_sighup_with_broken_certificate_keeps_old(self):
        old_der = cert_der(self.cert)
        with open(self.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        mark = self.s.mark()
        self.s.signal(signal.SIGHUP)
        self.s.wait_log(r"reload", since=mark)
        time.sleep(0.3)
        self.assertTrue(self.s.alive(), self.s.log_text())
        c = self.tls_conn()
        self.assertEqual(c.sock.getpeercert(binary_form=True), old_der)
        self.assertEqual(c.get("/ping").body, b"pong")


class TlsCipherTest(SluiceTestCase):
    """TLS 1.2 offers only forward-secret AEAD suites (Mozilla's
    intermediate profile: ECDHE with AES-GCM or ChaCha20-Poly1305), for an
    RSA and for an ECDSA certificate.  Each refused suite is one that
    OpenSSL's default list accepts."""

    REQUEST = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    def serve(self, kind):
        d = self.tmpdir()
        cert, key = make_cert(d, kind=kind, name=kind)
        return self.start(app("tls.lua"), listen=["127.0.0.1:0"], tls_listen=["127.0.0.1:0"],
                          args=["--tls-cert", cert, "--tls-key", key])

    def negotiated(self, s, cipher):
        rc, out = s_client(s.tls_port, "-tls1_2", "-cipher", cipher, request=self.REQUEST)
        m = re.search(r"Cipher is ([A-Z0-9-]+)", out)
        return (m.group(1) if m and m.group(1) != "0000" else None), out

    def check(self, kind, refused, accepted):
        s = self.serve(kind)
        for cipher in refused:
            got, out = self.negotiated(s, cipher)
            self.assertIsNone(got, "%s (%s certificate) was accepted:\n%s" % (cipher, kind, out))
        for cipher in accepted:
            got, out = self.negotiated(s, cipher)
            self.assertEqual(got, cipher, out)
            self.assertIn("pong", out)
        # With everything offered, the server picks an AEAD suite.
        got, out = self.negotiated(s, "ALL:@SECLEVEL=0")
        self.assertRegex(got or "", r"^ECDHE-.*(GCM|CHACHA20)", out)
        self.assertServes(s)

    def test_rsa_certificate(self):
        self.check("rsa",
                   refused=["AES128-SHA256", "AES256-GCM-SHA384", "AES128-SHA",
                            "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA",
                            "DHE-RSA-AES128-GCM-SHA256"],
                   accepted=["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                             "ECDHE-RSA-CHACHA20-POLY1305"])

    def test_ecdsa_certificate(self):
        self.check("ec",
                   refused=["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"],
                   accepted=["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                             "ECDHE-ECDSA-CHACHA20-POLY1305"])

    def test_tls13_unchanged(self):
        s = self.serve("rsa")
        for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                      "TLS_CHACHA20_POLY1305_SHA256"):
            rc, out = s_client(s.tls_port, "-tls1_3", "-ciphersuites", suite,
                               request=self.REQUEST)
            self.assertIn("Cipher is " + suite, out)
            self.assertIn("pong", out)


class TlsConfigTest(SluiceTestCase):
    def test_tls_listen_without_cert_exits_1(self):
        rc, out, err = run_sluice(["--tls-listen", "127.0.0.1:0", "-d", self.tmpdir(),
                                   app("tls.lua")])
        self.assertEqual(rc, 1, out + err)

    def test_missing_cert_file_exits_1(self):
        d = self.tmpdir()
        rc, out, err = run_sluice(["--tls-listen", "127.0.0.1:0", "-d", d,
                                   "--tls-cert", os.path.join(d, "none.crt"),
                                   "--tls-key", os.path.join(d, "none.key"),
                                   app("tls.lua")])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("none.", out + err)

    def test_mismatched_key_exits_1(self):
        d = self.tmpdir()
        c1, k1 = make_cert(d, "a")
        c2, k2 = make_cert(d, "b")
        rc, out, err = run_sluice(["--tls-listen", "127.0.0.1:0", "-d", d,
                                   "--tls-cert", c1, "--tls-key", k2, app("tls.lua")])
        self.assertEqual(rc, 1, out + err)


if __name__ == "__main__":
    unittest.main()
