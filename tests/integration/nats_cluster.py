"""A real NATS cluster with JetStream on loopback, for the cluster tests.

NatsCluster(n=3) writes one config per server (client port, route port,
monitoring port, each picked free; its own JetStream store directory under
one temp dir), starts `nats-server` for each, and waits, bounded, until
every server answers its monitoring endpoint and the JetStream meta group
has a leader that every server knows, then until it can place a stream
on all its servers (wait_placement).  kill(i) (SIGKILL by default),
stop_all(), start(i) and start_all() let a test take servers away and bring
them back with their stores and ports; extra_conf is added to every
server's config (tls, authorization); request(i, subject, payload) asks a
server one JetStream API question as another client would; cleanup() kills
whatever runs and removes the directory (SLUICE_TEST_NATS_LOGS=DIR keeps each server's log
there first, for a run that must be read afterwards).  No mock: this is
Debian's nats-server (2.10 from trixie, which dev.sh installs; with 2.9.10
the paused-leader test is skipped: nats_version()).

Standard library only.  NATS_SERVER names the binary (default: the one on
PATH); have_nats() tells whether it exists, so that a test skips cleanly
with a message where it does not (dev.sh installs it: CI runs them), and
nats_version() which version it is.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from harness import free_ports

NATS_SERVER = os.environ.get("NATS_SERVER") or shutil.which("nats-server") or ""
READY_TIMEOUT = 30.0


def have_nats():
    return bool(NATS_SERVER) and os.access(NATS_SERVER, os.X_OK)


def nats_version():
    """(major, minor, patch) of NATS_SERVER, (0, 0, 0) if unknown."""
    if not have_nats():
        return (0, 0, 0)
    try:
        out = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0, 0, 0)
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


class NatsCluster:
    def __init__(self, n=3, name="sluicetest", extra_conf=""):
        self.n = n
        self.name = name
        self.extra_conf = extra_conf  # appended to every server's config (tls, authorization)
        self.dir = tempfile.mkdtemp(prefix="sluice-nats-")
        ports = free_ports(3 * n)
        self.client_ports = ports[:n]
        self.route_ports = ports[n:2 * n]
        self.http_ports = ports[2 * n:]
        self.procs = [None] * n
        self.logs = [os.path.join(self.dir, "n%d.log" % i) for i in range(n)]
        for i in range(n):
            self._write_config(i)

    def url(self, i):
        return "nats://127.0.0.1:%d" % self.client_ports[i]

    def urls(self):
        return ",".join(self.url(i) for i in range(self.n))

    def _write_config(self, i):
        routes = ",".join("nats-route://127.0.0.1:%d" % p
                          for j, p in enumerate(self.route_ports) if j != i)
        store = os.path.join(self.dir, "store%d" % i)
        conf = ("server_name: n%d\n"
                "listen: 127.0.0.1:%d\n"
                "http: 127.0.0.1:%d\n"
                "jetstream { store_dir: %s, max_memory_store: 64MB, max_file_store: 1GB }\n"
                % (i, self.client_ports[i], self.http_ports[i], json.dumps(store)))
        if self.n > 1:
            # no_advertise: a client knows the servers it was given, no
            # others (a test can cut a node off by stopping its server).
            conf += ("cluster { name: %s, listen: 127.0.0.1:%d, routes: [%s], no_advertise: true }\n"
                     % (self.name, self.route_ports[i], routes))
        with open(os.path.join(self.dir, "n%d.conf" % i), "w") as f:
            f.write(conf + self.extra_conf)

    # -- life cycle ---------------------------------------------------------

    def start(self, i, wait=True):
        if self.procs[i] and self.procs[i].poll() is None:
            return
        log = open(self.logs[i], "ab")
        self.procs[i] = subprocess.Popen(
            [NATS_SERVER, "-c", os.path.join(self.dir, "n%d.conf" % i)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        if wait:
            self.wait_ready([i])

    def start_all(self):
        # nats-server 2.10.27 can form a JetStream meta group that leaves
        # one of three servers out, for good (no stream of three replicas
        # can then be placed): in 4 of 40 clusters started at once, none of
        # 80 started one after another on an idle machine, and once in a
        # loaded CI run started one after another.  So one after another,
        # each answering before the next starts, and a group formed short
        # is formed anew from empty stores, a bounded number of times.
        for attempt in range(1, 4):
            for i in range(self.n):
                self.start(i, wait=False)
                self.wait_monitor(i)
            self.wait_ready(range(self.n))
            if self.n == 1 or self._meta_complete(5.0):
                break
            if attempt == 3:
                raise AssertionError("NATS meta group short of %d servers three times:\n%s"
                                     % (self.n, self.log_text()))
            sys.stderr.write("NATS meta group formed short of %d servers: formed anew\n"
                             % self.n)
            self.stop_all()
            for i in range(self.n):
                shutil.rmtree(os.path.join(self.dir, "store%d" % i), ignore_errors=True)
        if self.n > 1:
            self.wait_placement()
        return self

    def _meta_complete(self, timeout):
        """Every server sees a meta group of all n servers, within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            sizes = []
            for i in range(self.n):
                try:
                    sizes.append((self._jsz(i).get("meta_cluster") or {}).get("cluster_size"))
                except OSError:
                    sizes.append(None)
            if all(x == self.n for x in sizes):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def wait_monitor(self, i):
        """Until server i answers its monitoring port (bounded)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self._jsz(i)
                return
            except OSError:
                if self.procs[i].poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("nats-server n%d does not answer:\n%s"
                                         % (i, self.log_text()))
                time.sleep(0.02)

    def wait_placement(self):
        """Until the cluster can place a stream on all its servers: a
        cluster just formed refuses ("no suitable peers", JetStream error
        10005) until its leader has each server's first report, and for
        good when its meta group left a server out (start_all).  A stream
        of n replicas is made and deleted, bounded; a failure shows each
        server's view of the meta group."""
        cfg = json.dumps({"name": "SLUICE_PROBE", "subjects": ["sluice_probe.>"],
                          "num_replicas": self.n, "storage": "memory"}).encode()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                r = self.request(0, "$JS.API.STREAM.CREATE.SLUICE_PROBE", cfg)
            except OSError as e:
                r = {"error": str(e)}
            if "error" not in r:
                self.request(0, "$JS.API.STREAM.DELETE.SLUICE_PROBE")
                return
            if time.monotonic() > deadline:
                views = []
                for i in range(self.n):
                    try:
                        views.append("n%d: %s" % (i, json.dumps(self._jsz(i).get("meta_cluster"))))
                    except OSError as e:
                        views.append("n%d: %s" % (i, e))
                raise AssertionError("NATS cluster cannot place a stream within %.0fs: %s\n%s\n%s"
                                     % (READY_TIMEOUT, r["error"], "\n".join(views),
                                        self.log_text()))
            time.sleep(0.25)

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(timeout=10)

    def stop_all(self):
        for i in range(self.n):
            self.kill(i)

    def cleanup(self):
        for i in range(self.n):
            p = self.procs[i]
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(timeout=10)
        keep = os.environ.get("SLUICE_TEST_NATS_LOGS")
        if keep:
            os.makedirs(keep, exist_ok=True)
            for i, path in enumerate(self.logs):
                if os.path.exists(path):
                    shutil.copy(path, os.path.join(keep, "%s-n%d.log"
                                                   % (os.path.basename(self.dir), i)))
        shutil.rmtree(self.dir, True)

    def log_text(self):
        out = []
        for path in self.logs:
            try:
                with open(path, "rb") as f:
                    out.append(f.read()[-4000:].decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(out)

    # -- the JetStream API, for a test that acts as another client --------------

    def request(self, i, subject, payload=b"", timeout=5.0):
        """One request to server i over the plain NATS protocol (CONNECT,
        SUB to an inbox, PUB, the MSG answer); returns the answer's JSON."""
        with socket.create_connection(("127.0.0.1", self.client_ports[i]), timeout) as s:
            f = s.makefile("rb")
            f.readline()  # INFO
            inbox = "_INBOX.sluicetest.%d" % os.getpid()
            s.sendall(b'CONNECT {"verbose":false}\r\nSUB %s 1\r\nPUB %s %s %d\r\n%s\r\n'
                      % (inbox.encode(), subject.encode(), inbox.encode(), len(payload),
                         payload))
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError("no answer to %s" % subject)
                if line.startswith(b"PING"):
                    s.sendall(b"PONG\r\n")
                elif line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    return json.loads(f.read(size + 2)[:size])

    # -- readiness ----------------------------------------------------------

    def _jsz(self, i):
        url = "http://127.0.0.1:%d/jsz" % self.http_ports[i]
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())

    def stream_leader(self, stream, timeout=10.0):
        """Index of the server that leads `stream` (its Raft leader), once
        every running server names the same one: one server's view can lag
        (CI paused a server it named, just after the stream was made, and
        the leader answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = set()
            for i in range(self.n):
                if not self.procs[i] or self.procs[i].poll() is not None:
                    continue
                views.add(self._stream_leader_seen_by(i, stream))
            if len(views) == 1 and None not in views:
                return int(views.pop().lstrip("n"))
            time.sleep(0.1)
        raise AssertionError("no leader for stream %s that every server names" % stream)

    def _stream_leader_seen_by(self, i, stream):
        try:
            url = "http://127.0.0.1:%d/jsz?accounts=true&streams=true" % self.http_ports[i]
            with urllib.request.urlopen(url, timeout=2) as r:
                jsz = json.loads(r.read())
        except OSError:
            return None
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if st.get("name") == stream:
                    return (st.get("cluster") or {}).get("leader") or None
        return None

    def wait_ready(self, which):
        """Every server in `which` answers and knows the JetStream meta
        leader (so streams can be created and replicated)."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = set(which)
        while pending:
            for i in list(pending):
                if self.procs[i].poll() is not None:
                    raise AssertionError("nats-server n%d exited:\n%s" % (i, self.log_text()))
                try:
                    jsz = self._jsz(i)
                except OSError:
                    continue
                meta = jsz.get("meta_cluster") or {}
                if self.n == 1 or meta.get("leader"):
                    pending.discard(i)
            if pending:
                if time.monotonic() > deadline:
                    raise AssertionError("NATS cluster not ready within %.0fs:\n%s"
                                         % (READY_TIMEOUT, self.log_text()))
                time.sleep(0.1)
