"""A one-worker sluice node on a 3-server NATS cluster (three replicas) on
loopback, for the cluster benchmarks (cluster_shortpoll.py,
cluster_resume_herd.py): the default app, and the CPU seconds of a
process.  Standard library and the tests' NATS helper only."""
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


class ClusterNode:
    def __init__(self, binary):
        self.work = tempfile.mkdtemp(prefix="sluice-bench-")
        self.nats = NatsCluster(3)
        self.nats.start_all()
        self.port = free_ports(1)[0]
        with open(os.path.join(HERE, "..", "scripts", "default.lua")) as f:
            src = f.read()
        anchor = 'local sluice = require "sluice"\n'
        src = src.replace(anchor, anchor + 'sluice.config{cluster = {servers = "%s", replicas = 3}}\n'
                          % self.nats.urls(), 1)
        app = os.path.join(self.work, "app.lua")
        with open(app, "w") as f:
            f.write(src)
        # PERF_CMD: a command line to run the node under ("perf record -g
        # -o FILE --"); the CPU then printed is that command's, not the node's.
        self.proc = subprocess.Popen(os.environ.get("PERF_CMD", "").split() +
                                     [binary, "-l", "127.0.0.1:%d" % self.port, "-d", self.work,
                                      "-w", "1", app], stderr=subprocess.DEVNULL)

    def publish(self, topic, body=b"m", tries=100):
        """The ID of a publish; retried while the node comes up."""
        for _ in range(tries):
            try:
                req = urllib.request.Request("http://127.0.0.1:%d/topics/%s" % (self.port, topic),
                                             data=body, method="POST")
                return json.load(urllib.request.urlopen(req, timeout=5))["id"]
            except OSError:
                time.sleep(0.1)
        sys.exit("the node did not come up")

    def pids(self):
        """The node's pid, then the nats-servers'."""
        return [self.proc.pid] + [p.pid for p in self.nats.procs]

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.nats.cleanup()
        shutil.rmtree(self.work, ignore_errors=True)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
