"""Crash safety: rounds of "publish from several threads, SIGKILL the server
at a random moment, restart on the same data directory", checking after
each restart, with `sluice dump` beside the running server and with a
long-poll replay, that

  - every acknowledged message is there, with the ID and data its publisher
    was given, in ID order, once;
  - nothing is there that was not published (only a publish whose answer
    the kill cut off may or may not be there);
  - IDs never go backwards across rounds: every seq handed out in a round is
    above every seq the store held before it, and each round has its own
    epoch.

Durable mode (the default: a publish is acknowledged after fsync) and
relaxed mode (no fsync per commit; a killed process still loses nothing,
the kernel holds the pages).  The test topics match `crash.*`, whose
backlog (apps/storage_app.lua) is large enough that retention never
removes an acknowledged message.

Bounded: ROUNDS rounds (SLUICE_CRASH_ROUNDS, default 6), each a few
seconds.  The random seed is printed and can be fixed with
SLUICE_CRASH_SEED.  The harness's clean-exit check is bypassed for the
killed processes only (exit_expected), never for the last server, which
must stop cleanly.
"""

import os
import random
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SluiceTestCase, app
from test_storage import (LongPollSub, PublisherThread, collect, epoch_of,
                          publish_many, quiet, seq_of, sluice_dump, STORAGE_APP)

ROUNDS = int(os.environ.get("SLUICE_CRASH_ROUNDS", "6"))
PUBLISHERS = 4
TOPICS = ["crash.a", "crash.b"]


class CrashTest(SluiceTestCase):

    def setUp(self):
        self.seed = int(os.environ.get("SLUICE_CRASH_SEED") or random.randrange(1 << 30))
        sys.stderr.write("[seed %d] " % self.seed)
        self.rnd = random.Random(self.seed)

    def msg(self, text):
        return "%s (seed %d)" % (text, self.seed)

    def check_store(self, s, markers, acked, in_flight):
        """The store as `sluice dump` and a long-poll replay see it: every
        acknowledged (id, data) present; every entry acknowledged or cut off
        in flight; seqs strictly increasing.  Returns the largest seq."""
        top = 0
        for t in TOPICS:
            d = sluice_dump(s.data_dir, t)
            got = [(m["id"], m["data"]) for m in d]
            seqs = [seq_of(i) for i, _ in got]
            self.assertEqual(seqs, sorted(set(seqs)), self.msg("%s: seqs not increasing" % t))
            datas = [x for _, x in got]
            self.assertEqual(len(datas), len(set(datas)), self.msg("%s: a message twice" % t))
            by_data = dict((x, i) for i, x in got)
            for mid, data in acked[t]:
                self.assertIn(data, by_data, self.msg("%s: acknowledged %s (%s) lost"
                                                      % (t, mid, data)))
                self.assertEqual(by_data[data], mid, self.msg("%s: %s stored under another ID"
                                                              % (t, data)))
            known = set(x for _, x in acked[t]) | in_flight[t]
            extra = [x for x in datas if x not in known]
            self.assertEqual(extra, [], self.msg("%s: messages nobody published" % t))
            self.assertEqual(got[0][0], markers[t])
            # The same through the server: long-poll pages from the marker.
            sub = LongPollSub(s, "/topics/" + t, markers[t], limit=1000)
            replay = collect(sub, len(got) - 1, timeout=30)
            self.assertEqual([(m["id"], m["data"]) for m in replay], got[1:],
                             self.msg("%s: long-poll replay differs from the dump" % t))
            self.assertEqual(quiet(sub, 0.1), [])
            top = max([top] + seqs)
        return top

    def crash_rounds(self, app_path, rounds):
        data = self.tmpdir()
        s = self.start(app=app_path, data_dir=data)
        markers = dict((t, publish_many(s, t, ["marker " + t])[0]) for t in TOPICS)
        acked = dict((t, [(markers[t], "marker " + t)]) for t in TOPICS)
        in_flight = dict((t, set()) for t in TOPICS)
        epochs = {epoch_of(markers[TOPICS[0]])}
        store_top = max(seq_of(m) for m in markers.values())
        total = 0
        for r in range(rounds):
            pubs = [PublisherThread(s, TOPICS[i % len(TOPICS)], "r%d.p%d" % (r, i),
                                    max_count=100000, seconds=10.0)
                    for i in range(PUBLISHERS)]
            for p in pubs:
                p.start()
            # Kill mid-stream: once every publisher has had an answer, after
            # a random delay.
            deadline = time.monotonic() + 5
            while not all(p.acked for p in pubs) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(self.rnd.uniform(0.0, 1.0))
            s.exit_expected = True  # this one is killed on purpose
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(timeout=10)
            for p in pubs:
                p.join(timeout=15)
                self.assertFalse(p.is_alive())
            round_ids = []
            for p in pubs:
                acked[p.topic] += p.acked
                in_flight[p.topic].update(p.unacked)
                round_ids += [m for m, _ in p.acked]
                # each publisher's acknowledgements come in ID order
                seqs = [seq_of(m) for m, _ in p.acked]
                self.assertEqual(seqs, sorted(set(seqs)), self.msg("round %d" % r))
            total += len(round_ids)
            if round_ids:
                self.assertGreater(min(seq_of(m) for m in round_ids), store_top,
                                   self.msg("round %d: an ID at or below the store's "
                                            "newest before the round" % r))
                round_epochs = {epoch_of(m) for m in round_ids}
                self.assertEqual(len(round_epochs), 1, self.msg("round %d" % r))
                if r == 0:  # the run that published the markers
                    self.assertEqual(round_epochs, epochs, self.msg("round 0"))
                else:
                    self.assertFalse(round_epochs & epochs,
                                     self.msg("round %d: epoch reused" % r))
                epochs |= round_epochs
            # Restart on the same directory and look.
            s = self.start(app=app_path, data_dir=data)
            store_top = self.check_store(s, markers, acked, in_flight)
            if round_ids:
                self.assertGreaterEqual(store_top, max(seq_of(m) for m in round_ids))
        self.assertGreater(total, rounds, self.msg("hardly anything was acknowledged"))
        sys.stderr.write("[%d rounds, %d acknowledged, %d cut off in flight] "
                         % (rounds, total, sum(len(x) for x in in_flight.values())))
        # After the last crash: resuming from the markers on one multi-topic
        # connection gives both topics merged in ID order.
        got = []
        for t in TOPICS:
            got += [(m["id"], m["data"]) for m in sluice_dump(data, t)]
        got.sort(key=lambda x: seq_of(x[0]))
        first = min(markers.values(), key=seq_of)
        sub = LongPollSub(s, "/multi/%s/%s" % tuple(TOPICS), first, limit=1000)
        replay = collect(sub, len(got) - 1, timeout=30)
        self.assertEqual([(m["id"], m["data"]) for m in replay], got[1:])
        # And the service goes on.
        after = publish_many(s, TOPICS[0], ["after the crashes"])
        self.assertGreater(seq_of(after[0]), store_top)
        self.assertStopsCleanly(s)

    def test_kill_durable(self):
        self.crash_rounds(STORAGE_APP, ROUNDS)

    def test_kill_relaxed(self):
        self.crash_rounds(app("storage_relaxed.lua"), max(2, ROUNDS // 2))


if __name__ == "__main__":
    unittest.main()
