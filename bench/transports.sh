#!/usr/bin/env bash
# bench/transports.sh: sluice's push transports beside nchan's, same loads.
#
# For each server (sluice with its default app and a fresh data dir; nchan
# from bench/nchan/nchan.conf.in), one worker each, and for each test, a
# fresh server is started, bench/loadgen drives it, and the server stops:
#   ws, sse      SUBS subscribers on one topic, MSGS messages of SIZE bytes
#                published one at a time on one keep-alive connection;
#   idle-ws,     IDLE idle connections held HOLD seconds: server memory per
#   idle-sse     connection (PSS and RSS delta from /proc).
# Then one table: deliveries/s, latency p50/p99/max, lost, server CPU
# seconds (utime+stime over the publish phase, nginx master + worker),
# memory per idle connection, and the sluice/nchan ratio.
#
# The machine has 2 cores shared by the server, loadgen and the kernel's
# loopback work: compare the columns, not the absolute figures. sluice
# acknowledges a publish only once LMDB synced it (see SPEC); nchan keeps
# messages in memory.
#
# Environment: SUBS (1000), MSGS (800), SIZE (64), IDLE (10000), HOLD (5),
# TESTS ("ws sse idle-ws idle-sse"; "longpoll" also works), SERVERS
# ("sluice nchan"), LG_ARGS (extra loadgen options, e.g. "-c 2 -K 4"),
# SLUICE_BIN, LOADGEN (default bench/loadgen, built with bench/Makefile),
# RESULTS_DIR (keep the JSON lines there). Exit status 0 when
# every run passed (no loss, all subscribed), 1 otherwise.
set -u
. "$(dirname "$0")/lib.sh"

SUBS=${SUBS:-1000}
MSGS=${MSGS:-800}
SIZE=${SIZE:-64}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-5}
TESTS=${TESTS:-"ws sse idle-ws idle-sse"}
SERVERS=${SERVERS:-"sluice nchan"}
LG_ARGS=${LG_ARGS:-}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_TMP/results}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
mkdir -p "$RESULTS_DIR"

if [ "$LOADGEN" = "$BENCH_DIR/loadgen" ] && ! make -s -C "$BENCH_DIR" loadgen >&2; then
    bench_log "cannot build bench/loadgen"
    exit 1
fi
bench_raise_nofile 20000
if [ "$(ulimit -n)" -lt $((IDLE + 100)) ]; then
    bench_log "RLIMIT_NOFILE $(ulimit -n) is below IDLE=$IDLE + 100; lowering IDLE"
    IDLE=$(($(ulimit -n) - 100))
fi

FAILED=0

# start_server NAME: sets PORT, PIDS (comma list), SUB_PATH, PUB_PATH, SPID.
start_server() {
    case $1 in
    sluice)
        # shellcheck disable=SC2119 # the default app: no arguments
        bench_start_sluice || return 1
        PORT=$SLUICE_PORT
        PIDS=$SLUICE_PID
        SPID=$SLUICE_PID
        SUB_PATH='/topics/{topic}'
        PUB_PATH='/topics/{topic}'
        LP_PATH='/topics/{topic}?timeout=30'
        ;;
    nchan)
        PORT=$(bench_free_port)
        bench_start_nginx "$BENCH_DIR/nchan/nchan.conf.in" "$PORT" || return 1
        sleep 0.2 # let the worker come up before its pid is read
        PIDS=$(bench_nginx_pids "$NGINX_PID")
        SPID=$NGINX_PID
        SUB_PATH='/sub/{topic}'
        PUB_PATH='/pub/{topic}'
        LP_PATH='/sub/{topic}'
        ;;
    esac
}

# run_test SERVER TEST: one fresh server, one loadgen run, JSON kept in
# $RESULTS_DIR/SERVER.TEST.json (absent if the server did not start).
run_test() {
    local srv=$1 test=$2 out=$RESULTS_DIR/$1.$2.json rc args
    rm -f "$out"
    if ! start_server "$srv"; then
        bench_log "$srv: failed to start; skipping $test"
        FAILED=1
        return
    fi
    case $test in
    ws | sse)
        args=(-k "$test" -n "$SUBS" -m "$MSGS" -s "$SIZE" -S "$SUB_PATH" -P "$PUB_PATH"
            --drain 15 --deadline 180)
        ;;
    longpoll)
        args=(-k longpoll -n "$SUBS" -m "$MSGS" -s "$SIZE" -S "$LP_PATH" -P "$PUB_PATH"
            --drain 15 --deadline 180)
        ;;
    idle-ws | idle-sse)
        args=(-I -k "${test#idle-}" -n "$IDLE" --hold "$HOLD" -S "$SUB_PATH" --deadline 120)
        ;;
    esac
    bench_log "$srv $test: loadgen -p $PORT ${args[*]} $LG_ARGS"
    # shellcheck disable=SC2086
    timeout 300 "$LOADGEN" -p "$PORT" "${args[@]}" --pid "$PIDS" --json $LG_ARGS \
        >"$out" 2>"$RESULTS_DIR/$srv.$test.txt"
    rc=$?
    sed 's/^/    /' "$RESULTS_DIR/$srv.$test.txt" >&2
    if [ "$rc" != 0 ]; then
        bench_log "$srv $test: loadgen exit status $rc"
        FAILED=1
        [ -s "$out" ] || echo "{\"status\":$rc,\"reason\":\"loadgen exit $rc\"}" >"$out"
    fi
    if ! kill -0 "$SPID" 2>/dev/null; then
        bench_log "$srv died during $test"
        FAILED=1
    fi
    bench_stop "$SPID"
}

for srv in $SERVERS; do
    for t in $TESTS; do
        run_test "$srv" "$t"
    done
done

"${PYTHON:-/usr/bin/python3}" - "$RESULTS_DIR" "$SERVERS" "$TESTS" <<'EOF'
import json, os, sys
rdir, servers, tests = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(srv, test):
    try:
        with open(os.path.join(rdir, f"{srv}.{test}.json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

pubsub = [("deliveries/s", "deliveries_per_s", "{:.0f}"),
          ("latency p50 ms", "lat_p50_ms", "{:.2f}"),
          ("latency p99 ms", "lat_p99_ms", "{:.2f}"),
          ("latency max ms", "lat_max_ms", "{:.2f}"),
          ("publish ack p50 ms", "ack_p50_ms", "{:.2f}"),
          ("lost", "lost", "{:.0f}"),
          ("duplicates", "dups", "{:.0f}"),
          ("server CPU s", "server_cpu_s", "{:.2f}"),
          ("server CPU us/delivery", None, "{:.2f}"),
          ("loadgen CPU s", "client_cpu_s", "{:.2f}")]
idle = [("memory B/conn (PSS)", "pss_per_conn_b", "{:.0f}"),
        ("memory B/conn (RSS)", "rss_per_conn_b", "{:.0f}"),
        ("connect time s", "connect_s", "{:.2f}")]

def value(r, key, label):
    # Runs that never got to publishing (status 1, 2) have no figures; a run
    # with losses (4) or publish errors (3) keeps them, flagged below.
    if r is None or r.get("status") in (1, 2):
        return None
    if label == "server CPU us/delivery":
        if r.get("received") and r.get("server_cpu_s", -1) >= 0:
            return r["server_cpu_s"] * 1e6 / r["received"]
        return None
    return r.get(key)

cols = servers + (["ratio"] if servers[:2] == ["sluice", "nchan"] else [])
print()
print(f"{'test':<10} {'metric':<24}" + "".join(f"{c:>14}" for c in cols))
for t in tests:
    rows = idle if t.startswith("idle") else pubsub
    res = {s: load(s, t) for s in servers}
    desc = []
    for s in servers:
        r = res[s]
        if r is None:
            desc.append(f"{s}: not run")
        elif r.get("status"):
            desc.append(f"{s}: FAIL ({r.get('reason', '')})")
    for label, key, fmt in rows:
        vals = [value(res[s], key, label) for s in servers]
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "n/a" for v in vals]
        if "ratio" in cols:
            a, b = vals[0], vals[1]
            cells.append(f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-")
        print(f"{t:<10} {label:<24}" + "".join(f"{c:>14}" for c in cells))
    for d in desc:
        print(f"{t:<10} {d}")
    r0 = next((res[s] for s in servers if res[s]), None)
    if r0 and not t.startswith("idle") and "subs" in r0:
        print(f"{t:<10} ({r0['subs']} subscribers, {r0['messages']} msgs x {r0['size']} B, "
              f"{r0['pub_conns']} pub conn x {r0['pipeline']} in flight)")
    elif r0 and "conns" in r0:
        print(f"{t:<10} ({r0['conns']} idle connections)")
    print()
EOF
echo "ratio = sluice / nchan (deliveries/s: higher is better; latency, CPU, memory: lower is better)"
echo "raw results: $RESULTS_DIR$([ "$RESULTS_DIR" = "$BENCH_TMP/results" ] && echo ' (removed on exit; set RESULTS_DIR to keep)')"
exit $FAILED
