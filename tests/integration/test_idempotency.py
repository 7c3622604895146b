"""Idempotency-Key on publish (SPEC.md, "Publishing exactly once"; issue
25, item 15), judged from outside: a retry with the same key and topic
within the dedup window answers the first publish's ID and stores nothing
new, across a clean restart and a kill -9; another topic with the same
key is a new message; after the window a retry is new; concurrent retries
all get one ID and store one message; a key of a bad length is 400.
"""

import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RawConn, SluiceTestCase, app

IDEM_APP = app("idempotency.lua")


class IdempotencyTest(SluiceTestCase):

    def publish(self, s, topic, body, key=None, conn=None):
        c = conn or self.conn(s)
        headers = [("Idempotency-Key", key)] if key is not None else []
        r = c.request("POST", "/topics/" + topic, headers, body=body.encode())
        return r

    def ok_id(self, r):
        self.assertEqual(r.status, 200, r)
        return r.json()["id"]

    def stored(self, s, topic):
        r = self.conn(s).request("GET", "/topics/%s?since=1-0&timeout=0&limit=1000" % topic)
        self.assertEqual(r.status, 200, r)
        return [m["data"] for m in r.json()["messages"]]

    def test_retry_same_id_and_restarts(self):
        d = self.tmpdir()
        s = self.start(data_dir=d)
        first = self.ok_id(self.publish(s, "orders", "pay 10", "k-1"))
        again = self.ok_id(self.publish(s, "orders", "pay 10 (retry)", "k-1"))
        self.assertEqual(again, first)
        self.assertEqual(self.stored(s, "orders"), ["pay 10"])
        # Another topic, the same key: a message of its own.
        other = self.ok_id(self.publish(s, "refunds", "pay 10", "k-1"))
        self.assertNotEqual(other, first)
        # Without a key: always a new message.
        a = self.ok_id(self.publish(s, "orders", "plain"))
        b = self.ok_id(self.publish(s, "orders", "plain"))
        self.assertNotEqual(a, b)
        self.assertEqual(self.stored(s, "orders"), ["pay 10", "plain", "plain"])

        # A clean restart (everything checkpointed into LMDB).
        s.stop()
        s = self.start(data_dir=d)
        self.assertEqual(self.ok_id(self.publish(s, "orders", "x", "k-1")), first)
        # kill -9 right after a keyed publish: the key is in the log record.
        logged = self.ok_id(self.publish(s, "orders", "pay 20", "k-2"))
        s.signal(signal.SIGKILL)
        s.wait_exit(10)
        s = self.start(data_dir=d)
        self.assertEqual(self.ok_id(self.publish(s, "orders", "pay 20", "k-2")), logged)
        self.assertEqual(self.ok_id(self.publish(s, "orders", "pay 10", "k-1")), first)
        self.assertEqual(self.stored(s, "orders"), ["pay 10", "plain", "plain", "pay 20"])
        body = self.conn(s).get("/metrics").body.decode()
        self.assertRegex(body, r"(?m)^sluice_publish_duplicates_total [1-9]")

    def test_no_delivery_of_a_retry(self):
        s = self.start()
        first = self.ok_id(self.publish(s, "t", "once", "k"))
        # A subscriber waiting after the first message hears nothing of
        # the retry.
        result = {}

        def poll():
            c = RawConn.tcp("127.0.0.1", s.port, 10)
            r = c.request("GET", "/topics/t?since=%s&timeout=1" % first)
            result["messages"] = r.json()["messages"]
            c.close()

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.2)
        self.assertEqual(self.ok_id(self.publish(s, "t", "once", "k")), first)
        t.join(15)
        self.assertEqual(result.get("messages"), [])

    def test_bad_key_length(self):
        s = self.start()
        r = self.publish(s, "t", "x", "")
        self.assertJsonError(r, 400)
        r = self.publish(s, "t", "x", "k" * 201)
        self.assertJsonError(r, 400)
        self.ok_id(self.publish(s, "t", "x", "k" * 200))
        self.assertEqual(self.stored(s, "t"), ["x"])

    def test_concurrent_retries(self):
        s = self.start()
        n = 16
        ids, errors = [], []
        barrier = threading.Barrier(n)

        def one():
            try:
                c = RawConn.tcp("127.0.0.1", s.port, 10)
                barrier.wait(10)
                r = c.request("POST", "/topics/conc", [("Idempotency-Key", "same")],
                              body=b"payload")
                ids.append(r.json()["id"] if r.status == 200 else r.status)
                c.close()
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), 1, ids)
        self.assertEqual(self.stored(s, "conc"), ["payload"])

    def test_window_and_lua(self):
        s = self.start(app=IDEM_APP)
        first = self.ok_id(self.publish(s, "w", "a", "k"))
        self.assertEqual(self.ok_id(self.publish(s, "w", "b", "k")), first)
        time.sleep(1.3)  # the app's window is one second
        later = self.ok_id(self.publish(s, "w", "c", "k"))
        self.assertNotEqual(later, first)
        self.assertEqual(self.stored(s, "w"), ["a", "c"])
        # From Lua: the second publish with the key gets the first's ID;
        # an empty key is refused (nil, reason), not raised.
        v = self.conn(s).request("POST", "/twice/lua").json()
        self.assertEqual(v["a"], v["b"])
        self.assertIs(v["c"], False)
        self.assertIn("idempotency key", v["err"])
        self.assertEqual(self.stored(s, "lua"), ["one"])


if __name__ == "__main__":
    unittest.main()
