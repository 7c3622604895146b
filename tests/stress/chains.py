#!/usr/bin/python3
"""tests/stress/chains.py: clients that resume, again and again, while
others publish; every acknowledged message must reach every client once.

    tests/stress/chains.py [--cluster] [--workers N] [--wild] [--limits]
                           [--pause SECONDS] [--reload] [--runs N]

Per run, on loopback: one sluice node (or, with --cluster, a 3-server NATS
cluster with JetStream, tests/integration/nats_cluster.py, and two sluice
nodes on it), 3 topics, and on every node for every topic a long-poll that
asks again from each answer's last_id and an SSE client that reconnects
with Last-Event-ID after 1 to 15 events; --wild adds two of each over a
wildcard of the three topics.  4 publishers send 200 messages each to the
first node.  --limits makes the long-polls ask with a random limit (1, 2,
5) and pause now and then; --pause stops every NATS server (SIGSTOP) for
SECONDS while the publishes go on: a publish answered 503 may then be
stored all the same, so a message no publisher saw acknowledged is
allowed, never a missing or repeated one.  --reload reloads every node
(SIGHUP) about three times a second while the publishes go on, its
retention going from 1000 messages per topic to 999 and back (more than a
run keeps: nothing is dropped), so in cluster mode each reload sets the
stream's limits; a reload that fails is an error, except with --pause.  Exit status 1 when any client
missed or repeated a message.

How issue 27's cluster long-poll loss (a PubAck moving the publishing
worker's newest delivered past the stream's copy) was found: 50-66 lost
deliveries per run before the fix (its regression test is
test_cluster.py's test_chained_longpolls_under_concurrent_publishes_lose_nothing).
SLUICE_BIN names the binary (default build/sluice).  Every loop is bounded
in count and time.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
from harness import free_ports  # noqa: E402
from nats_cluster import NatsCluster  # noqa: E402

BIN = os.environ.get("SLUICE_BIN") or os.path.join(TOP, "build", "sluice")
WILD_ROUTE = ('\nsluice.route("GET", "/wild/:prefix", function(req)\n'
              '  return req:subscribe(req.params.prefix .. "*")\nend)\n')


def wait_port(port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sluice did not listen on %d" % port)


class Run:
    def __init__(self, args, nats):
        self.args, self.nats = args, nats
        self.dir = tempfile.mkdtemp(prefix="sluice-stress-")
        with open(os.path.join(TOP, "scripts", "default.lua")) as f:
            self.source = f.read() + WILD_ROUTE
        self.app = os.path.join(self.dir, "app.lua")
        self.write_app(1000)
        self.ports = free_ports(2 if nats else 1)
        self.procs = []
        self.prefix = "st%d-" % random.randint(0, 10**9)
        self.topics = [self.prefix + str(i) for i in range(3)]
        self.acked = {t: [] for t in self.topics + ["*"]}
        self.results, self.errors = {}, []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def start(self):
        env = dict(os.environ, SLUICE_PUBLISH_RATE="0")
        for k, port in enumerate(self.ports):
            cmd = [BIN, "-l", "127.0.0.1:%d" % port, "-d", os.path.join(self.dir, "data%d" % k),
                   "-w", str(self.args.workers), "--log-level", "warn"]
            if self.nats:
                cmd += ["--cluster", self.nats.urls()]
            log = open(os.path.join(self.dir, "log%d" % k), "w")
            self.procs.append(subprocess.Popen(cmd + [self.app], stdout=log, stderr=log, env=env))
            wait_port(port)

    def path(self, t):
        return "/wild/" + self.prefix if t == "*" else "/topics/" + t

    def publisher(self, k):
        c = http.client.HTTPConnection("127.0.0.1", self.ports[0], timeout=30)
        for i in range(200):
            t = self.topics[(i + k) % 3]
            c.request("POST", "/topics/" + t, body=b"m%d-%d" % (k, i))
            r = c.getresponse()
            b = r.read()
            if r.status == 200:
                mid = json.loads(b)["id"]
                with self.lock:
                    self.acked[t].append(mid)
                    self.acked["*"].append(mid)
            elif r.status != 503 or not self.args.pause:
                self.errors.append("publish %d %r" % (r.status, b[:100]))

    def poller(self, name, port, t, since):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        got = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            last_round = self.stop.is_set()
            lim = random.choice(["", "&limit=1", "&limit=2", "&limit=5"]) if self.args.limits else ""
            c.request("GET", "%s?since=%s&timeout=1%s" % (self.path(t), urllib.parse.quote(since), lim))
            r = c.getresponse()
            b = r.read()
            if r.status != 200:  # 503: the stream could not be read (NATS paused); ask again
                time.sleep(0.2)
                continue
            j = json.loads(b)
            got += [m["id"] for m in j["messages"]]
            since = j["last_id"]
            if last_round and not j["messages"]:
                break
            if self.args.limits and random.random() < 0.3:
                time.sleep(random.random() * 0.05)
        self.results[name] = (t, got)

    def sse(self, name, port, t, last):
        got = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            last_round = self.stop.is_set()
            n, want = 0, random.randint(1, 15)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                               "Last-Event-ID: %s\r\n\r\n" % (self.path(t), last)).encode())
                    f = s.makefile("rb")
                    for _ in range(100):  # the head
                        if f.readline() in (b"\r\n", b""):
                            break
                    ev = {}
                    while n < want and time.monotonic() < deadline:
                        line = f.readline()
                        if not line:
                            break
                        line = line.rstrip(b"\n")
                        if not line:
                            if b"data" in ev and b"id" in ev:
                                got.append(ev[b"id"].decode())
                                last = got[-1]
                                n += 1
                            ev = {}
                        elif not line.startswith(b":"):
                            key, _, value = line.partition(b": ")
                            ev[key] = value
            except OSError:  # the 2 s read timeout: nothing more for now
                pass
            if last_round and n == 0:
                break
        self.results[name] = (t, got)

    def write_app(self, backlog):
        tmp = self.app + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.source + '\nsluice.topic("*", {backlog = %d})\n' % backlog)
        os.replace(tmp, self.app)

    def reloader(self, pubs):
        for k in range(600):
            if not any(th.is_alive() for th in pubs):
                break
            self.write_app(999 if k % 2 == 0 else 1000)
            for p in self.procs:
                p.send_signal(signal.SIGHUP)
            time.sleep(0.3)

    def go(self):
        c = http.client.HTTPConnection("127.0.0.1", self.ports[0], timeout=30)
        first = {}
        for t in self.topics:
            c.request("POST", "/topics/" + t, body=b"first")
            first[t] = json.loads(c.getresponse().read())["id"]
        first["*"] = first[self.topics[-1]]
        clients = []
        for k, port in enumerate(self.ports):
            for t in self.topics + (["*", "*"] if self.args.wild else []):
                nm = "node%d %s #%d" % (k, t, len(clients))
                clients.append(threading.Thread(target=self.poller, args=("lp " + nm, port, t, first[t])))
                clients.append(threading.Thread(target=self.sse, args=("sse " + nm, port, t, first[t])))
        pubs = [threading.Thread(target=self.publisher, args=(k,)) for k in range(4)]
        for th in clients + pubs:
            th.start()
        if self.args.reload:
            threading.Thread(target=self.reloader, args=(pubs,), daemon=True).start()
        if self.args.pause and self.nats:
            time.sleep(0.5)
            for i in range(self.nats.n):
                self.nats.kill(i, signal.SIGSTOP)
            time.sleep(self.args.pause)
            for i in range(self.nats.n):
                self.nats.kill(i, signal.SIGCONT)
        for th in pubs:
            th.join(180)
        time.sleep(2)
        self.stop.set()
        for th in clients:
            th.join(150)
        bad = 0
        for name, (t, got) in sorted(self.results.items()):
            missing = set(self.acked[t]) - set(got)
            repeated = len(got) - len(set(got))
            if missing or repeated:
                bad += 1
                print("  %s: %d missing %s, %d repeated" % (name, len(missing), sorted(missing)[:4],
                                                            repeated))
        for k in range(len(self.ports)):
            with open(os.path.join(self.dir, "log%d" % k), errors="replace") as f:
                failed = [ln for ln in f if "reload failed" in ln]
            if failed:
                # While NATS is paused a reload that changes the retention
                # cannot reach the stream: it fails whole, as it should.
                note = "node%d: %d reloads failed: %s" % (k, len(failed), failed[0].strip())
                (print if self.args.pause else self.errors.append)(note)
        return bad

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--wild", action="store_true")
    ap.add_argument("--limits", action="store_true")
    ap.add_argument("--pause", type=float, default=0)
    ap.add_argument("--reload", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    failed = 0
    for i in range(args.runs):
        nats = NatsCluster(3) if args.cluster else None
        run = None
        try:
            if nats:
                nats.start_all()
            run = Run(args, nats)
            run.start()
            bad = run.go()
            publishes = len(run.acked["*"])
            print("run %d: %d clients, %d of them missed or repeated a message; %d publishes "
                  "acknowledged%s" % (i + 1, len(run.results), bad, publishes,
                                      "; " + "; ".join(run.errors[:3]) if run.errors else ""))
            failed += bad > 0 or bool(run.errors)
        finally:
            if run:
                run.close()
            if nats:
                nats.cleanup()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
