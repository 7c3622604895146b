#!/usr/bin/python3
"""bench/cluster_shortpoll.py SLUICE_BIN [SECONDS]: caught-up short polls
per second on one cluster node (one worker, a stream of three replicas on
three nats-server on loopback): `wrk -t1 -c16` asks for one topic after its
newest message with `timeout=0`.  Prints wrk's rate and latency, and the
node's CPU seconds.  In cluster mode such a poll asks the stream for its
horizon (docs/cluster.md, "Resume on any node"); this measures that price."""
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

binary = sys.argv[1]
seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
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
    last = None
    for _ in range(100):
        try:
            req = urllib.request.Request("http://127.0.0.1:%d/topics/x" % port, data=b"m",
                                         method="POST")
            last = json.load(urllib.request.urlopen(req, timeout=5))["id"]
            break
        except OSError:
            time.sleep(0.1)
    if last is None:
        sys.exit("the node did not come up")
    before = cpu_seconds(node.pid)
    out = subprocess.run(["wrk", "-t1", "-c16", "-d%ds" % seconds,
                          "http://127.0.0.1:%d/topics/x?since=%s&timeout=0" % (port, last)],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    used = cpu_seconds(node.pid) - before
    for line in out.splitlines():
        if "Requests/sec" in line or "Latency" in line or "Non-2xx" in line:
            print(line.strip())
    print("sluice CPU: %.2f s in %d s" % (used, seconds))
finally:
    node.terminate()
    node.wait(10)
    nats.cleanup()
    shutil.rmtree(work, ignore_errors=True)
