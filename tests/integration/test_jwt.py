"""sluice.jwt.verify with tokens made here by the openssl command line, for
every algorithm (HS256/384/512, RS256/384/512, PS256/384/512,
ES256/384/512, EdDSA with Ed25519 and Ed448), keys as PEM (public key,
certificate), JWK and JWK Set; algorithm confusion (an HS256 token whose
HMAC key is the RSA public key's PEM) refused; short RSA keys and private
keys refused; a JWKS URL fetched with sluice.http, refetched on an unknown
kid at most every jwks_refetch seconds, a failed fetch not retried at once,
and no fetch where nothing can wait.  The RFCs' own vectors are in
tests/unit/jwt_vectors.lua."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app, build_request, free_port

APP = app("jwt_app.lua")


def b64u(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def openssl(*args, input=None):
    p = subprocess.run(["openssl"] + list(args), input=input, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr.decode()))
    return p.stdout


def der_read(b, i):
    """(tag, start, end) of the DER element at i."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def spki_key(der):
    """The bit string of a SubjectPublicKeyInfo (unused-bits byte removed)."""
    _, s, _ = der_read(der, 0)
    _, _, alg_end = der_read(der, s)
    tag, bs, be = der_read(der, alg_end)
    assert tag == 0x03
    return der[bs + 1:be]


def ecdsa_raw(der, size):
    """An ECDSA DER signature as JWS wants it: R || S, each `size` bytes."""
    _, s, _ = der_read(der, 0)
    _, rs, re_ = der_read(der, s)
    _, ss, se = der_read(der, re_)
    r = der[rs:re_].lstrip(b"\0").rjust(size, b"\0")
    s_ = der[ss:se].lstrip(b"\0").rjust(size, b"\0")
    return r + s_


class Keys:
    """Key pairs made with openssl in a temp dir, and tokens signed with them."""

    EC = {"P-256": (32, "prime256v1", "sha256"), "P-384": (48, "secp384r1", "sha384"),
          "P-521": (66, "secp521r1", "sha512")}

    def __init__(self, d):
        self.d = d
        self.priv, self.pub, self.jwk = {}, {}, {}
        self.gen("rsa", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
        self.gen("rsa1024", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
        for crv, (_, name, _) in self.EC.items():
            self.gen(crv, "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:" + name)
        self.gen("Ed25519", "-algorithm", "ED25519")
        self.gen("Ed448", "-algorithm", "ED448")

    def path(self, name):
        return os.path.join(self.d, name)

    def gen(self, name, *args):
        openssl("genpkey", *args, "-out", self.path(name + ".key"))
        self.priv[name] = self.path(name + ".key")
        openssl("pkey", "-in", self.priv[name], "-pubout", "-out", self.path(name + ".pub"))
        with open(self.path(name + ".pub")) as f:
            self.pub[name] = f.read()
        der = openssl("pkey", "-in", self.priv[name], "-pubout", "-outform", "DER")
        bits = spki_key(der)
        if name.startswith("rsa"):
            _, s, _ = der_read(bits, 0)
            _, ns, ne = der_read(bits, s)
            _, es, ee = der_read(bits, ne)
            self.jwk[name] = {"kty": "RSA", "n": b64u(bits[ns:ne].lstrip(b"\0")),
                              "e": b64u(bits[es:ee])}
        elif name in self.EC:
            size = self.EC[name][0]
            self.jwk[name] = {"kty": "EC", "crv": name, "x": b64u(bits[1:1 + size]),
                              "y": b64u(bits[1 + size:])}
        else:
            self.jwk[name] = {"kty": "OKP", "crv": name, "x": b64u(bits)}

    def cert(self, name):
        out = self.path(name + ".crt")
        openssl("req", "-x509", "-key", self.priv[name], "-subj", "/CN=jwt", "-days", "1",
                "-out", out)
        with open(out) as f:
            return f.read()

    def sign(self, alg, key, signing):
        """The signature of `signing` (bytes) under `key` (a secret for HS*,
        else a key name) with the openssl command line."""
        data = self.path("signing")
        with open(data, "wb") as f:
            f.write(signing)
        bits = alg[2:]
        if alg.startswith("HS"):
            return hmac.new(key.encode(), signing, getattr(hashlib, "sha" + bits)).digest()
        if alg.startswith("RS"):
            return openssl("dgst", "-sha" + bits, "-sign", self.priv[key], data)
        if alg.startswith("PS"):
            return openssl("dgst", "-sha" + bits, "-sign", self.priv[key],
                           "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest",
                           "-sigopt", "rsa_mgf1_md:sha" + bits, data)
        if alg.startswith("ES"):
            der = openssl("dgst", "-sha" + bits, "-sign", self.priv[key], data)
            return ecdsa_raw(der, self.EC[key][0])
        return openssl("pkeyutl", "-sign", "-inkey", self.priv[key], "-rawin", "-in", data)

    def token(self, alg, key, claims, header=None):
        h = dict(header or {})
        h.setdefault("alg", alg)
        signing = (b64u(json.dumps(h)) + "." + b64u(json.dumps(claims))).encode()
        return signing.decode() + "." + b64u(self.sign(alg, key, signing))


CASES = [  # alg, signing key (secret or name), verifying key name
    ("HS256", "a secret of 32 bytes, or longer!", None),
    ("HS384", "a secret of 48 bytes: longer than the other one", None),
    ("HS512", "s" * 64, None),
    ("RS256", "rsa", "rsa"), ("RS384", "rsa", "rsa"), ("RS512", "rsa", "rsa"),
    ("PS256", "rsa", "rsa"), ("PS384", "rsa", "rsa"), ("PS512", "rsa", "rsa"),
    ("ES256", "P-256", "P-256"), ("ES384", "P-384", "P-384"), ("ES512", "P-521", "P-521"),
    ("EdDSA", "Ed25519", "Ed25519"), ("EdDSA", "Ed448", "Ed448"),
]


def tamper(token):
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


class JwksServer:
    """Serves /jwks (the set in self.jwks) and counts the fetches."""

    def __init__(self):
        self.jwks = {"keys": []}
        self.fetches = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = "http://127.0.0.1:%d/jwks" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class JwtCase(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-jwt-")
        cls.keys = Keys(cls.dir)

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.dir, True)

    def setUp(self):
        self.s = self.start(APP)

    def tearDown(self):
        # Exit 0: under ASan, no key set or OpenSSL object leaked.
        self.assertStopsCleanly(self.s)

    def verify(self, token, keys, opts=None, jws=False, path="/verify"):
        body = {"token": token, "keys": keys}
        if opts:
            body["opts"] = opts
        if jws:
            body["jws"] = True
        with self.s.conn(timeout=20) as c:
            r = c.request("POST", path, body=json.dumps(body).encode())
        self.assertEqual(r.status, 200, r)
        return r.json()


class AlgorithmTest(JwtCase):
    def test_every_algorithm_with_pem_and_jwk(self):
        now = int(time.time())
        for alg, key, name in CASES:
            with self.subTest(alg=alg, key=name or "secret"):
                claims = {"sub": alg, "exp": now + 600}
                t = self.keys.token(alg, key, claims)
                forms = [key] if name is None else [self.keys.pub[name], self.keys.jwk[name]]
                if name is None:
                    forms.append({"kty": "oct", "k": b64u(key)})
                for k in forms:
                    self.assertEqual(self.verify(t, k), {"ok": True, "claims": claims})
                    self.assertEqual(self.verify(tamper(t), k),
                                     {"ok": False, "reason": "bad signature"})

    def test_certificate_and_key_set_object(self):
        t = self.keys.token("RS256", "rsa", {"sub": "cert"})
        self.assertEqual(self.verify(t, self.keys.cert("rsa"))["claims"], {"sub": "cert"})
        # A PEM with several keys: each token finds its own.
        bundle = self.keys.pub["P-256"] + self.keys.pub["rsa"]
        v = self.verify(t, bundle, path="/verify_parsed")
        self.assertEqual((v["ok"], v["n"]), (True, 2))
        t2 = self.keys.token("ES256", "P-256", {"sub": "ec"})
        self.assertTrue(self.verify(t2, bundle, path="/verify_parsed")["ok"])

    def test_algorithm_confusion_refused(self):
        """The classic attack: an HS256 token whose HMAC key is the server's
        RSA public key as PEM text.  A PEM is never an HMAC secret."""
        pem = self.keys.pub["rsa"]
        forged = self.keys.token("HS256", pem, {"sub": "admin"})
        self.assertEqual(self.verify(forged, pem),
                         {"ok": False, "reason": "no key for this algorithm"})
        self.assertEqual(self.verify(forged, self.keys.jwk["rsa"])["reason"],
                         "no key for this algorithm")
        # Nor does an RS256 token meet an EC key, or ES384 a P-256 key.
        t = self.keys.token("RS256", "rsa", {"sub": "x"})
        self.assertEqual(self.verify(t, self.keys.pub["P-256"])["reason"],
                         "no key for this algorithm")
        t = self.keys.token("ES256", "P-256", {"sub": "x"}, {"alg": "ES384"})
        self.assertEqual(self.verify(t, self.keys.pub["P-256"])["reason"],
                         "no key for this algorithm")
        # alg none, whatever the key.
        t = b64u('{"alg":"none"}') + "." + b64u('{"sub":"admin"}') + "."
        self.assertEqual(self.verify(t, pem)["reason"], "unsupported algorithm")

    def test_weak_and_wrong_keys_refused(self):
        t = self.keys.token("RS256", "rsa1024", {"sub": "x"})
        self.assertEqual(self.verify(t, self.keys.pub["rsa1024"])["reason"],
                         "no key for this algorithm")
        with open(self.keys.priv["rsa"]) as f:
            private = f.read()
        t = self.keys.token("RS256", "rsa", {"sub": "x"})
        self.assertEqual(self.verify(t, private)["reason"], "a private key: give the public key")
        enc = dict(self.keys.jwk["rsa"], use="enc")
        self.assertEqual(self.verify(t, enc)["reason"], "a JWK whose use is not sig")
        # In a set, such keys are skipped; the usable one serves.
        v = self.verify(t, {"keys": [enc, {"kty": "XYZ"}, self.keys.jwk["rsa"]]})
        self.assertTrue(v["ok"], v)


class JwksTest(JwtCase):
    def setUp(self):
        super().setUp()
        self.j = JwksServer()
        self.addCleanup(self.j.close)

    def test_fetched_cached_and_refetched_on_unknown_kid(self):
        k1 = dict(self.keys.jwk["rsa"], kid="k1")
        k2 = dict(self.keys.jwk["P-256"], kid="k2")
        self.j.jwks = {"keys": [k1]}
        t1 = self.keys.token("RS256", "rsa", {"sub": "a"}, {"kid": "k1"})
        t2 = self.keys.token("ES256", "P-256", {"sub": "b"}, {"kid": "k2"})
        opts = {"jwks_refetch": 1.0}
        for _ in range(3):
            self.assertEqual(self.verify(t1, self.j.url, opts)["claims"], {"sub": "a"})
        self.assertEqual(self.j.fetches, 1)
        # The set rotates: k2 is published.  A token of k2 right away is
        # refused without a fetch (the last was under a second ago)...
        self.j.jwks = {"keys": [k1, k2]}
        self.assertEqual(self.verify(t2, self.j.url, opts)["reason"], "unknown kid")
        self.assertEqual(self.j.fetches, 1)
        # ... and once jwks_refetch has passed, the unknown kid fetches the
        # set again and verifies.
        time.sleep(1.2)
        self.assertEqual(self.verify(t2, self.j.url, opts)["claims"], {"sub": "b"})
        self.assertEqual(self.j.fetches, 2)
        # A kid that is nowhere: refused, and no fetch within the interval.
        t3 = self.keys.token("RS256", "rsa", {"sub": "c"}, {"kid": "k3"})
        for _ in range(3):
            self.assertEqual(self.verify(t3, self.j.url, opts)["reason"], "unknown kid")
        self.assertEqual(self.j.fetches, 2)

    def test_old_set_fetched_again(self):
        """Past jwks_max_age the next verification fetches the set again (a
        key taken out is then refused)."""
        k1 = dict(self.keys.jwk["rsa"], kid="k1")
        self.j.jwks = {"keys": [k1]}
        t1 = self.keys.token("RS256", "rsa", {"sub": "a"}, {"kid": "k1"})
        opts = {"jwks_max_age": 1.0, "jwks_refetch": 0.5}
        self.assertTrue(self.verify(t1, self.j.url, opts)["ok"])
        self.assertTrue(self.verify(t1, self.j.url, opts)["ok"])
        self.assertEqual(self.j.fetches, 1)
        self.j.jwks = {"keys": [dict(self.keys.jwk["P-256"], kid="k2")]}
        time.sleep(1.2)
        self.assertEqual(self.verify(t1, self.j.url, opts)["reason"], "unknown kid")
        self.assertEqual(self.j.fetches, 2)

    def test_failed_fetch_not_retried_at_once(self):
        url = "http://127.0.0.1:%d/jwks" % free_port()
        t = self.keys.token("RS256", "rsa", {"sub": "a"})
        self.assertEqual(self.verify(t, url)["reason"], "key set fetch failed: cannot connect")
        self.assertEqual(self.verify(t, url)["reason"],
                         "key set not available (its last fetch failed)")
        # A body that is no key set is never taken for a secret (an HS256
        # token signed with the page's text is refused), and a set's
        # symmetric keys are dropped: a key published at a URL is public.
        for i, (body, why) in enumerate((
                ({"nothing": True}, "not a JWK Set"),
                ("a-page-anyone-can-read", "not a JWK Set"),
                ({"keys": [{"kty": "oct", "k": b64u("k" * 32)}]}, "no public key in the JWK Set"))):
            self.j.jwks = body
            url = self.j.url + "?%d" % i
            forged = self.keys.token("HS256", json.dumps(body) if i else "x", {"sub": "x"})
            self.assertEqual(self.verify(forged, url)["reason"], "key set fetch failed: " + why)

    def test_no_fetch_where_nothing_can_wait(self):
        self.j.jwks = {"keys": [dict(self.keys.jwk["rsa"], kid="k1")]}
        t = self.keys.token("RS256", "rsa", {"sub": "a"}, {"kid": "k1"})
        with self.s.conn() as c:
            c.send(build_request("GET", "/in_filter?" + urllib.parse.urlencode(
                {"url": self.j.url, "token": t}), {"Accept": "text/event-stream"}))
            c.read_head()
            with self.s.conn() as p:
                self.assertEqual(p.request("POST", "/pub/jwt.filter", body=b"m").status, 200)
            data = ""
            for _ in range(5):  # past the retry: line
                data = c.read_until(b"\n\n").decode()
                if "data:" in data:
                    break
        self.assertIn("key set not loaded", data)
        self.assertEqual(self.j.fetches, 0)


if __name__ == "__main__":
    unittest.main()
