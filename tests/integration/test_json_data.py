"""Messages published as JSON (issue 29, item 7): a body sent with
`Content-Type: application/json` (or `sluice.publish(..., {content_type =
"application/json"})`) that parses is marked JSON when stored; the JSON
forms that ask for it (WebSocket and long-poll with `?format=json`, the SSE
envelope of a stream over several topics) then carry the value itself in
"data" with "encoding":"json", so a client decodes once; a long-poll
without `?format=json` has the data as a string, as SPEC.md's answer.  Raw WebSocket frames and
single-topic SSE are byte for byte what was published.  A body that
claims JSON and does not parse is stored as plain data (SPEC.md: any body
is a message), counted in sluice_publish_json_invalid_total.  The mark is
durable: LMDB, the write-ahead log, a restart and a crash keep it."""

import json
import os
import re
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, SluiceTestCase, app
from nats_cluster import NatsCluster, have_nats
from test_cluster import cluster_app
from test_lua_api import WS, SSE, http

APP = app("json_data.lua")
DOC = b'{"a": [1, "x", {"b": null}],\n "c": "caf\xc3\xa9"}'
DOC_VALUE = {"a": [1, "x", {"b": None}], "c": "caf\u00e9"}


def post(server, topic, body, ctype=None, path="/topics/"):
    headers = [("Content-Type", ctype)] if ctype else []
    r = http(server, "POST", path + topic, body, headers)
    if r.status != 200:
        raise AssertionError("publish to %s: %r" % (topic, r))
    return r.json()["id"]


def items(server, topic, since="0-0", path="/topics/", fmt="&format=json"):
    r = http(server, "GET", "%s%s?since=%s&timeout=0%s" % (path, topic, since, fmt))
    if r.status != 200:
        raise AssertionError("poll %s: %r" % (topic, r))
    return r.json()["messages"]


def invalid_count(server):
    m = re.search(r"^sluice_publish_json_invalid_total (\d+)$",
                  http(server, "GET", "/metrics").text, re.M)
    return int(m.group(1)) if m else None


class DefaultAppJsonTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start()

    def test_every_transport(self):
        wsj = WS.connect(self, self.s, "/topics/doc?format=json")
        raw = WS.connect(self, self.s, "/topics/doc")
        sse = SSE.connect(self, self.s, "/topics/doc")
        mid = post(self.s, "doc", DOC, "application/json")
        env = wsj.recv_json()
        self.assertEqual(env["data"], DOC_VALUE)
        self.assertEqual(env["encoding"], "json")
        self.assertEqual((env["id"], env["topic"], env["event"]), (mid, "doc", None))
        # The raw frame and the single-topic SSE event: the bytes published.
        self.assertEqual(raw.recv_text(), DOC.decode())
        ev = sse.next_event()
        self.assertEqual(ev["data"], DOC.decode())
        self.assertEqual(ev["event"], None)
        [it] = items(self.s, "doc")
        self.assertEqual(it["data"], DOC_VALUE)
        self.assertEqual(it["encoding"], "json")
        self.assertEqual(it["id"], mid)
        # Without ?format=json a long-poll item is SPEC.md's: the text as a
        # string, no "encoding" (a client written from SPEC.md decodes it).
        [it] = items(self.s, "doc", fmt="")
        self.assertEqual((it["data"], it.get("encoding")), (DOC.decode(), None))
        self.assertEqual(it["id"], mid)

    def test_json_media_types(self):
        for i, ctype in enumerate(["application/json; charset=utf-8", "Application/JSON",
                                   " application/json ", "application/vnd.api+json"]):
            with self.subTest(ctype):
                post(self.s, "mt%d" % i, b'{"n":%d}' % i, ctype)
                [it] = items(self.s, "mt%d" % i)
                self.assertEqual((it["data"], it.get("encoding")), ({"n": i}, "json"))

    def test_other_types_stay_strings(self):
        for i, ctype in enumerate([None, "text/plain", "application/jsonx",
                                   "application/octet-stream", "application/json-seq"]):
            with self.subTest(ctype):
                post(self.s, "plain%d" % i, b'{"n":1}', ctype)
                [it] = items(self.s, "plain%d" % i)
                self.assertEqual(it["data"], '{"n":1}')
                self.assertNotIn("encoding", it)

    def test_invalid_json_is_stored_plain_and_counted(self):
        before = invalid_count(self.s)
        self.assertIsNotNone(before)
        bodies = [b'{"a":', b"", b"hello", b"[1,]", b"{'a':1}", b"\xff\xfe"]
        ws = WS.connect(self, self.s, "/topics/bad?format=json")
        for body in bodies:
            post(self.s, "bad", body, "application/json")
        got = [ws.recv_json() for _ in bodies]
        for body, env in zip(bodies[:-1], got[:-1]):
            self.assertEqual(env["data"], body.decode())
            self.assertNotIn("encoding", env)
        # Not UTF-8: base64 as ever.
        self.assertEqual(got[-1]["encoding"], "base64")
        self.assertEqual(got[-1]["data"], "//4=")
        self.assertEqual(invalid_count(self.s), before + len(bodies))

    def test_scalars_and_strings(self):
        for i, body in enumerate([b'"text"', b"42", b"true", b"null", b" [] "]):
            post(self.s, "sc%d" % i, body, "application/json")
            [it] = items(self.s, "sc%d" % i)
            self.assertEqual(it["data"], json.loads(body))
            self.assertEqual(it["encoding"], "json")


class LuaJsonTest(SluiceTestCase):
    def setUp(self):
        self.s = self.start(APP)

    def test_lua_content_type_option(self):
        post(self.s, "lj", b'{"from":"lua"}', path="/lua/", ctype=None)
        r = http(self.s, "POST", "/lua/lj?ct=application/json", b'{"from":"lua"}')
        self.assertEqual(r.status, 200, r)
        r = http(self.s, "POST", "/lua/lj?ct=application/json", b"{not json")
        self.assertEqual(r.status, 200, r)
        got = items(self.s, "lj", path="/sub/")
        self.assertEqual([m["data"] for m in got], ['{"from":"lua"}', {"from": "lua"}, "{not json"])
        self.assertEqual([m.get("encoding") for m in got], [None, "json", None])

    def test_on_publish_result_is_what_is_checked(self):
        before = invalid_count(self.s)
        for topic, body in (("op.wrap", b"[1]"), ("op.wrap", b"oops"), ("op.break", b"[2]")):
            r = http(self.s, "POST", "/lua/%s?ct=application/json" % topic, body)
            self.assertEqual(r.status, 200, r)
        wrap = items(self.s, "op.wrap", path="/sub/")
        self.assertEqual([(m["data"], m.get("encoding")) for m in wrap],
                         [({"wrapped": [1]}, "json"), ('{"wrapped":oops}', None)])
        [broken] = items(self.s, "op.break", path="/sub/")
        self.assertEqual((broken["data"], broken.get("encoding")), ("[2]!", None))
        self.assertEqual(invalid_count(self.s), before + 2)

    def test_multi_topic_sse_envelope(self):
        sse = SSE.connect(self, self.s, "/multi")
        post(self.s, "ja", DOC, path="/lua/", ctype=None)
        r = http(self.s, "POST", "/lua/jb?ct=application/json", DOC)
        self.assertEqual(r.status, 200, r)
        first, second = json.loads(sse.next_event()["data"]), json.loads(sse.next_event()["data"])
        self.assertEqual((first["topic"], first["data"]), ("ja", DOC.decode()))
        self.assertNotIn("encoding", first)
        # Its line break splits the data: lines, which EventSource joins.
        self.assertEqual((second["topic"], second["data"], second["encoding"]),
                         ("jb", DOC_VALUE, "json"))

    def test_websocket_on_message_publish(self):
        sub = WS.connect(self, self.s, "/sub/wsj?format=json")
        pub = WS.connect(self, self.s, "/wsjson/wsj")
        pub.send_text('{"hi": 1}')
        env = sub.recv_json()
        self.assertEqual((env["data"], env["encoding"]), ({"hi": 1}, "json"))


class RestartTest(SluiceTestCase):
    def check_resume(self, s, ids, since):
        got = items(s, "keep", since)
        self.assertEqual([m["id"] for m in got], ids)
        self.assertEqual([m["data"] for m in got], [DOC_VALUE, "plain", {"n": 2}])
        self.assertEqual([m.get("encoding") for m in got], ["json", None, "json"])
        ws = WS.connect(self, s, "/topics/keep?format=json&last_event_id=" + since)
        envs = [ws.recv_json() for _ in ids]
        self.assertEqual([e["data"] for e in envs], [DOC_VALUE, "plain", {"n": 2}])
        self.assertEqual([e.get("encoding") for e in envs], ["json", None, "json"])

    def publish_three(self, s):
        first = post(s, "keep", b"before", None)
        return first, [post(s, "keep", DOC, "application/json"), post(s, "keep", b"plain"),
                       post(s, "keep", b'{"n":2}', "application/json")]

    def test_restart_keeps_the_mark(self):
        d = self.tmpdir()
        s = self.start(data_dir=d)
        first, ids = self.publish_three(s)
        self.assertStopsCleanly(s)  # a clean stop checkpoints into LMDB
        s = self.start(data_dir=d)
        self.check_resume(s, ids, first)

    def test_crash_keeps_the_mark(self):
        # Killed before a checkpoint: the messages come back from the log.
        d = self.tmpdir()
        s = self.start(data_dir=d)
        first, ids = self.publish_three(s)
        s.exit_expected = True
        s.proc.send_signal(signal.SIGKILL)
        s.wait_exit()
        s = self.start(data_dir=d)
        self.check_resume(s, ids, first)


@unittest.skipUnless(have_nats(), "nats-server not installed (dev.sh installs it)")
class ClusterJsonTest(SluiceTestCase):
    """The mark crosses nodes: a header on the JetStream message."""

    def node(self):
        d = self.tmpdir()
        return self.start(app=cluster_app(d, servers=self.nats.urls(), replicas=1))

    def test_json_crosses_nodes_live_and_replayed(self):
        self.nats = NatsCluster(1)
        self.addCleanup(self.nats.cleanup)
        self.nats.start_all()
        a, b = self.node(), self.node()
        ws = WS.connect(self, b, "/topics/cj?format=json")
        post(a, "cj", b"plain")
        mid = post(a, "cj", DOC, "application/json")
        live = [ws.recv_json(), ws.recv_json()]
        self.assertEqual([m["data"] for m in live], ["plain", DOC_VALUE])
        self.assertEqual([m.get("encoding") for m in live], [None, "json"])
        self.assertEqual(live[1]["id"], mid)
        got = items(b, "cj", "x-0")  # unknown ID: a replay read from the stream
        self.assertEqual([m["data"] for m in got], ["plain", DOC_VALUE])
        self.assertEqual([m.get("encoding") for m in got], [None, "json"])


if __name__ == "__main__":
    unittest.main()
