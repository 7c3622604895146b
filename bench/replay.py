#!/usr/bin/python3
"""bench/replay.py PORT TOPIC AFTER_ID COUNT: times a replay of COUNT messages
after AFTER_ID, once over SSE (one stream) and once over long-poll (pages of
1000), and prints messages per second for each."""
import json
import socket
import sys
import time
import urllib.request

port, topic, after, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def sse():
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
    s.sendall(("GET /topics/%s?last_event_id=%s HTTP/1.1\r\nHost: x\r\n"
               "Accept: text/event-stream\r\n\r\n" % (topic, after)).encode())
    start, seen, tail = time.monotonic(), 0, b""
    deadline = start + 120
    while seen < count and time.monotonic() < deadline:
        data = s.recv(1 << 20)
        if not data:
            break
        # Every event line starts after a newline; the 4-byte tail catches
        # a marker split across two reads without counting one twice.
        chunk = tail + data
        seen += chunk.count(b"\nid: ")
        tail = chunk[-4:]
    s.close()
    return seen, time.monotonic() - start


def longpoll():
    start, seen, since = time.monotonic(), 0, after
    while seen < count and time.monotonic() < start + 120:
        url = "http://127.0.0.1:%s/topics/%s?since=%s&timeout=0" % (port, topic, since)
        ans = json.load(urllib.request.urlopen(url, timeout=30))
        if not ans["messages"]:
            break
        seen += len(ans["messages"])
        since = ans["last_id"]
    return seen, time.monotonic() - start


for name, fn in (("sse", sse), ("longpoll", longpoll)):
    n, secs = fn()
    print("replay %-8s %7d messages in %6.3f s: %9.0f msg/s" % (name, n, secs, n / secs))
