#!/usr/bin/env bash
# bench/cluster.sh: cluster mode against one node and against nchan on Redis
# (issue 27 #8).  Figures for docs, never a timed test.
#
#   bench/cluster.sh [OUT.csv]
#
# Systems, each started fresh per run on loopback:
#   cluster      3 nats-server (JetStream, the stream at REPLICAS replicas)
#                and two sluice nodes; publishes to node A, the subscribers
#                of every topic spread over A and B (half each: loadgen
#                --sub-port2).  Every message goes through the stream, the
#                publishing node's own subscribers included (a node delivers
#                from its consumer, not from the request), so A's and B's
#                deliveries take the same path and one p99 covers both.
#   single       one sluice on LMDB (durable), subscribers and publishes on it
#   nchan-redis  two nginx + nchan sharing one redis-server (nchan_redis_url),
#                publishes to one, subscribers spread over both (skipped when
#                nginx's nchan module or redis-server is missing)
# Loads (bench/loadgen, WebSocket), named SUBS[xPER]-SIZE-INFLIGHT:
#   1k-64-1 ... 1,000 subscribers of one topic; 1kx10-64-1: 1,000 topics of
#   10 subscribers (10,000 connections); sizes 64 and 4096 B; 1 publish in
#   flight (-c 1 -K 1) or 16 (-c 4 -K 4).
# CPU per delivery counts every server process of the system (sluice +
# nats-server, nginx + redis-server) over the publish phase, from each
# thread's schedstat run time (ns, loadgen's server_cpu_ns_s; the /proc tick
# count quantised a short run's figure to 0.5 us steps); `store_share` is
# the part of it in nats-server (cluster) or redis-server (nchan).  Latency
# is publish to delivery (loadgen's clock, one process).  One CSV line per
# run: load, system, size, in flight, replicas, deliveries/s, CPU us per
# delivery, store share, p50 and p99 ms, acknowledged publishes/s, lost,
# duplicates, 1-minute load average at the start, the idle nodes' CPU per
# message (IDLE_NODES).
#
# Environment: LOADS (the eight: 1k and 1kx10, each at both sizes and both
# in-flight counts), SYSTEMS (cluster single nchan-redis),
# REPEAT (2; rounds interleave the systems), REPLICAS (3), MSGS_1K (2000
# messages, 2,000,000 deliveries), MSGS_1KX10 (3000, 30,000 deliveries),
# SLUICE_BIN (build/sluice), WORKERS (1 per sluice node), PERF_DIR (if set,
# `perf record -g` of each cluster run's servers into PERF_DIR/LOAD-N.data;
# PERF_CMD replaces `perf record -q -g -F 499`, e.g. `perf stat --per-thread
# -e task-clock,context-switches`), NATS_ENV (variables for nats-server, e.g.
# GOMAXPROCS=1), IDLE_NODES (0; more cluster nodes with no subscriber: each
# receives the whole stream all the same, and `idle_us_per_msg` is their CPU
# per published message, left out of the cluster's CPU per delivery: what
# receiving all of the stream costs a node that needs none of it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
SLUICE=${SLUICE_BIN:-$TOP/build/sluice}
LOADS=${LOADS:-1k-64-1 1k-64-16 1k-4096-1 1k-4096-16 1kx10-64-1 1kx10-64-16 1kx10-4096-1 1kx10-4096-16}
SYSTEMS=${SYSTEMS:-cluster single nchan-redis}
REPEAT=${REPEAT:-2}
REPLICAS=${REPLICAS:-3}
MSGS_1K=${MSGS_1K:-2000}
MSGS_1KX10=${MSGS_1KX10:-3000}
WORKERS=${WORKERS:-1}
PERF_DIR=${PERF_DIR:-}
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
# The default app limits publishes per client address (1,000/s): not here.
export SLUICE_PUBLISH_RATE=0

# N distinct free ports (all bound at once: ports asked one by one can
# repeat, and a NATS server whose port another took never starts).
free_ports() {
    python3 -c 'import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
free_port() { free_ports 1; }
wait_port() { # PORT [TRIES of 50 ms]
    for _ in $(seq "${2:-200}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
    return 1
}
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

start_nats() {
    local routes="" i
    NATS_PORTS=() ; local rports=() hports=()
    local ports
    read -ra ports <<<"$(free_ports 9)"
    NATS_PORTS=("${ports[@]:0:3}"); rports=("${ports[@]:3:3}"); hports=("${ports[@]:6:3}")
    for i in 0 1 2; do routes+="nats-route://127.0.0.1:${rports[$i]},"; done
    for i in 0 1 2; do
        cat >"$DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${NATS_PORTS[$i]}
http: 127.0.0.1:${hports[$i]}
jetstream { store_dir: "$DIR/js$RUN/n$i" }
cluster { name: bench, listen: 127.0.0.1:${rports[$i]}, routes: [${routes%,}] }
CONF
        env ${NATS_ENV:-} nats-server -c "$DIR/n$i.conf" >"$DIR/n$i.log" 2>&1 &
        PIDS+=($!)
        # One after another: started at once, 2.10 can form a JetStream
        # meta group that leaves a server out (docs/cluster.md).
        wait_port "${hports[$i]}"
    done
    # Every server up and knowing the JetStream leader (one that never
    # started leaves a cluster that cannot place three replicas).
    local ready
    for _ in $(seq 150); do
        ready=0
        for i in 0 1 2; do
            curl -sf "http://127.0.0.1:${hports[$i]}/jsz" | grep -q '"leader"' && ready=$((ready + 1))
        done
        [ "$ready" = 3 ] && return 0
        sleep 0.1
    done
    echo "NATS cluster did not form:" >&2
    tail -n 5 "$DIR"/n?.log >&2
    return 1
}

start_sluice() { # PORT [--cluster URLS APP]
    local port=$1
    shift
    "$SLUICE" -l 127.0.0.1:"$port" -d "$DIR/data$RUN-$port" -w "$WORKERS" --log-level warn "$@" \
        >"$DIR/sluice-$port.log" 2>&1 &
    PIDS+=($!)
    # 30 s: a cluster node waits that long for NATS to place its stream
    # (a cluster just formed can take seconds; docs/cluster.md).
    wait_port "$port" 600 && return 0
    echo "sluice on port $port did not listen:" >&2
    cat "$DIR/sluice-$port.log" >&2
    return 1
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

row() { # LOAD SYSTEM SIZE INFLIGHT REPLICAS STOREPIDS LOADAVG JSON [IDLEPIDS]
    python3 - "$@" <<'PY'
import json, sys
load, system, size, inflight, replicas, store_pids, loadavg, line = sys.argv[1:9]
idle_pids = set(p for p in (sys.argv[9] if len(sys.argv) > 9 else "").split(",") if p)
j = json.loads(line)
d = j["received"] or 1
acks = j["acked"] / j["publish_s"] if j["publish_s"] else 0
cpu = j.get("server_cpu_ns_s", j["server_cpu_s"])
store = set(p for p in store_pids.split(",") if p)
part = idle = 0.0
for kv in j.get("server_cpu_by_pid", "").split(","):
    if ":" in kv:
        pid, sec = kv.split(":")
        if pid in store:
            part += float(sec)
        if pid in idle_pids:
            idle += float(sec)
cpu -= idle
print("%s,%s,%s,%s,%s,%.0f,%.2f,%.2f,%.2f,%.2f,%.0f,%d,%d,%s,%.1f" % (
    load, system, size, inflight, replicas, j["deliveries_per_s"], cpu * 1e6 / d,
    part / cpu if cpu > 0 else 0, j["lat_p50_ms"], j["lat_p99_ms"], acks, j["lost"], j["dups"],
    loadavg, idle * 1e6 / len(idle_pids) / (j["acked"] or 1) if idle_pids else 0))
PY
}

APP=$DIR/cluster.lua
cat >"$APP" <<LUA
local sluice = require "sluice"
sluice.config{cluster = {replicas = $REPLICAS, stream = "BENCH"}}
sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, {error = err}) end
  return sluice.json(200, {id = id})
end)
sluice.route("GET", "/topics/:topic", function(req) return req:subscribe(req.params.topic) end)
LUA

perf_start() { # LOAD PIDS
    PERF_PID=
    [ -n "$PERF_DIR" ] || return 0
    mkdir -p "$PERF_DIR"
    ${PERF_CMD:-perf record -q -g -F 499} -o "$PERF_DIR/$1-$RUN.data" -p "$2" >/dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.5
}
perf_stop() {
    [ -n "${PERF_PID:-}" ] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
}

run_load() { # SYSTEM LOAD
    local system=$1 load=$2 shape size inflight subs topics msgs pub la j
    shape=${load%%-*}; size=${load#*-}; size=${size%-*}; inflight=${load##*-}
    case $shape in
        1k) subs=1000; topics=1; msgs=$MSGS_1K ;;
        1kx10) subs=10000; topics=1000; msgs=$MSGS_1KX10 ;;
        100x10) subs=1000; topics=100; msgs=$MSGS_1KX10 ;;
        *) echo "unknown load $load" >&2; return 1 ;;
    esac
    if [ "$inflight" = 1 ]; then pub="-c 1 -K 1"; else pub="-c 4 -K 4"; fi
    local common="-k ws -n $subs -T $topics -m $msgs -s $size $pub --json --drain 20"
    RUN=$((RUN + 1))
    la=$(cut -d' ' -f1 /proc/loadavg)
    case $system in
    cluster)
        start_nats
        local urls="nats://127.0.0.1:${NATS_PORTS[0]},nats://127.0.0.1:${NATS_PORTS[1]},nats://127.0.0.1:${NATS_PORTS[2]}"
        local npids="${PIDS[*]}" pa pb
        read -r pa pb <<<"$(free_ports 2)"
        start_sluice "$pa" --cluster "$urls" "$APP"
        start_sluice "$pb" --cluster "$urls" "$APP"
        local idle="" _
        for _ in $(seq "${IDLE_NODES:-0}"); do
            start_sluice "$(free_port)" --cluster "$urls" "$APP"
            idle+="${PIDS[-1]},"
        done
        perf_start "$load" "$(server_pids)"
        j=$("$LOADGEN" -p "$pa" --sub-port2 "$pb" --pub-port "$pa" --topic-prefix "c$RUN" \
            --pid "$(server_pids)" $common || true)
        perf_stop
        [ -z "$j" ] || row "$load" cluster "$size" "$inflight" "$REPLICAS" "${npids// /,}" "$la" "$j" \
            "${idle%,}" >>"$OUT"
        ;;
    single)
        local p
        p=$(free_port)
        start_sluice "$p"
        j=$("$LOADGEN" -p "$p" --topic-prefix "s$RUN" --pid "$(server_pids)" $common || true)
        [ -z "$j" ] || row "$load" single "$size" "$inflight" 0 "" "$la" "$j" >>"$OUT"
        ;;
    nchan-redis)
        command -v redis-server >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] ||
            return 0
        local rp na nb rpid
        rp=$(free_port)
        redis-server --port "$rp" --bind 127.0.0.1 --save '' --dir "$DIR" >"$DIR/redis.log" 2>&1 &
        rpid=$!
        PIDS+=($rpid)
        wait_port "$rp"
        read -r na nb <<<"$(free_ports 2)"
        start_nchan "$na" "$rp"
        start_nchan "$nb" "$rp"
        j=$("$LOADGEN" -p "$na" --sub-port2 "$nb" --pub-port "$na" -S '/sub/{topic}' -P '/pub/{topic}' \
            --topic-prefix "n$RUN" --pid "$(server_pids)" $common || true)
        [ -z "$j" ] || row "$load" nchan-redis "$size" "$inflight" 0 "$rpid" "$la" "$j" >>"$OUT"
        ;;
    esac
    [ -n "$j" ] || echo "$system $load: loadgen printed nothing" >&2
    if [ -n "$j" ] && ! python3 -c 'import json,sys; j=json.loads(sys.argv[1]); sys.exit(j["status"]!=0)' "$j"; then
        echo "$system $load: loadgen status: $j" >&2
    fi
    stop_all
}

echo "load,system,size,in_flight,replicas,deliveries_per_s,cpu_us_per_delivery,store_share,p50_ms,p99_ms,acked_per_s,lost,dups,loadavg,idle_us_per_msg" >"$OUT"
RUN=0
for load in $LOADS; do
    for _ in $(seq "$REPEAT"); do
        for system in $SYSTEMS; do
            run_load "$system" "$load"
        done
    done
done
