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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from harness import free_ports  # noqa: E402
from nats_cluster import NatsCluster  # noqa: E402

args = [a for a in sys.argv[1:] if a != "--behind"]
behind = "--behind" in sys.argv[1:]
binary = args[0]
seconds = int(args[1]) if len(args) > 1 else 10
work = tempfile.mkdtemp(prefix="sluice-bench-")
nats = NatsCluster(3)
nats.start_all()
port = free_ports(1)[0]
with open(os.path.join(HERE, "..", "scripts", "default.lua")) as f:
    src = f.read()
anchor = 'local sluice = require "sluice"\n'
src = src.replace(anchor, anchor + 'sluice.config{cluster = {servers = "%s", replicas = 3}}\n'
                  % nats.urls(), 1)
app = os.path.join(work, "app.lua")
with open(app, "w") as f:
    f.write(src)
node = subprocess.Popen([binary, "-l", "127.0.0.1:%d" % port, "-d", work, "-w", "1", app],
                        stderr=subprocess.DEVNULL)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


try:
    ids = []
    for _ in range(100):
        try:
            req = urllib.request.Request("http://127.0.0.1:%d/topics/x" % port, data=b"m",
                                         method="POST")
            ids.append(json.load(urllib.request.urlopen(req, timeout=5))["id"])
            if len(ids) == 2:
                break
        except OSError:
            time.sleep(0.1)
    if len(ids) < 2:
        sys.exit("the node did not come up")
    last = ids[0] if behind else ids[1]
    pids = [node.pid] + [p.pid for p in nats.procs]
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
    node.terminate()
    node.wait(10)
    nats.cleanup()
    shutil.rmtree(work, ignore_errors=True)
