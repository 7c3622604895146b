#!/usr/bin/env bash
# bench/cluster.sh: cluster mode against one node and against nchan on Redis
# (issue 27 #8).  Figures for docs, never a timed test.
#
#   bench/cluster.sh [OUT.csv]
#
# Systems, each started fresh per run on loopback:
#   cluster      3 nats-server (JetStream, the stream at 3 replicas) and two
#                sluice nodes; subscribers on node B, publishes to node A:
#                every delivery crosses nodes through JetStream
#   single       one sluice on LMDB (durable), subscribers and publishes on it
#   nchan-redis  two nginx + nchan sharing one redis-server (nchan_redis_url),
#                subscribers on one, publishes to the other (skipped when
#                nginx's nchan module or redis-server is missing)
# Loads (bench/loadgen, WebSocket): SUBS subscribers over TOPICS topics, MSGS
# messages of 64 B and 4 KiB, 1 and 16 publishes in flight.  CPU per
# delivery counts every server process of the system (sluice + nats-server,
# nginx + redis-server), from /proc, over the run.  Latency is publish to
# delivery (loadgen's clock, one process).  One CSV line per run: system,
# size, in flight, deliveries/s, server CPU us per delivery, p50 and p99
# ms, acknowledged publishes/s, lost, duplicates.
#
# Environment: SUBS (1000), TOPICS (100), MSGS (2000), SLUICE_BIN
# (build/sluice), WORKERS (1 per sluice node).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
SLUICE=${SLUICE_BIN:-$TOP/build/sluice}
SUBS=${SUBS:-1000}
TOPICS=${TOPICS:-100}
MSGS=${MSGS:-2000}
WORKERS=${WORKERS:-1}
OUT=${1:-/dev/stdout}
make -s -C "$HERE" loadgen >&2
LOADGEN=$HERE/loadgen
DIR=$(mktemp -d /tmp/sluice-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

start_nats() {
    local routes="" i
    NATS_PORTS=() ; local rports=() hports=()
    for i in 0 1 2; do NATS_PORTS+=("$(free_port)"); rports+=("$(free_port)"); hports+=("$(free_port)"); done
    for i in 0 1 2; do routes+="nats-route://127.0.0.1:${rports[$i]},"; done
    for i in 0 1 2; do
        cat >"$DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${NATS_PORTS[$i]}
http: 127.0.0.1:${hports[$i]}
jetstream { store_dir: "$DIR/js$RUN/n$i" }
cluster { name: bench, listen: 127.0.0.1:${rports[$i]}, routes: [${routes%,}] }
CONF
        nats-server -c "$DIR/n$i.conf" >"$DIR/n$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${hports[0]}/jsz" | grep -q '"leader"' && return 0
        sleep 0.1
    done
    echo "NATS cluster did not form" >&2
    return 1
}

start_sluice() { # PORT [--cluster URLS APP]
    local port=$1
    shift
    "$SLUICE" -l 127.0.0.1:"$port" -d "$DIR/data$RUN-$port" -w "$WORKERS" --log-level warn "$@" \
        >"$DIR/sluice-$port.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}

start_nchan() { # PORT REDIS_PORT
    mkdir -p "$DIR/ng$1/tmp"
    sed -e "s/@PORT@/$1/g" "$HERE/nchan/nchan.conf.in" |
        sed -e "s|nchan_max_reserved_memory 256M;|&\n    nchan_redis_url \"redis://127.0.0.1:$2\";|" \
            -e "s|nchan_publisher http;|& nchan_use_redis on;|" \
            -e "s|nchan_subscriber websocket eventsource longpoll;|& nchan_use_redis on;|" >"$DIR/ng$1/nginx.conf"
    nginx -p "$DIR/ng$1/" -c "$DIR/ng$1/nginx.conf" -g 'daemon off;' >"$DIR/ng$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$1"
}

# All pids of a system's server processes (nginx workers are children).
server_pids() {
    local out="" p c
    for p in "${PIDS[@]}"; do
        out+="$p,"
        for c in $(pgrep -P "$p" 2>/dev/null); do out+="$c,"; done
    done
    echo "${out%,}"
}

row() { # SYSTEM SIZE INFLIGHT JSON
    python3 - "$@" <<'PY'
import json, sys
system, size, inflight, line = sys.argv[1:5]
j = json.loads(line)
d = j["received"] or 1
acks = j["acked"] / j["publish_s"] if j["publish_s"] else 0
print("%s,%s,%s,%.0f,%.2f,%.2f,%.2f,%.0f,%d,%d" % (
    system, size, inflight, j["deliveries_per_s"], j["server_cpu_s"] * 1e6 / d,
    j["lat_p50_ms"], j["lat_p99_ms"], acks, j["lost"], j["dups"]))
PY
}

APP=$DIR/cluster.lua
cat >"$APP" <<'LUA'
local sluice = require "sluice"
sluice.config{cluster = {replicas = 3, stream = "BENCH"}}
sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, {error = err}) end
  return sluice.json(200, {id = id})
end)
sluice.route("GET", "/topics/:topic", function(req) return req:subscribe(req.params.topic) end)
LUA

echo "system,size,in_flight,deliveries_per_s,cpu_us_per_delivery,p50_ms,p99_ms,acked_per_s,lost,dups" >"$OUT"
RUN=0
for size in 64 4096; do
    for inflight in 1 16; do
        if [ "$inflight" = 1 ]; then pub="-c 1 -K 1"; else pub="-c 4 -K 4"; fi
        common="-k ws -n $SUBS -T $TOPICS -m $MSGS -s $size $pub --json --drain 20"

        RUN=$((RUN + 1))
        start_nats
        urls="nats://127.0.0.1:${NATS_PORTS[0]},nats://127.0.0.1:${NATS_PORTS[1]},nats://127.0.0.1:${NATS_PORTS[2]}"
        pa=$(free_port); pb=$(free_port)
        start_sluice "$pa" --cluster "$urls" "$APP"
        start_sluice "$pb" --cluster "$urls" "$APP"
        j=$("$LOADGEN" -p "$pb" --pub-port "$pa" --topic-prefix "c$RUN" --pid "$(server_pids)" $common || true)
        row cluster "$size" "$inflight" "$j" >>"$OUT"
        stop_all

        RUN=$((RUN + 1))
        p=$(free_port)
        start_sluice "$p"
        j=$("$LOADGEN" -p "$p" --topic-prefix "s$RUN" --pid "$(server_pids)" $common || true)
        row single "$size" "$inflight" "$j" >>"$OUT"
        stop_all

        if command -v redis-server >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
            RUN=$((RUN + 1))
            rp=$(free_port)
            redis-server --port "$rp" --bind 127.0.0.1 --save '' --dir "$DIR" >"$DIR/redis.log" 2>&1 &
            PIDS+=($!)
            wait_port "$rp"
            na=$(free_port); nb=$(free_port)
            start_nchan "$na" "$rp"
            start_nchan "$nb" "$rp"
            j=$("$LOADGEN" -p "$nb" --pub-port "$na" -S '/sub/{topic}' -P '/pub/{topic}' \
                --topic-prefix "n$RUN" --pid "$(server_pids)" $common || true)
            row nchan-redis "$size" "$inflight" "$j" >>"$OUT"
            stop_all
        fi
    done
done
