"""The fan-out's writes, seen by strace: at most one write system call per
connection per loop pass, however many messages are queued for it.

Two SSE subscribers with small receive buffers do not read while a
publisher sends more than the server's socket buffers hold, so most of it
waits in the connections' output queues; then the subscribers read
everything. strace, attached to
the running server, records every send of every thread and every
epoll_wait, which begins each pass of the worker's loop. Between two
epoll_waits of a thread no socket may be written twice: the queue goes out
in one gathered send, and a socket that took only part of it is left until
it turns writable, instead of being asked again for an EAGAIN.

The test also checks that the queue did build up (some sends carry many
messages at once) and that both subscribers got every message once, in
order: the property is not met by an empty run."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import IO_TIMEOUT, RawConn, SluiceTestCase, app, build_request

# Fewer than the 1,024 segments one send takes (FLUSH_IOV), so a queue
# always fits one send: the one case where a second send in a pass is right
# (the socket took all of a full send and more is left) cannot arise.
MESSAGES = 1000
SIZE = 8000  # 8 MB in all: more than the server's send buffer grows to (4 MiB here)
RCVBUF = 8192  # the subscribers' receive buffers, kept small (no autotuning)
SLOW_SUBSCRIBERS = 2
ATTACH_TIMEOUT = 20.0
EVENT = re.compile(rb"id: ([^\n]+)\ndata: ([^\n]*)\n\n")

# One strace line: "TID syscall(args) = result", or the halves of a call that
# another thread interrupted: "TID syscall(args <unfinished ...>" and
# "TID <... syscall resumed>rest) = result".
LINE = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)(?: resumed>)?\(?(.*)$")
SOCKET_FD = re.compile(r"^(\d+)<TCP(?:v6)?:\[([^\]]*)\]>")
RESULT = re.compile(r"\) += (-?\d+)")  # "= -1 EAGAIN (...)" too
IOVLEN = re.compile(r"msg_iovlen=(\d+)")


def parse_trace(path):
    """Per thread, the list of its events in order: ("pass",) for each
    finished epoll_wait, ("send", fd, peer, iovlen, result) for each
    finished send to a TCP socket."""
    threads = {}
    pending = {}  # tid -> (syscall, args so far) of an unfinished call
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            tid, name, rest = int(m.group(1)), m.group(2), m.group(3)
            if rest.endswith("<unfinished ...>"):
                pending[tid] = (name, rest)
                continue
            if raw.split(None, 1)[1].startswith("<..."):
                name, head = pending.pop(tid, (name, ""))
                rest = head.replace("<unfinished ...>", "") + rest
            events = threads.setdefault(tid, [])
            if name == "epoll_wait":
                events.append(("pass",))
            elif name in ("sendmsg", "sendto", "writev", "write"):
                fd = SOCKET_FD.match(rest)
                res = RESULT.findall(rest)
                if not fd or not res:
                    continue
                iovlen = IOVLEN.search(rest)
                events.append(("send", int(fd.group(1)), fd.group(2),
                               int(iovlen.group(1)) if iovlen else 1,
                               int(res[-1])))
    return threads


class FanoutWritesTest(SluiceTestCase):
    def attach_strace(self, pid, out):
        """strace on every thread of pid, from now on; returns its Popen once
        every thread is traced."""
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-yy", "-s", "0", "-e", "signal=none",
             "-e", "trace=epoll_wait,sendmsg,sendto,writev,write",
             "-o", out, "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.addCleanup(self.stop_strace, proc)
        deadline = time.monotonic() + ATTACH_TIMEOUT
        tasks = "/proc/%d/task" % pid
        while True:
            traced = []
            for tid in os.listdir(tasks):
                try:
                    with open("%s/%s/status" % (tasks, tid)) as f:
                        tracer = re.search(r"^TracerPid:\s+(\d+)", f.read(), re.M)
                except FileNotFoundError:
                    continue
                traced.append(tracer and int(tracer.group(1)) == proc.pid)
            if traced and all(traced):
                return proc
            if proc.poll() is not None:
                self.fail("strace could not attach: %s" % proc.stderr.read().decode())
            if time.monotonic() > deadline:
                self.fail("strace did not attach to every thread within %.0fs"
                          % ATTACH_TIMEOUT)
            time.sleep(0.05)

    @staticmethod
    def stop_strace(proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # detaches; the server goes on
            try:
                proc.wait(ATTACH_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()

    def subscribe(self, srv):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.settimeout(IO_TIMEOUT)
        s.connect((srv.host, srv.port))
        c = RawConn(s)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/topics/queued", [("Accept", "text/event-stream")]))
        _, status, _, _, raw = c.read_head()
        self.assertEqual(status, 200, raw)
        return c

    def test_one_send_per_connection_per_pass(self):
        self.assertIsNotNone(shutil.which("strace"), "strace is not installed (./dev.sh test installs it)")
        srv = self.start(app("fanout_writes.lua"), args=["-w", "1"])
        trace = os.path.join(self.tmpdir(), "trace")
        strace = self.attach_strace(srv.proc.pid, trace)

        slow = [self.subscribe(srv) for _ in range(SLOW_SUBSCRIBERS)]
        ports = {"127.0.0.1:%d" % c.local_port() for c in slow}
        pub = self.conn(srv)
        ids = []
        for i in range(MESSAGES):
            body = b"%06d" % i + b"x" * (SIZE - 6)
            r = pub.request("POST", "/topics/queued", body=body)
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"].encode())
        last = b"%06d" % (MESSAGES - 1) + b"x" * (SIZE - 6) + b"\n\n"
        for n, c in enumerate(slow):
            text = c.read_until(last)
            got = EVENT.findall(text)
            self.assertEqual([i for i, _ in got], ids, "subscriber %d" % n)
            self.assertEqual([d[:6] for _, d in got], [b"%06d" % i for i in range(MESSAGES)])
        self.stop_strace(strace)

        threads = parse_trace(trace)
        sends_to_slow = []
        for tid, events in threads.items():
            seen = {}
            for ev in events:
                if ev[0] == "pass":
                    seen.clear()
                    continue
                _, fd, peer, iovlen, result = ev
                if any(peer.endswith("->" + p) for p in ports):
                    sends_to_slow.append((iovlen, result))
                self.assertNotIn(fd, seen, "thread %d wrote %s twice in one pass: %r then %r"
                                 % (tid, peer, seen.get(fd), ev))
                seen[fd] = ev
        self.assertTrue(sends_to_slow, "no send to the subscribers was traced")
        # The queue built up: fewer sends than messages, many in one.
        self.assertLess(len(sends_to_slow), SLOW_SUBSCRIBERS * MESSAGES)
        self.assertGreater(max(n for n, _ in sends_to_slow), 10)


if __name__ == "__main__":
    unittest.main()
