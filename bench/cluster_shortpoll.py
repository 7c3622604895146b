#!/usr/bin/python3
"""bench/cluster_shortpoll.py SLUICE_BIN [SECONDS] [--behind]: caught-up
short polls per second on one cluster node (one worker, a stream of three
replicas on three nats-server on loopback): `wrk -t1 -c16` asks for one
topic after its newest message with `timeout=0`.  Prints wrk's rate and
latency, and the CPU seconds of the node and of the three nats-server.  In
cluster mode such a poll asks the stream for its horizon (docs/cluster.md,
"Resume on any node"); this measures that price.  With --behind each poll
asks from the message before the newest, so it reads one message: the
price of a resume that has something to read (three requests)."""
import subprocess
import sys

from cluster_node import ClusterNode, cpu_seconds

args = [a for a in sys.argv[1:] if a != "--behind"]
behind = "--behind" in sys.argv[1:]
binary = args[0]
seconds = int(args[1]) if len(args) > 1 else 10
node = ClusterNode(binary)
port = node.port
try:
    ids = [node.publish("x"), node.publish("x")]
    last = ids[0] if behind else ids[1]
    pids = node.pids()
    before = [cpu_seconds(pid) for pid in pids]
    out = subprocess.run(["wrk", "-t1", "-c16", "-d%ds" % seconds,
                          "http://127.0.0.1:%d/topics/x?since=%s&timeout=0" % (port, last)],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
    for line in out.splitlines():
        if "Requests/sec" in line or "Latency" in line or "Non-2xx" in line:
            print(line.strip())
    print("sluice CPU: %.2f s, nats-server CPU: %.2f s, in %d s" % (used[0], sum(used[1:]), seconds))
finally:
    node.close()
