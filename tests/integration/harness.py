"""Integration harness: start the real sluice binary on ephemeral loopback
ports and talk to it with raw sockets, curl and openssl.

Why it is shaped so: the tests judge the server from outside, the way users
and load balancers see it, so the harness owns nothing of the server but
its command line, its stderr and its sockets.  Every wait is bounded (a
hanging server fails a test instead of hanging ctest), and every process
started here is killed in cleanup whatever the test's outcome.

Standard library only (Debian's /usr/bin/python3); environment:
  SLUICE_BIN         the binary (default: <source>/build/sluice)
  SLUICE_SOURCE_DIR  the source tree (default: two levels above this file)
  SLUICE_TEST_LOGS=1 print each server's stderr when it is cleaned up
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SLUICE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("SLUICE_BIN") or os.path.join(SOURCE_DIR, "build", "sluice")
APPS = os.path.join(HERE, "apps")

START_TIMEOUT = 10.0   # seconds to wait for the listening lines
STOP_TIMEOUT = 10.0    # seconds for a graceful exit
IO_TIMEOUT = 10.0      # default socket timeout

SIGTERM = signal.SIGTERM

DATE_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
                     r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{4} \d{2}:\d{2}:\d{2} GMT$")

LISTEN_RE = re.compile(r"listening on (\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.\-]+):(\d+)")


def app(name):
    """Path of a test app in tests/integration/apps."""
    return os.path.join(APPS, name)


def have_ipv6_loopback():
    """True when ::1 can be bound here (some containers lack IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def free_port():
    """A port that was free a moment ago (for the rare test that cannot use
    port 0 and the listening line)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_ports(n):
    """n distinct ports that were free a moment ago: all are held at once
    while they are picked (free_port() called n times can give the same
    port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(args, timeout=20, input=None):
    """Run a command to completion (bounded); returns CompletedProcess with
    text stdout/stderr."""
    return subprocess.run(args, input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


def run_sluice(args, timeout=20):
    """Run the binary with ARGS to completion (for --check, -V, -h, bad
    flags).  Returns (returncode, stdout text, stderr text)."""
    p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


class ServerError(AssertionError):
    pass


class Server:
    """One running sluice process.

    Server(app=None, listen=["127.0.0.1:0"], tls_listen=[], args=[],
           log_format=None, data_dir=None, expect_listeners=None)
    start() waits (bounded) for one `listening on` line per listener.
    """

    def __init__(self, app=None, listen=("127.0.0.1:0",), tls_listen=(),
                 args=(), log_format=None, data_dir=None,
                 expect_listeners=None, cwd=None, ready_probe=True):
        self.app = app
        self.listen = list(listen)
        self.tls_listen = list(tls_listen)
        self.args = list(args)
        self.log_format = log_format
        self.own_data = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="sluice-test-")
        if expect_listeners is None:
            expect_listeners = len(self.listen) + len(self.tls_listen)
        self.expect_listeners = expect_listeners
        self.cwd = cwd
        self.ready_probe = ready_probe
        self.proc = None
        self.exit_expected = False
        self.lines = []
        self.stdout_lines = []
        self.cond = threading.Condition()
        self.listeners = []  # (host, port, is_tls)
        self.threads = []

    # -- life cycle -------------------------------------------------------

    def command(self):
        cmd = [BIN]
        for l in self.listen:
            cmd += ["-l", l]
        for t in self.tls_listen:
            cmd += ["--tls-listen", t]
        cmd += ["-d", self.data_dir]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        cmd += self.args
        if self.app:
            cmd.append(self.app)
        return cmd

    def start(self, timeout=START_TIMEOUT):
        if not os.path.exists(BIN):
            raise ServerError("sluice binary not found: %s" % BIN)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=self.cwd)
        for stream, sink in ((self.proc.stderr, self.lines),
                             (self.proc.stdout, self.stdout_lines)):
            t = threading.Thread(target=self._reader, args=(stream, sink),
                                 daemon=True)
            t.start()
            self.threads.append(t)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                self.listeners = self._parse_listeners()
                if len(self.listeners) >= self.expect_listeners:
                    break
                if self.proc.poll() is not None and self._eof_both():
                    raise ServerError("sluice exited with %s before listening:\n%s"
                                      % (self.proc.returncode, self.log_text()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError("no %d listening lines within %.0fs:\n%s"
                                      % (self.expect_listeners, timeout,
                                         self.log_text()))
                self.cond.wait(min(left, 0.2))
        if self.ready_probe:
            self._probe(deadline)
        return self

    def _probe(self, deadline):
        """One answered request proves the event loop runs (and so that the
        server is past its start-up: signal handlers in place).  The
        listening line alone is logged a little earlier."""
        plain = [(h, p) for h, p, t in self.listeners if not t]
        if not plain:
            return
        host, port = plain[0]
        while True:
            try:
                with RawConn.tcp(host, port, timeout=max(0.5, deadline - time.monotonic())) as c:
                    c.send(build_request("GET", "/__harness_ready", [("Connection", "close")]))
                    c.read_head()
                return
            except (OSError, AssertionError) as e:
                if time.monotonic() > deadline or not self.alive():
                    raise ServerError("server does not answer on %s:%d (%s):\n%s"
                                      % (host, port, e, self.log_text()))
                time.sleep(0.1)

    def _eof_both(self):
        return all(not t.is_alive() for t in self.threads)

    def _reader(self, stream, sink):
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self.cond:
                    sink.append(line)
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.cond.notify_all()

    def _parse_listeners(self):
        out = []
        for line in self.lines:
            m = LISTEN_RE.search(line)
            if not m:
                continue
            host = m.group(1)
            if host.startswith("["):
                host = host[1:-1]
            rest = line.lower()
            is_tls = bool(re.search(r"\btls\b|https", rest))
            out.append((host, int(m.group(2)), is_tls))
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.exit_expected = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait (bounded) for the process to exit; returns its code or
        raises ServerError."""
        self.exit_expected = True
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ServerError("sluice did not exit within %.0fs:\n%s"
                              % (timeout, self.log_text()))
        for t in self.threads:
            t.join(timeout=2)
        return rc

    def stop(self, sig=SIGTERM, timeout=STOP_TIMEOUT):
        """Graceful stop; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self):
        """Cleanup: stop the server (SIGTERM, then SIGKILL after a bounded
        wait), free its files, and raise ServerError when it crashed on its
        own, reported a sanitizer error, or did not exit 0 on SIGTERM (a
        leak report of LeakSanitizer changes the exit code).  The check of
        the exit is skipped with SLUICE_TEST_LAX_EXIT=1."""
        problem = None
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is not None and not self.exit_expected:
                problem = "sluice exited by itself with %s during the test" % rc
            elif rc is None:
                strict = not os.environ.get("SLUICE_TEST_LAX_EXIT")
                if strict:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        rc = self.proc.wait(timeout=STOP_TIMEOUT)
                        if rc != 0:
                            problem = "sluice exited with %s on SIGTERM after the test" % rc
                    except subprocess.TimeoutExpired:
                        problem = ("sluice did not exit within %.0fs of SIGTERM after the test"
                                   % STOP_TIMEOUT)
                if self.proc.poll() is None:
                    self.proc.kill()
                    try:
                        self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
            for t in self.threads:
                t.join(timeout=2)
            for s in (self.proc.stdout, self.proc.stderr):
                try:
                    s.close()
                except OSError:
                    pass
            san = [l for l in self.lines
                   if "Sanitizer" in l or "runtime error:" in l]
            if san and problem is None:
                problem = "sanitizer report: %s" % san[0]
        if os.environ.get("SLUICE_TEST_LOGS"):
            sys.stderr.write("---- sluice stderr (%s) ----\n%s\n----\n"
                             % (" ".join(self.command()), self.log_text()))
        if self.own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if problem and self.proc is not None:
            self.proc = None
            raise ServerError("%s:\n%s" % (problem, "\n".join(self.lines[-80:])))
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()

    # -- addresses ----------------------------------------------------------

    @property
    def port(self):
        """The first plain listener's port."""
        for host, port, tls in self.listeners:
            if not tls:
                return port
        raise ServerError("no plain listener:\n" + self.log_text())

    @property
    def host(self):
        for host, port, tls in self.listeners:
            if not tls:
                return host
        raise ServerError("no plain listener")

    @property
    def tls_port(self):
        for host, port, tls in self.listeners:
            if tls:
                return port
        raise ServerError("no TLS listener:\n" + self.log_text())

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def conn(self, timeout=IO_TIMEOUT):
        """A raw client connection to the first plain listener."""
        return RawConn.tcp(self.host, self.port, timeout)

    # -- logs ---------------------------------------------------------------

    def logs(self):
        with self.cond:
            return list(self.lines)

    def log_text(self):
        with self.cond:
            return "\n".join(self.lines + ["[stdout]"] + self.stdout_lines
                             if self.stdout_lines else self.lines)

    def mark(self):
        """Index of the next log line (pass as since= to wait_log)."""
        with self.cond:
            return len(self.lines)

    def wait_log(self, pattern, timeout=10.0, since=0):
        """Wait (bounded) for a stderr line at index >= since that matches
        the regex; returns the re.Match.  Raises ServerError on timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = since
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError("no log line matching %r within %.0fs:\n%s"
                                      % (pattern, timeout, "\n".join(self.lines[-60:])))
                self.cond.wait(min(left, 0.2))

    def find_logs(self, pattern, since=0):
        rx = re.compile(pattern)
        return [l for l in self.logs()[since:] if rx.search(l)]

    def json_logs(self):
        """Every stderr line parsed as JSON (raises on a line that is not)."""
        return [json.loads(l) for l in self.logs() if l.strip()]


# -- HTTP over a raw socket ----------------------------------------------------

class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def closes(self):
        """True when the response announces that the connection closes."""
        c = (self.header("connection") or "").lower()
        return "close" in c

    def __repr__(self):
        return "<Response %s %d %r headers=%r body=%r>" % (
            self.version, self.status, self.reason, self.headers, self.body[:200])


class ConnectionClosed(AssertionError):
    pass


def build_request(method, path, headers=None, body=None, version="HTTP/1.1",
                  host=True):
    """Bytes of one request.  headers: list of (name, value) or dict.  A body
    gets a Content-Length unless the headers carry Content-Length or
    Transfer-Encoding already."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    if host and "host" not in names:
        headers.insert(0, ("Host", "localhost"))
    if isinstance(body, str):
        body = body.encode()
    if body is not None and "content-length" not in names \
            and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    out = "%s %s %s\r\n" % (method, path, version)
    out += "".join("%s: %s\r\n" % (k, v) for k, v in headers)
    out += "\r\n"
    return out.encode("latin-1") + (body or b"")


def chunked(*parts, trailers=None, ext=None):
    """Encode PARTS (bytes or str) as a chunked body."""
    out = b""
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        if not p:
            continue
        out += b"%x" % len(p)
        if ext:
            out += b";" + ext.encode()
        out += b"\r\n" + p + b"\r\n"
    out += b"0\r\n"
    for k, v in (trailers or []):
        out += ("%s: %s\r\n" % (k, v)).encode()
    out += b"\r\n"
    return out


class RawConn:
    """A client socket with a read buffer and an HTTP/1.1 response reader."""

    def __init__(self, sock, timeout=IO_TIMEOUT):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = bytearray()  # appending to bytes is quadratic on big bodies
        self.eof = False
        self.reset = False

    @classmethod
    def tcp(cls, host, port, timeout=IO_TIMEOUT):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return cls(s, timeout)

    @classmethod
    def tls(cls, host, port, context=None, server_hostname="localhost",
            timeout=IO_TIMEOUT):
        if context is None:
            context = insecure_tls_context()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        try:
            raw.settimeout(timeout)
            raw.connect((host, port))
            s = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        return cls(s, timeout)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_quietly(self, data):
        """Send, ignoring a peer that closed meanwhile; returns True when
        every byte was handed to the kernel."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return False

    def request(self, method, path, headers=None, body=None, **kw):
        """Send one request and read its response."""
        self.send(build_request(method, path, headers, body, **kw))
        return self.read_response(head=(method == "HEAD"))

    def get(self, path, headers=None):
        return self.request("GET", path, headers)

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            data = b""
        except ssl.SSLError as e:
            # an unexpected EOF or alert from the peer ends the stream
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, delim, limit=1 << 24):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (delim, limit))
            if not self._fill():
                raise ConnectionClosed("connection closed while waiting for %r (have %r)"
                                       % (delim, self.buf[:200]))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed("connection closed after %d of %d bytes"
                                       % (len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        while self._fill():
            pass
        out, self.buf = bytes(self.buf), bytearray()
        return out

    def read_head(self):
        """Read a status line and headers; returns (version, status, reason,
        headers, raw)."""
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for l in lines[1:]:
            if ":" not in l:
                raise AssertionError("bad header line %r" % l)
            k, v = l.split(":", 1)
            if k != k.strip():
                raise AssertionError("whitespace around header name %r" % l)
            headers.append((k, v.strip()))
        return m.group(1), int(m.group(2)), m.group(3) or "", headers, raw

    def read_response(self, head=False):
        """Read one response (1xx interim ones included: the caller sees
        them).  head=True: the request was HEAD, so no body follows."""
        version, status, reason, headers, raw = self.read_head()
        r = Response(version, status, reason, headers, b"", raw)
        if head or 100 <= status < 200 or status in (204, 304):
            return r
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if "chunked" in te:
            body = b""
            while True:
                line = self.read_until(b"\r\n").strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self.read_exact(size)
                if self.read_exact(2) != b"\r\n":
                    raise AssertionError("bad chunk terminator")
            r.body = body
        elif cl is not None:
            r.body = self.read_exact(int(cl))
        else:
            r.body = self.read_to_eof()
        return r

    def read_final_response(self, head=False):
        """Read responses, skipping 1xx interim ones; returns the final."""
        while True:
            r = self.read_response(head)
            if not (100 <= r.status < 200):
                return r

    def wait_closed(self, timeout=10.0):
        """Wait (bounded) for the peer to close; returns the bytes received
        meanwhile.  Raises AssertionError if the connection stays open."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        got = b""
        try:
            while time.monotonic() < deadline:
                if self.buf:
                    got += self.buf
                    self.buf = bytearray()
                if not self._fill():
                    got += self.buf
                    self.buf = bytearray()
                    return got
        except socket.timeout:
            raise AssertionError("connection still open after %.0fs (got %r)"
                                 % (timeout, got[:200]))
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass
        raise AssertionError("connection still open after %.0fs" % timeout)

    def is_closed(self, timeout=10.0):
        try:
            self.wait_closed(timeout)
            return True
        except AssertionError:
            return False

    def readable(self, timeout):
        """True when bytes (or EOF) arrive within timeout."""
        import select
        if self.buf:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def abort(self):
        """Close with an RST (SO_LINGER 0): a peer that vanishes."""
        try:
            import struct
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def insecure_tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_cert(dirname, name="server", cn="localhost", kind="ec"):
    """Generate a self-signed certificate (kind "ec": P-256, or "rsa": 2048
    bits) for localhost/127.0.0.1 with the openssl CLI; returns (cert_path,
    key_path)."""
    cert = os.path.join(dirname, name + ".crt")
    key = os.path.join(dirname, name + ".key")
    keyopts = (["-newkey", "rsa:2048"] if kind == "rsa" else
               ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
    p = run(["openssl", "req", "-x509"] + keyopts + ["-nodes",
             "-subj", "/CN=" + cn,
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-days", "2", "-keyout", key, "-out", cert], timeout=30)
    if p.returncode != 0:
        raise RuntimeError("openssl req failed: %s" % p.stderr.decode())
    return cert, key


def cert_der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


# -- curl --------------------------------------------------------------------

class CurlResult:
    def __init__(self, rc, status, headers, body, stderr):
        self.rc = rc
        self.status = status
        self.headers = headers
        self.body = body
        self.stderr = stderr

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<curl rc=%d status=%s headers=%r body=%r stderr=%r>" % (
            self.rc, self.status, self.headers, self.body[:200], self.stderr[-500:])


def curl(url, *args, timeout=20):
    """Run curl on URL with extra ARGS; returns CurlResult with the final
    response's status, headers and body."""
    d = tempfile.mkdtemp(prefix="sluice-curl-")
    try:
        hfile = os.path.join(d, "h")
        bfile = os.path.join(d, "b")
        p = run(["curl", "-sS", "--max-time", str(timeout - 2), "-D", hfile,
                 "-o", bfile] + list(args) + [url], timeout=timeout)
        head, body = "", b""
        if os.path.exists(hfile):
            with open(hfile, "rb") as f:
                head = f.read().decode("latin-1")
        if os.path.exists(bfile):
            with open(bfile, "rb") as f:
                body = f.read()
        # the last header block is the final response (after 100 Continue)
        blocks = [b for b in head.split("\r\n\r\n") if b.strip()]
        status, headers = None, []
        if blocks:
            lines = blocks[-1].split("\r\n")
            m = re.match(r"HTTP/\S+ (\d{3})", lines[0])
            status = int(m.group(1)) if m else None
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1)
                    headers.append((k.strip(), v.strip()))
        return CurlResult(p.returncode, status, headers, body,
                          p.stderr.decode("utf-8", "replace"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- test case base --------------------------------------------------------------

class SluiceTestCase(unittest.TestCase):
    """Adds server and temp-dir helpers that always clean up."""

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="sluice-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def start(self, *args, **kw):
        s = Server(*args, **kw)
        self.addCleanup(s.kill)
        s.start()
        return s

    def conn(self, server, timeout=IO_TIMEOUT):
        c = server.conn(timeout)
        self.addCleanup(c.close)
        return c

    def assertJsonError(self, r, status):
        """r is a Response with the error status and a JSON {"error":...}."""
        self.assertEqual(r.status, status, r)
        ctype = r.header("content-type") or ""
        self.assertIn("application/json", ctype, r)
        v = r.json()
        self.assertIsInstance(v, dict, r)
        self.assertIn("error", v, r)
        self.assertIsInstance(v["error"], str, r)
        self.assertRegex(r.header("date") or "", DATE_RE, r)
        self.assertEqual(r.header("content-length"), str(len(r.body)), r)

    def assertServes(self, server, path="/ping", body=b"pong"):
        """A fresh connection gets PATH answered with 200 BODY."""
        with server.conn() as c:
            r = c.get(path)
        self.assertEqual(r.status, 200, r)
        if body is not None:
            self.assertEqual(r.body, body)
        self.assertTrue(server.alive(), "server died:\n" + server.log_text())

    def assertStopsCleanly(self, server, sig=signal.SIGTERM):
        rc = server.stop(sig)
        self.assertEqual(rc, 0, "exit code %s:\n%s" % (rc, server.log_text()))


# -- WebSocket, byte by byte -------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_open(conn, path):
    """The handshake of a WebSocket on conn (a RawConn): asserts the 101
    and the accept key."""
    key = base64.b64encode(os.urandom(16)).decode()
    conn.send(build_request("GET", path, [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
    _, status, _, headers, head = conn.read_head()
    assert status == 101, head
    want = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    assert dict((k.lower(), v) for k, v in headers).get("sec-websocket-accept") == want, head


def ws_read_frame(conn):
    """The next server frame: (opcode, payload)."""
    b0, b1 = conn.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", conn.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", conn.read_exact(8))[0]
    return b0 & 0x0F, conn.read_exact(n)
