#!/usr/bin/env python3
"""A stand-in for the app's backend, for examples/auth-callout: it allows
the users listed in ALLOW (topic "private.*" only for "admin"), and keeps
the join/leave events it is sent (GET /events lists them).

    python3 examples/auth-callout/backend.py [PORT]      (default 9000)
"""
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALLOW = {"alice", "bob", "admin"}
events = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, code, value):
        body = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/authorize":
            user, topic = q.get("user", ""), q.get("topic", "")
            ok = user in ALLOW and (not topic.startswith("private.") or user == "admin")
            self.answer(200 if ok else 403, {"allow": ok})
        elif u.path == "/events":
            with lock:
                self.answer(200, list(events))
        else:
            self.answer(404, {"error": "no route"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        if urllib.parse.urlsplit(self.path).path != "/events":
            return self.answer(404, {"error": "no route"})
        with lock:
            events.append(json.loads(body))
        self.answer(200, {"ok": True})


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    print("backend on 127.0.0.1:%d" % httpd.server_address[1], flush=True)
    httpd.serve_forever()
