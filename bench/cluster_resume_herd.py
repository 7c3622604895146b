#!/usr/bin/python3
"""bench/cluster_resume_herd.py SLUICE_BIN [CLIENTS] [TOPICS] [BEHIND]: many
clients resuming on one cluster node at once, as when the node their
clients were on dies (one worker; three nats-server, three replicas).
Each of TOPICS topics gets one message, then BEHIND more (default 2, every
topic's interleaved with the others'); then CLIENTS SSE clients (default
1,000), spread over the topics, connect at once with Last-Event-ID = their
topic's first message, and each must receive exactly its BEHIND messages,
in order.  Prints how long until the last client had them all, the
answers that were not 200, and the CPU seconds of the node and of the
three nats-server meanwhile: the price of a herd of resume reads
(docs/cluster.md, "Resume on any node")."""
import selectors
import socket
import sys
import time

from cluster_node import ClusterNode, cpu_seconds

binary = sys.argv[1]
clients = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
topics = int(sys.argv[3]) if len(sys.argv) > 3 else 100
behind = int(sys.argv[4]) if len(sys.argv) > 4 else 2
DEADLINE_S = 120

node = ClusterNode(binary)
try:
    first = [node.publish("herd.%d" % t) for t in range(topics)]
    want = [[] for _ in range(topics)]
    for k in range(behind):
        for t in range(topics):
            want[t].append(node.publish("herd.%d" % t, b"m%d" % k))
    pids = node.pids()
    before = [cpu_seconds(pid) for pid in pids]
    sel = selectors.DefaultSelector()
    state = {}
    t0 = time.monotonic()
    for i in range(clients):
        t = i % topics
        s = socket.create_connection(("127.0.0.1", node.port))
        s.sendall(("GET /topics/herd.%d HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                   "Last-Event-ID: %s\r\n\r\n" % (t, first[t])).encode())
        s.setblocking(False)
        state[s] = {"topic": t, "buf": b""}
        sel.register(s, selectors.EVENT_READ)
    done, bad, wrong = 0, 0, 0
    while done + bad < clients and time.monotonic() - t0 < DEADLINE_S:
        for key, _ in sel.select(timeout=1):
            s, st = key.fileobj, state[key.fileobj]
            chunk = s.recv(65536)
            st["buf"] += chunk
            if not chunk or (st["buf"].startswith(b"HTTP/1.1 ") and
                             not st["buf"].startswith(b"HTTP/1.1 200")):
                bad += 1
                sel.unregister(s)
                s.close()
                continue
            ids = [line[4:].decode() for line in st["buf"].split(b"\n") if line.startswith(b"id: ")]
            if len(ids) >= behind:
                if ids[:behind] != want[st["topic"]]:
                    wrong += 1
                done += 1
                sel.unregister(s)
                s.close()
    took = time.monotonic() - t0
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
    print("%d clients, %d topics, %d behind: %d caught up in %.2f s, %d refused or cut, "
          "%d with other messages, %d still waiting" %
          (clients, topics, behind, done, took, bad, wrong, clients - done - bad))
    print("sluice CPU: %.2f s, nats-server CPU: %.2f s" % (used[0], sum(used[1:])))
finally:
    node.close()
