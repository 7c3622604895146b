"""A damaged log after a crash (issue 25, item 11): ten acknowledged
messages, kill -9, one byte of the fifth one's record flipped in the log.
The server must refuse to start with an error that names the file and the
offset (not start with messages 1-4 and hand out seq 5 again); `sluice
check` reports the damage; `sluice check --repair` keeps every good record;
then the server starts with the nine good messages and goes on after them.
"""
import os
import shutil
import signal
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, ServerError, run_sluice
from test_storage import publish_many, seq_of, sluice_dump

TOPIC = "dmg"
DATAS = ["m%02d" % i for i in range(1, 11)]


def find_record(data_dir, needle):
    """(file, offset) of the only log record holding needle."""
    hits = []
    for name in ("wal", "wal2"):
        with open(os.path.join(data_dir, name), "rb") as f:
            buf = f.read()
        at = buf.find(needle)
        while at >= 0:
            hits.append((name, at))
            at = buf.find(needle, at + 1)
    return hits


class LogDamageTest(unittest.TestCase):
    def crashed_store(self):
        """A data directory whose logs hold the ten acknowledged messages
        (a checkpoint can come first: then try again, bounded)."""
        for _ in range(5):
            data = tempfile.mkdtemp(prefix="sluice-dmg-")
            self.addCleanup(shutil.rmtree, data, True)
            s = Server(data_dir=data)
            s.start()
            ids = publish_many(s, TOPIC, DATAS)
            s.exit_expected = True
            s.signal(signal.SIGKILL)
            s.wait_exit()
            s.kill()
            rc, out, err = run_sluice(["check", "-d", data])
            self.assertEqual(rc, 0, out + err)
            if "10 messages to replay" in out:
                return data, ids
        self.fail("every attempt was checkpointed before the kill")

    def test_damage_is_refused_reported_and_repaired(self):
        data, ids = self.crashed_store()
        hits = find_record(data, b"m05")
        self.assertEqual(len(hits), 1, hits)
        name, at = hits[0]
        with open(os.path.join(data, name), "r+b") as f:
            f.seek(at + 1)
            f.write(b"X")

        s = Server(data_dir=data)
        s.exit_expected = True  # it must refuse to start
        with self.assertRaises(ServerError) as cm:
            s.start()
        s.kill()
        self.assertIn("%s/%s: damaged log record at offset" % (data, name), str(cm.exception))
        self.assertIn("sluice check", str(cm.exception))

        rc, out, err = run_sluice(["check", "-d", data])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("damaged log record", out)
        self.assertIn("followed by 5 good records from seq %d" % seq_of(ids[5]), out)

        rc, out, err = run_sluice(["check", "--repair", "-d", data])
        self.assertEqual(rc, 0, out + err)
        self.assertIn("result: clean", out)

        got = sluice_dump(data, TOPIC)
        self.assertEqual([m["id"] for m in got], ids[:4] + ids[5:])
        self.assertEqual([m["data"] for m in got], DATAS[:4] + DATAS[5:])
        s = Server(data_dir=data)
        s.start()
        self.addCleanup(s.kill)
        after = publish_many(s, TOPIC, ["after"])
        self.assertGreater(seq_of(after[0]), seq_of(ids[-1]))

    def test_torn_last_write_is_not_damage(self):
        # The last record alone: what a crash during its write leaves.
        data, ids = self.crashed_store()
        name, at = find_record(data, b"m10")[0]
        with open(os.path.join(data, name), "r+b") as f:
            f.seek(at + 1)
            f.write(b"X")
        s = Server(data_dir=data)
        s.start()
        self.addCleanup(s.kill)
        got = sluice_dump(data, TOPIC)
        self.assertEqual([m["id"] for m in got], ids[:9])


if __name__ == "__main__":
    unittest.main()
