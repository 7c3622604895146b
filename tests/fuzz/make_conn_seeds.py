#!/usr/bin/python3
"""tests/fuzz/make_conn_seeds.py: writes the seed corpus of fuzz_conn
(tests/fuzz/seeds/fuzz_conn/) in the input format fuzz_conn.c describes.

The seeds are the exchanges the integration tests make (test_http.py,
test_ws_protocol.py, test_sse.mjs, test_longpoll.mjs, test_limits.py,
test_lua_api.py, test_slow_consumer.py), one client script each, on the
default app and on tests/fuzz/fuzz_conn_app.lua: requests for each
transport, an Upgrade with a frame behind it in the same packet, pipelined
requests, pings, close frames, slow readers, shutdown and reload with
streams open.  Run it again after changing the format:

    /usr/bin/python3 tests/fuzz/make_conn_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "fuzz_conn")

DEFAULT, LUA = 0, 1
SMALL_LIMITS, SMALL_BUFFERS, TLS = 2, 4, 0x38
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def send(ci, data):
    return bytes([0 | ci << 3]) + struct.pack("<H", len(data)) + data


def send_raw(ci, data):
    """Onto the socket, beside the client's TLS session."""
    return bytes([0x80 | ci << 3]) + struct.pack("<H", len(data)) + data


def run(n=1):
    return bytes([1, n - 1])


def mute(ci):
    return bytes([2 | ci << 3])


def shut(ci):
    return bytes([3 | ci << 3])


def close(ci):
    return bytes([4 | ci << 3])


def no_pass(op):
    """The op without the loop pass that follows it."""
    return bytes([op[0] | 0x40]) + op[1:]


def timer(ci):
    return bytes([5 | ci << 3])


STOP = bytes([6])
RELOAD = bytes([7])


def frame(op, payload=b"", fin=True, mask=b"\0\0\0\0"):
    """A client frame (masked, as clients must; a zero key keeps the
    payload readable and lets mutations stay valid)."""
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def text(s):
    return frame(1, s.encode() if isinstance(s, str) else s)


PING = lambda p=b"": frame(9, p)
CLOSE = lambda code=1000: frame(8, struct.pack(">H", code))


def get(path, *headers, method="GET", body=b"", version="1.1"):
    lines = [f"{method} {path} HTTP/{version}", "Host: x"] + list(headers)
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ws(path, *headers):
    return get(path, "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY.decode()}",
               "Sec-WebSocket-Version: 13", *headers)


def post(path, body, *headers):
    return get(path, *headers, method="POST", body=body)


SEEDS = {}


def seed(name, settings, *ops):
    SEEDS[name] = bytes([settings]) + b"".join(ops)


# --- plain HTTP (test_http.py) ------------------------------------------------
seed("healthz", DEFAULT, send(0, get("/healthz")), run(2))
seed("pipelined", DEFAULT,
     send(0, get("/healthz") + get("/metrics") + get("/nope") + get("/healthz", method="HEAD")), run(3))
seed("pipelined_split", DEFAULT,
     send(0, get("/healthz")[:7]), run(), send(0, get("/healthz")[7:] + get("/healthz")[:20]), run(),
     send(0, get("/healthz")[20:]), run())
seed("http10", DEFAULT, send(0, get("/healthz", version="1.0")),
     send(1, get("/healthz", "Connection: keep-alive", version="1.0") + get("/healthz")), run(2))
seed("chunked_post", DEFAULT,
     send(0, b"POST /topics/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5;ext=1\r\nhello\r\n0\r\n\r\n" + get("/healthz")), run(3))
seed("expect_continue", DEFAULT,
     send(0, b"POST /topics/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
     run(), send(0, b"abc"), run(3))
seed("bad_requests", DEFAULT, send(0, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
     send(1, b"\x00\x01garbage\r\n\r\n"), send(2, b"GET /topics/a HTTP/2.0\r\n\r\n"),
     send(3, get("/topics/bad%20name") + get("/topics/a?timeout=abc")), run(2))
seed("big_header", DEFAULT | SMALL_LIMITS, send(0, get("/healthz", "X-Pad: " + "p" * 3000)), run(2))
seed("half_close", DEFAULT, send(0, get("/healthz")[:10]), shut(0), run(2),
     send(1, get("/healthz")), shut(1), run(2))
seed("header_timeout", DEFAULT, send(0, b"GET /healthz HTTP/1.1\r\nHo"), timer(0), run(2),
     send(1, get("/healthz")), run(), timer(1), run())
# An Upgrade the app answers as plain HTTP, then a pipelined request.
seed("upgrade_h2c_pipelined", DEFAULT,
     send(0, get("/healthz", "Upgrade: h2c", "Connection: Upgrade") + get("/healthz")), run(2))
seed("upgrade_post_pipelined", DEFAULT,
     send(0, post("/topics/a", b"m", "Upgrade: websocket", "Connection: Upgrade") + get("/healthz")), run(3))
seed("upgrade_longpoll_pipelined", DEFAULT,
     send(0, get("/topics/a?timeout=0", "Upgrade: h2c", "Connection: Upgrade") + get("/healthz")), run(3))
seed("slow_reader_pipelined", DEFAULT | SMALL_LIMITS | SMALL_BUFFERS, mute(0),
     send(0, get("/metrics") * 12), run(3), mute(0), run(4))
seed("lua_routes", LUA, send(0, get("/h?v=1", "X-A: a") + get("/e") + get("/bad-header") +
                             post("/echo", b"body", "Content-Type: text/x")), run(3))
seed("lua_big_muted", LUA | SMALL_LIMITS | SMALL_BUFFERS, mute(0), send(0, get("/big") * 4), run(3),
     mute(0), run(3))

# --- WebSocket (test_ws_protocol.py) ------------------------------------------
seed("ws_basic", DEFAULT, send(0, ws("/topics/a")), run(), send(0, text("hello")), run(2),
     send(0, PING(b"p")), run(), send(0, CLOSE()), run(2))
seed("ws_frame_behind_upgrade", DEFAULT, send(0, ws("/topics/a") + text("first")), run(3))
seed("ws_close_behind_upgrade", DEFAULT, send(0, ws("/topics/a") + CLOSE()), run(3))
seed("ws_get_behind_upgrade", DEFAULT, send(0, ws("/topics/a") + get("/healthz")), run(3))
seed("ws_json_resume", DEFAULT, send(0, post("/topics/j", b"one")), run(2),
     send(1, ws("/topics/j?format=json&last_event_id=0-0")), run(2), send(1, text("two")), run(3))
seed("ws_fragments", DEFAULT, send(0, ws("/topics/f")), run(),
     send(0, frame(1, b"par", fin=False) + PING() + frame(0, b"ts", fin=False) + frame(0, b"!")), run(2),
     send(0, frame(2, bytes(range(40)))), run(2), send(0, frame(1, b"\xff\xfe")), run(2))
seed("ws_bad_frames", DEFAULT, send(0, ws("/topics/a")), run(),
     send(0, bytes([0x81, 0x05]) + b"hello"), run(2),
     send(1, ws("/topics/a")), run(), send(1, frame(9, b"x" * 126)), run(2),
     send(2, ws("/topics/a")), run(), send(2, frame(3, b"x")), run(2))
seed("ws_bad_handshake", DEFAULT, send(0, get("/topics/a", "Upgrade: websocket", "Connection: Upgrade")),
     send(1, get("/topics/a", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 8",
                 f"Sec-WebSocket-Key: {KEY.decode()}")), run(2))
seed("ws_ping_flood", DEFAULT | SMALL_LIMITS, send(0, ws("/topics/a")), run(),
     send(0, PING(b"q" * 125) * 40), run(3))
seed("ws_ping_flood_muted", DEFAULT | SMALL_LIMITS | SMALL_BUFFERS, send(0, ws("/topics/a")), run(), mute(0),
     send(0, PING(b"q" * 100) * 30), run(2), send(0, PING(b"q" * 100) * 30), run(3))
seed("ws_ping_timer", DEFAULT, send(0, ws("/topics/a")), run(), timer(0), run(), timer(0), run(),
     send(1, ws("/topics/b")), run(), timer(1), run(), send(1, frame(10, b"")), run(), timer(1), run())
seed("ws_slow_consumer", DEFAULT | SMALL_LIMITS | SMALL_BUFFERS, send(0, ws("/topics/s")), run(), mute(0),
     send(1, b"".join(post("/topics/s", b"m" * 1000) for _ in range(14))), run(4))
seed("ws_handshake_refusals", LUA, send(0, ws("/s/a?proto=chat")),
     send(1, get("/s/a", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Key: short")),
     send(2, get("/s/a", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 f"Sec-WebSocket-Key: {KEY.decode()}", method="HEAD")),
     send(3, get("/s/a", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 f"Sec-WebSocket-Key: {KEY.decode()}", version="1.0")), run(3))
seed("ws_gap_json", LUA, send(1, b"".join(post("/p/g", b"m%d" % i) for i in range(12))), run(3),
     send(0, ws("/s/g?format=json&last_event_id=zz-1")), run(3), send(2, ws("/s/g?format=json", "Last-Event-ID: 0-0")),
     run(3))
# A client sending faster than its publishes commit: paced, not dropped
# (more than SUB_MAX_PUBLISHING messages in one read), and refused past the
# publish queue (100 in the fuzzer) by several at once.
seed("ws_publish_flood", DEFAULT, send(0, ws("/topics/f")), run(), send(0, b"".join(text("m%d" % i) for i in range(150))),
     run(4))
seed("ws_publish_flood_many", DEFAULT, send(0, ws("/topics/f")), send(1, ws("/topics/g")), send(2, ws("/topics/h")),
     run(), no_pass(send(0, b"".join(text("a%d" % i) for i in range(70)))),
     no_pass(send(1, b"".join(text("b%d" % i) for i in range(70)))),
     no_pass(send(2, b"".join(text("c%d" % i) for i in range(70)))),
     send(3, b"".join(post("/topics/f", b"p") for i in range(20))), run(5))
seed("lua_publish_flood", LUA, send(0, ws("/s/f")), run(), send(0, b"".join(text("Pp%d" % i) for i in range(90))),
     run(2), close(0), run(3))
seed("ws_too_big", DEFAULT | SMALL_LIMITS, send(0, ws("/topics/a")), run(), send(0, text("t" * 3000)), run(2))

# --- SSE and long-poll (test_sse.mjs, test_longpoll.mjs) ----------------------
seed("sse", DEFAULT, send(0, get("/topics/e", "Accept: text/event-stream")), run(),
     send(1, post("/topics/e?event=ev", b"line1\nline2")), run(3), timer(0), run(),
     send(0, b"ignored"), run())
seed("sse_resume", DEFAULT, send(1, post("/topics/r", b"a") + post("/topics/r", b"\xff\xfe")), run(3),
     send(0, get("/topics/r", "Accept: text/event-stream", "Last-Event-ID: 0-0")), run(3))
seed("sse_slow", DEFAULT | SMALL_LIMITS | SMALL_BUFFERS, send(0, get("/topics/q", "Accept: text/event-stream")),
     run(), mute(0), send(1, b"".join(post("/topics/q", b"z" * 900) for _ in range(10))), run(4))
seed("longpoll", DEFAULT, send(0, get("/topics/l?timeout=5")), run(),
     send(1, post("/topics/l", b"msg")), run(3), send(0, get("/topics/l?since=0-0&limit=2")), run(2))
seed("longpoll_timeout", DEFAULT, send(0, get("/topics/l?timeout=5") + get("/healthz")), run(), timer(0),
     run(2))
seed("shortpoll", DEFAULT, send(0, get("/topics/l?timeout=0") + get("/topics/l?timeout=0&last_event_id=x")),
     run(3))
seed("longpoll_pipelined_behind", DEFAULT, send(0, get("/topics/l?timeout=5")), run(), send(0, get("/healthz")),
     run(2), send(1, post("/topics/l", b"wake")), run(3))
seed("longpoll_peer_gone", DEFAULT, send(0, get("/topics/l?timeout=5")), run(), close(0), run(2))
seed("publish_held_then_close", DEFAULT, no_pass(send(0, post("/topics/h", b"x") + get("/healthz"))), close(0),
     run(3))
seed("publish_held_then_shut", LUA, no_pass(send(0, post("/p/h", b"Px") + post("/p/h", b"y"))), shut(0), run(3))
seed("ws_message_then_close", LUA, send(0, ws("/s/m")), run(), no_pass(send(0, text("Pm") + text("Secho"))), close(0),
     run(3))
seed("longpoll_then_close_same_pass", DEFAULT, no_pass(send(0, get("/topics/l?timeout=5"))),
     no_pass(send(1, post("/topics/l", b"x"))), close(0), run(3))

# --- the Lua app's callbacks (test_lua_api.py) ---------------------------------
seed("lua_ws_callbacks", LUA, send(0, ws("/s/room")), run(),
     send(0, text("Secho") + text("B") + text("Pnews") + text("R")), run(3),
     send(0, text("E")), run(2))
seed("lua_ws_budget", LUA, send(0, ws("/s/room")), run(), send(0, text("L")), run(2))
seed("lua_filter_closes_other", LUA, send(0, ws("/s/room")), send(1, ws("/s/room")), run(),
     send(0, text("R")), send(1, text("R")), run(2), send(2, post("/p/room", b"Kbye")), run(3))
seed("lua_filter_closes_all", LUA, send(0, ws("/s/room")), send(1, ws("/s/room")), run(),
     send(0, text("R")), send(1, text("R")), run(2), send(0, text("Aall")), run(3))
seed("lua_filter_forms", LUA, send(0, ws("/s/t?format=json")), send(1, get("/s/t", "Accept: text/event-stream")),
     send(2, get("/s/t?timeout=5")), run(),
     send(3, post("/p/t", b"Xup") + post("/p/t", b"Ddrop") + post("/p/t", b"Vbad") + post("/p/t", b"Efail") +
          post("/p/t", b"Pagain") + post("/p/t", b"C")), run(4))
seed("lua_options", LUA,
     send(0, ws("/s/a?skip=1&ev=e1&also=b*&bye=gone", "Sec-WebSocket-Protocol: chat, x") + text("Pself")),
     send(1, ws("/s/a?proto=chat", "Sec-WebSocket-Protocol: chat")), run(2),
     send(2, post("/p/a?event=e1", b"one") + post("/p/bx", b"two") + post("/p/op.z", b"Xyz") +
          post("/p/op.z", b"Dno")), run(4), send(1, CLOSE(4000)), run(2))
# A long-poll whose filter fails on a message its resume replays (found by
# this fuzzer: the poll was answered after the filter had ended it).
seed("lp_filter_error_in_replay", LUA, send(3, post("/p/a", b"Edata")), run(2), send(0, get("/s/a?since=x")), run(2),
     send(1, post("/p/a", b"Ldata")), run(2), send(2, get("/s/a?last_event_id=zz-1&also=*")), run(2))
seed("lua_on_close_publishes", LUA, send(0, ws("/s/c?bye=log&nofilter=1")), send(1, ws("/s/log")), run(),
     send(0, text("C")), run(3))

# --- TLS (test_tls.py) ---------------------------------------------------------
seed("tls_requests", DEFAULT | TLS, send(0, get("/healthz") + get("/metrics")), run(3),
     send(1, post("/topics/t", b"m") + get("/topics/t?since=0-0&timeout=0")), run(4))
seed("tls_streams", LUA | TLS, send(0, ws("/s/t")), send(1, get("/s/t", "Accept: text/event-stream")), run(4),
     send(0, text("Secho") + PING(b"p")), send(2, post("/p/t", b"Xhello")), run(4), send(0, CLOSE()), run(3))
seed("tls_garbage", DEFAULT | TLS, send_raw(0, b"\x16\x03\x01\x00\x05hello"), run(2),
     send(1, get("/healthz")), run(3), send_raw(1, b"\x17\x03\x03\x00\x10" + b"x" * 16), run(2),
     send(2, b"GET /healthz HTTP/1.1\r\nHost"), timer(2), run(2), send(3, b""), timer(3), run())
seed("tls_slow_reader", DEFAULT | TLS | SMALL_LIMITS | SMALL_BUFFERS, send(0, get("/topics/s", "Accept: text/event-stream")),
     run(4), mute(0), send(1, b"".join(post("/topics/s", b"m" * 900) for _ in range(12))), run(4), mute(0), run(4))

# --- shutdown and reload with everything open ----------------------------------
seed("stop_with_streams", DEFAULT, send(0, ws("/topics/z")), send(1, get("/topics/z", "Accept: text/event-stream")),
     send(2, get("/topics/z?timeout=5")), send(3, get("/healthz")[:10]), run(2), STOP, run(4))
seed("reload_with_streams", LUA, send(0, ws("/s/y")), send(1, get("/s/y?timeout=5")), run(), RELOAD, run(),
     send(2, post("/p/y", b"Xafter")), run(3), send(0, text("Shi")), run(2))


# --- HTTP/2 (test_h2.py): h2c with prior knowledge, streams as conns ---------------
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2(typ, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + struct.pack(">I", sid) + payload


def hpack_lit(headers):
    """A header block of literals without indexing (no Huffman, no table):
    every mutation of it stays readable."""
    out = b""
    for k, v in headers:
        k, v = k.encode(), v.encode()
        out += b"\x00" + bytes([len(k)]) + k + bytes([len(v)]) + v
    return out


def h2req(sid, method, path, *extra, end=True):
    block = hpack_lit([(":method", method), (":scheme", "http"), (":path", path),
                       (":authority", "x")] + list(extra))
    return h2(1, 0x4 | (0x1 if end else 0), sid, block)


H2_SETTINGS = h2(4, 0, 0)
H2_SSE = ("accept", "text/event-stream")
seed("h2_requests", DEFAULT, send(0, H2_PREFACE + H2_SETTINGS + h2req(1, "GET", "/healthz") +
                                  h2req(3, "GET", "/topics/h", H2_SSE) +
                                  h2req(5, "POST", "/topics/h", end=False) + h2(0, 1, 5, b"hello") +
                                  h2req(7, "GET", "/topics/h?timeout=5")),
     run(3), send(0, h2(3, 0, 7, b"\0\0\0\x08") + h2(6, 0, 0, b"12345678") +
                  h2(8, 0, 3, b"\0\0\x10\0")), run(2),
     send(0, h2(7, 0, 0, b"\0\0\0\x03\0\0\0\0")), run(2))
seed("h2_lua", LUA, send(0, H2_PREFACE + H2_SETTINGS + h2req(1, "GET", "/s/y?timeout=5") +
                            h2req(3, "POST", "/p/y", end=False) + h2(0, 1, 3, b"Xhi")), run(4), close(0))
seed("h2_websocket", DEFAULT,
     send(0, H2_PREFACE + H2_SETTINGS + h2req(1, "CONNECT", "/topics/w", (":protocol", "websocket"),
                                               ("sec-websocket-version", "13"), end=False)),
     run(2), send(0, h2(0, 0, 1, text("Sws") + PING(b"p"))), run(2), send(0, h2(0, 0, 1, CLOSE())), run(2))
seed("h2_slow_reader", DEFAULT | SMALL_LIMITS | SMALL_BUFFERS,
     send(0, H2_PREFACE + h2(4, 0, 0, b"\0\x04\0\0\x01\0") + h2req(1, "GET", "/topics/s", H2_SSE) +
          h2req(3, "GET", "/topics/t", H2_SSE)),
     run(2), mute(0), send(1, b"".join(post("/topics/s", b"m" * 900) for _ in range(8))), run(4),
     send(1, post("/topics/t", b"tick")), mute(0), run(4))
seed("h2_attacks", DEFAULT,
     send(0, H2_PREFACE + H2_SETTINGS + h2(1, 0x1, 1, b"\x00") + h2(9, 0, 1) * 12), run(2),
     send(1, H2_PREFACE + H2_SETTINGS * 120), run(2),
     send(2, H2_PREFACE + b"".join(h2req(2 * i + 1, "GET", "/topics/r", H2_SSE) +
                                   h2(3, 0, 2 * i + 1, b"\0\0\0\x08") for i in range(40))), run(2),
     send(3, H2_PREFACE[:10]), run(), send(3, H2_PREFACE[10:] + b"garbage!" * 3), run(2))
seed("h2_stop", DEFAULT, send(0, H2_PREFACE + H2_SETTINGS + h2req(1, "GET", "/topics/z", H2_SSE) +
                              h2req(3, "GET", "/topics/z?timeout=5") +
                              h2req(5, "CONNECT", "/topics/z", (":protocol", "websocket"),
                                    ("sec-websocket-version", "13"), end=False)),
     run(2), STOP, run(4))
seed("h2_tls", DEFAULT | TLS, send(0, H2_PREFACE + H2_SETTINGS + h2req(1, "GET", "/topics/q", H2_SSE) +
                                   h2req(3, "POST", "/topics/q", end=False) + h2(0, 1, 3, b"over tls")),
     run(4), close(0))

# --- permessage-deflate (test_ws_deflate.py) --------------------------------
import zlib  # noqa: E402


def deflated(data):
    """A permessage-deflate payload: raw deflate, sync flush, tail off."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
_z = deflated(b"hello deflate " * 20)
seed("ws_deflate", DEFAULT, send(0, ws("/topics/z", DEFLATE)), run(),
     send(0, frame(0x41, _z) + frame(0x01, _z[:6], fin=False) + PING() + frame(0, _z[6:])),
     run(2), send(1, post("/topics/z", b"x" * 300)), run(3), send(0, CLOSE()), run(2))
seed("ws_deflate_bomb", DEFAULT | SMALL_LIMITS, send(0, ws("/topics/z", DEFLATE)), run(),
     send(0, frame(0x42, deflated(b"\0" * 100000))), run(2),
     send(1, ws("/topics/z", DEFLATE)), run(), send(1, frame(0x42, b"\xff\xff\xff\xff")), run(2))
seed("ws_deflate_offers", DEFAULT, send(0, ws("/topics/z", "Sec-WebSocket-Extensions: permessage-deflate;")),
     run(2), send(1, ws("/topics/z", "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9",
                       "Sec-WebSocket-Extensions: x")), run(), send(2, post("/topics/z", b"y" * 2000)), run(3))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
