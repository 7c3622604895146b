#!/usr/bin/env bash
# bench/compare.sh: sluice beside nchan, Pushpin and the fan-out floor on
# this machine, same loads, one table with ratios to nchan, and a chart.
#
# What it measures (bench/loadgen drives every run; one server at a time):
#   ws|sse-N-S       N subscribers on one topic (100, 1k, 10k), messages of
#                    S bytes (64, 4k): 12 loads;
#   ws|sse-1kx10-64  1,000 topics with 10 subscribers each, 64 B;
#   ws|sse-1k-64-r100  latency: 100 messages/s to 1,000 subscribers (p50/p99);
#   lp-1k-64         long-poll, 1,000 waiting clients (sluice and nchan; the
#                    floor has no long-poll, and Pushpin's held responses
#                    have no backlog here: both print n/a);
#   idle-ws|sse-10k  server memory per idle connection (PSS delta, fresh
#                    server each time); idle-*-50k only where RLIMIT_NOFILE
#                    allows (this container's hard limit is 20,000: skipped,
#                    and the table says why).
# Every throughput load (long-poll too) runs with one publish at a time (-c 1 -K 1, pub "1")
# and with 16 in flight (pub "16": -c 16 -K 1, 16 publisher connections:
# sluice answers the pipelined requests of one connection one after the
# other, each after its commit, so -c 1 -K 16 or -c 4 -K 4 would keep only
# 1 or 4 publishes in flight at its store; nginx/nchan and the floor take
# pipelining or not alike). Each run is sized by deliveries: about DELIVERIES
# per run (messages = DELIVERIES / subscribers per topic, at least 20, at
# most MAX_MSGS). Each (load, pub, server) runs REPEATS times; the table
# shows medians. A server is started once per load and serves all its runs
# (loadgen uses fresh topic names per run), then stopped; every idle run
# gets a fresh one. Before each run the script waits until the server is
# idle again (under 10% of a core; at most 30 s), so that one run's cleanup
# is neither charged to the next nor in its way (Pushpin answers 502 while
# it is still closing the previous run's sessions).
#
# Columns: deliveries/s; server CPU µs per delivery (= CPU seconds per
# million deliveries: loadgen's server_cpu_s over --pid, nginx master +
# worker, Pushpin's runner + condure + zurl + proxy + handler, not the GRIP
# origin, which sees no traffic while publishing); latency p50/p99 ms
# (publish to receive); lost (must be 0: a failed run prints FAIL and the
# script exits 1); bytes per idle connection; ratios to nchan (deliveries/s,
# CPU per delivery or bytes per connection, p99). A second table gives
# sluice's CPU per delivery over the better of the two floor modes.
#
# Duration with the defaults: over 2 hours (about 540 runs), more when the
# machine is busy. Pushpin takes some 80 minutes of it: it delivers ~10,000
# messages/s here (a run of 300,000 deliveries lasts ~30 s), takes ~25 s to
# accept 10,000 subscribers and more than 2 minutes per run to (fail to)
# deliver to 10,000 WebSocket subscribers; the five other servers take about
# 50 minutes together. LOADS, SERVERS, REPEATS, DELIVERIES and PUSHPIN_LOADS
# shorten it (bench/runs/ has the 56-minute run of the full table).
#
# Servers: sluice (the default app, durable: each batch's log write
# fsync'd before fan-out), sluice-relaxed (the same app with durability
# "relaxed", bench/apps/relaxed.lua: what the fsync costs, next to servers
# that keep nothing on disk), nchan, pushpin, floor-direct and
# floor-batched.
#
# Knobs (environment):
#   SERVERS     "sluice sluice-relaxed nchan pushpin floor-direct floor-batched"
#   LOADS       all of the above (e.g. "ws-1k-64 sse-1k-64 idle-ws-10k"); any
#               KIND-N[xM]-SIZE[-rRATE] or idle-KIND-N parses (N topics x M
#               subscribers with xM; k = 1000 for counts, 1024 for sizes)
#   REPEATS     3          runs per (load, pub, server); medians reported
#   DELIVERIES  300000     deliveries aimed at per run
#   MAX_MSGS    10000      cap on messages per run (1kx10: 100,000 deliveries)
#   SLUICE_WORKERS 1       sluice -w
#   BURST_ARGS  "-c 16 -K 1"  the "16 in flight" publisher options
#   PUBS        "1 16"     the pub modes of the throughput loads (PUBS=16
#                          reruns one mode; the chart needs both)
#   HOLD        5          seconds idle connections are held
#   DRAIN       60         loadgen --drain: seconds allowed for deliveries
#                          after the last acknowledged publish (Pushpin
#                          acknowledges at once and delivers ~10,000/s here)
#   RESULTS_DIR (mktemp)   raw loadgen JSON lines (LOAD.PUB.SERVER.REP.json),
#                          loadgen's stderr (.txt), table.md, chart .dat files
#   CHART       docs/bench.png  ("none": no chart)
#   PUSHPIN_LONGPOLL=1     run lp-* against Pushpin anyway (it loses messages)
#   PUSHPIN_LOADS (all)    the loads Pushpin runs (the others print n/a):
#                          its 10k runs take minutes each
#   SLUICE_BIN, LOADGEN as in lib.sh / transports.sh
#
# Caveats: the machine has 2 cores, shared by the server, loadgen, the
# kernel's loopback work and other jobs: compare ratios, not absolute
# figures, and rerun when a figure looks off. sluice fsyncs each commit to
# LMDB before it fans a message out (and before it acknowledges); nchan,
# Pushpin and the floor keep messages in memory, so at one publish at a time
# sluice's rate includes an fsync per message. Pushpin runs with its
# message_rate limit off and message_hwm unbounded (the packaged 2,500
# deliveries/s would cap it), proxying to a minimal GRIP origin
# (bench/pushpin/: pushpin.conf.in, routes.in, grip-origin.c). Pushpin's SSE
# (http-stream) sessions queue at most 100 messages each (PUBLISH_QUEUE_MAX,
# compiled in) and drop the rest silently, and its WebSocket sessions lost a
# few percent of 4 KiB bursts in tests: such runs print FAIL. Server CPU from /proc misses part of the
# loopback softirq work.
set -u
. "$(dirname "$0")/lib.sh"

SERVERS=${SERVERS:-"sluice sluice-relaxed nchan pushpin floor-direct floor-batched"}
ALL_LOADS="ws-100-64 ws-1k-64 ws-10k-64 ws-100-4k ws-1k-4k ws-10k-4k
sse-100-64 sse-1k-64 sse-10k-64 sse-100-4k sse-1k-4k sse-10k-4k
ws-1kx10-64 sse-1kx10-64 ws-1k-64-r100 sse-1k-64-r100 lp-1k-64
idle-ws-10k idle-sse-10k idle-ws-50k idle-sse-50k"
LOADS=${LOADS:-$ALL_LOADS}
REPEATS=${REPEATS:-3}
DELIVERIES=${DELIVERIES:-300000}
MAX_MSGS=${MAX_MSGS:-10000}
export SLUICE_WORKERS=${SLUICE_WORKERS:-1}
ONE_ARGS="-c 1 -K 1"
BURST_ARGS=${BURST_ARGS:-"-c 16 -K 1"}
PUBS=${PUBS:-"1 16"}
HOLD=${HOLD:-5}
DRAIN=${DRAIN:-60}
CHART=${CHART:-$REPO_DIR/docs/bench.png}
PUSHPIN_LONGPOLL=${PUSHPIN_LONGPOLL:-0}
PUSHPIN_LOADS=${PUSHPIN_LOADS:-}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}

if [ "$LOADGEN" = "$BENCH_DIR/loadgen" ] && ! make -s -C "$BENCH_DIR" loadgen >&2; then
    bench_log "cannot build bench/loadgen"
    exit 1
fi
case " $SERVERS " in
*" floor-"*)
    make -s -C "$BENCH_DIR" floor >&2 || { bench_log "cannot build bench/floor"; exit 1; } ;;
esac
bench_raise_nofile 20000
NOFILE=$(ulimit -n)

FAILED=0

# count N: "100" -> 100, "10k" -> 10000.
count() { case $1 in *k) echo $((${1%k} * 1000)) ;; *) echo "$1" ;; esac; }
# bytes S: "64" -> 64, "4k" -> 4096.
bytes() { case $1 in *k) echo $((${1%k} * 1024)) ;; *) echo "$1" ;; esac; }

# parse_load NAME: sets L_IDLE (0/1), L_KIND (ws, sse, longpoll), L_SUBS,
# L_TOPICS, L_SIZE, L_RATE (0: as fast as acknowledged), L_MSGS. Returns 1
# for a name it cannot read.
parse_load() {
    local re_pub='^(ws|sse|lp)-([0-9]+k?)(x([0-9]+k?))?-([0-9]+k?)(-r([0-9]+))?$'
    local re_idle='^idle-(ws|sse)-([0-9]+k?)$' per
    L_IDLE=0 L_RATE=0 L_TOPICS=1 L_SIZE=0 L_MSGS=0
    if [[ $1 =~ $re_idle ]]; then
        L_IDLE=1 L_KIND=${BASH_REMATCH[1]} L_SUBS=$(count "${BASH_REMATCH[2]}")
        return 0
    fi
    [[ $1 =~ $re_pub ]] || return 1
    L_KIND=${BASH_REMATCH[1]}
    [ "$L_KIND" = lp ] && L_KIND=longpoll
    if [ -n "${BASH_REMATCH[3]}" ]; then
        # NxM: N topics with M subscribers each.
        L_TOPICS=$(count "${BASH_REMATCH[2]}")
        per=$(count "${BASH_REMATCH[4]}")
        L_SUBS=$((L_TOPICS * per))
    else
        per=$(count "${BASH_REMATCH[2]}")
        L_SUBS=$per
    fi
    L_SIZE=$(bytes "${BASH_REMATCH[5]}")
    L_RATE=${BASH_REMATCH[7]:-0}
    # Message j goes to topic j mod T, i.e. to `per` subscribers.
    L_MSGS=$((DELIVERIES / per))
    [ "$L_MSGS" -gt "$MAX_MSGS" ] && L_MSGS=$MAX_MSGS
    [ "$L_MSGS" -ge "$L_TOPICS" ] && L_MSGS=$((L_MSGS / L_TOPICS * L_TOPICS))
    [ "$L_MSGS" -lt 20 ] && L_MSGS=20
    return 0
}

# start_server NAME: sets PORT, PIDS (comma list for --pid), SPID (the
# process whose death means the server died), SRV_ARGS (loadgen path and
# publish options) and LP_ARGS (the long-poll subscribe path).
start_server() {
    if ! _start_server "$1"; then
        # Stop whatever part of it did start.
        case $1 in
        sluice | sluice-relaxed) [ -n "${SLUICE_PID:-}" ] && bench_stop "$SLUICE_PID" ;;
        nchan) [ -n "${NGINX_PID:-}" ] && bench_stop "$NGINX_PID" ;;
        pushpin) declare -F bench_stop_pushpin >/dev/null && bench_stop_pushpin ;;
        floor-*) [ -n "${FLOOR_PID:-}" ] && bench_stop "$FLOOR_PID" ;;
        esac
        SLUICE_PID='' NGINX_PID='' FLOOR_PID='' SRV_UP=''
        return 1
    fi
    SRV_UP=$1
}

_start_server() {
    SLUICE_PID='' NGINX_PID='' FLOOR_PID=''
    case $1 in
    sluice | sluice-relaxed)
        if [ "$1" = sluice ]; then
            # shellcheck disable=SC2119 # the default app: no arguments
            bench_start_sluice || return 1
        else
            bench_start_sluice "$BENCH_DIR/apps/relaxed.lua" || return 1
        fi
        PORT=$SLUICE_PORT PIDS=$SLUICE_PID SPID=$SLUICE_PID
        SRV_ARGS=(-S '/topics/{topic}' -P '/topics/{topic}')
        LP_ARGS=(-S '/topics/{topic}?timeout=30')
        ;;
    nchan)
        PORT=$(bench_free_port)
        bench_start_nginx "$BENCH_DIR/nchan/nchan.conf.in" "$PORT" || return 1
        sleep 0.2 # let the worker come up before its pid is read
        PIDS=$(bench_nginx_pids "$NGINX_PID") SPID=$NGINX_PID
        SRV_ARGS=(-S '/sub/{topic}' -P '/pub/{topic}')
        LP_ARGS=(-S '/sub/{topic}')
        ;;
    pushpin)
        if ! declare -F bench_start_pushpin >/dev/null; then
            bench_log "pushpin: bench_start_pushpin is not in lib.sh"
            return 1
        fi
        bench_start_pushpin || return 1
        PORT=$PUSHPIN_PORT PIDS=$PUSHPIN_PIDS SPID=$PUSHPIN_PID
        # shellcheck disable=SC2206 # PUSHPIN_LG_ARGS is a word list
        SRV_ARGS=($PUSHPIN_LG_ARGS)
        LP_ARGS=(-S '/lp/{topic}')
        ;;
    floor-direct | floor-batched)
        bench_start_floor "${1#floor-}" || return 1
        PORT=$FLOOR_PORT PIDS=$FLOOR_PID SPID=$FLOOR_PID
        SRV_ARGS=(-S '/sub/{topic}' -P '/pub/{topic}')
        LP_ARGS=()
        ;;
    *)
        bench_log "unknown server $1"
        return 1
        ;;
    esac
}

stop_server() {
    [ -n "${SRV_UP:-}" ] || return 0
    case $SRV_UP in
    pushpin) bench_stop_pushpin ;;
    *) bench_stop "$SPID" ;;
    esac
    SRV_UP=
}

# unsupported SERVER KIND LOAD: prints why SERVER does not run LOAD (of
# KIND), or nothing.
unsupported() {
    if [ "$1" = pushpin ] && [ -n "$PUSHPIN_LOADS" ] && [[ " $PUSHPIN_LOADS " != *" $3 "* ]]; then
        echo "not run for Pushpin in this run (PUSHPIN_LOADS)"
        return
    fi
    case $1/$2 in
    floor-*/longpoll) echo "the floor server has no long-poll" ;;
    pushpin/longpoll)
        [ "$PUSHPIN_LONGPOLL" = 1 ] ||
            echo "Pushpin's held response (GET /lp) keeps no backlog here: messages published between polls are lost (PUSHPIN_LONGPOLL=1 runs it)"
        ;;
    esac
}

# mark_na LOAD PUB SERVER REASON: a cell that is not run, with its reason.
mark_na() { echo "$4" >"$RESULTS_DIR/$1.$2.$3.na"; }

# settle_server: wait (at most 30 s) until the server's processes use less
# than 10% of a core over half a second: after a run, Pushpin goes on
# closing sessions for a second or more (and answers 502 meanwhile), and
# any server's cleanup would otherwise be counted in the next run's CPU.
settle_server() {
    local i a b
    for i in $(seq 60); do
        a=$(server_ticks)
        sleep 0.5
        b=$(server_ticks)
        [ $((b - a)) -le $((CLK_TCK / 20)) ] && return 0
    done
    bench_log "$SRV_UP still busy after 30 s; running anyway"
}

# server_ticks: utime + stime of the processes in PIDS, in clock ticks.
server_ticks() {
    local p t=0 f
    for p in ${PIDS//,/ }; do
        # Fields 14 and 15 (utime, stime), counted after the command name,
        # which may hold spaces.
        read -r -a f < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${f[11]:-0} + ${f[12]:-0}))
    done
    echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# run_one LOAD PUB SERVER REP ARGS...: one loadgen run against the server
# that is up; JSON in LOAD.PUB.SERVER.REP.json, stderr in .txt.
run_one() {
    local load=$1 pub=$2 srv=$3 rep=$4 out rc
    shift 4
    out=$RESULTS_DIR/$load.$pub.$srv.$rep
    settle_server
    bench_log "$srv $load pub=$pub #$rep: loadgen -p $PORT $* --pid $PIDS"
    timeout 330 "$LOADGEN" -p "$PORT" "$@" --pid "$PIDS" --json >"$out.json" 2>"$out.txt"
    rc=$?
    if [ "$rc" != 0 ]; then
        FAILED=1
        tail -n 4 "$out.txt" | sed 's/^/    /' >&2
        bench_log "$srv $load pub=$pub #$rep: loadgen exit status $rc"
        if ! [ -s "$out.json" ]; then
            [ "$rc" = 124 ] && rc='"timeout"'
            echo "{\"status\":$rc,\"reason\":\"loadgen exit $rc\"}" >"$out.json"
        fi
    else
        grep -E '^ +(deliveries|latency|server cpu|server PSS)' "$out.txt" >&2
    fi
    if ! kill -0 "$SPID" 2>/dev/null; then
        bench_log "$srv died during $load pub=$pub #$rep"
        FAILED=1
        echo "{\"status\":5,\"reason\":\"server died\"}" >"$out.json"
        return 1
    fi
    return 0
}

# run_pubsub LOAD: every server, one server start per load (restarted if it
# died), every pub mode, REPEATS runs each.
run_pubsub() {
    local load=$1 srv why pubs pub rep args
    if [ "$L_RATE" -gt 0 ]; then pubs="r$L_RATE"; else pubs=$PUBS; fi
    for srv in $SERVERS; do
        why=$(unsupported "$srv" "$L_KIND" "$load")
        if [ -n "$why" ]; then
            for pub in $pubs; do mark_na "$load" "$pub" "$srv" "$why"; done
            continue
        fi
        if [ "$L_SUBS" -gt $((NOFILE - 100)) ]; then
            for pub in $pubs; do mark_na "$load" "$pub" "$srv" "RLIMIT_NOFILE $NOFILE is too low for $L_SUBS subscribers"; done
            continue
        fi
        for pub in $pubs; do
            # shellcheck disable=SC2206 # option words
            case $pub in
            1) args=($ONE_ARGS) ;;
            16) args=($BURST_ARGS) ;;
            r*) args=($ONE_ARGS -r "$L_RATE") ;;
            esac
            for rep in $(seq "$REPEATS"); do
                if [ -z "${SRV_UP:-}" ] && ! start_server "$srv"; then
                    bench_log "$srv failed to start"
                    FAILED=1
                    echo '{"status":5,"reason":"server did not start"}' >"$RESULTS_DIR/$load.$pub.$srv.$rep.json"
                    continue
                fi
                if [ "$L_KIND" = longpoll ]; then
                    run_one "$load" "$pub" "$srv" "$rep" -k longpoll -n "$L_SUBS" -T "$L_TOPICS" \
                        -m "$L_MSGS" -s "$L_SIZE" "${args[@]}" "${SRV_ARGS[@]}" "${LP_ARGS[@]}" \
                        --sub-timeout 120 --drain "$DRAIN" --deadline 300 || stop_server
                else
                    run_one "$load" "$pub" "$srv" "$rep" -k "$L_KIND" -n "$L_SUBS" -T "$L_TOPICS" \
                        -m "$L_MSGS" -s "$L_SIZE" "${args[@]}" "${SRV_ARGS[@]}" \
                        --sub-timeout 120 --drain "$DRAIN" --deadline 300 || stop_server
                fi
            done
        done
        stop_server
    done
}

# run_idle LOAD: a fresh server per run; memory per idle connection.
run_idle() {
    local load=$1 srv rep hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((L_SUBS + 100)) ]; then
        for srv in $SERVERS; do
            mark_na "$load" idle "$srv" "skipped: $L_SUBS connections need RLIMIT_NOFILE >= $((L_SUBS + 100)) in loadgen and in the server; the hard limit here is $hard and cannot be raised"
        done
        bench_log "$load skipped: RLIMIT_NOFILE hard limit $hard < $((L_SUBS + 100))"
        return
    fi
    for srv in $SERVERS; do
        why=$(unsupported "$srv" idle "$load")
        if [ -n "$why" ]; then
            mark_na "$load" idle "$srv" "$why"
            continue
        fi
        for rep in $(seq "$REPEATS"); do
            if ! start_server "$srv"; then
                bench_log "$srv failed to start"
                FAILED=1
                echo '{"status":5,"reason":"server did not start"}' >"$RESULTS_DIR/$load.idle.$srv.$rep.json"
                continue
            fi
            run_one "$load" idle "$srv" "$rep" -I -k "$L_KIND" -n "$L_SUBS" --hold "$HOLD" \
                "${SRV_ARGS[@]}" --deadline 240
            stop_server
        done
    done
}

for load in $LOADS; do
    if ! parse_load "$load"; then
        bench_log "unknown load name $load (see the header of $0)"
        exit 1
    fi
done
for srv in $SERVERS; do
    case $srv in
    sluice | sluice-relaxed | nchan | pushpin | floor-direct | floor-batched) ;;
    *) bench_log "unknown server $srv (sluice sluice-relaxed nchan pushpin floor-direct floor-batched)"; exit 1 ;;
    esac
done

RESULTS_DIR=${RESULTS_DIR:-$(mktemp -d /tmp/sluice-compare.XXXXXX)}
mkdir -p "$RESULTS_DIR" || exit 1
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
bench_log "results in $RESULTS_DIR"

START=$(date +%s)
ORDER=()
for load in $LOADS; do
    parse_load "$load"
    ORDER+=("$load")
    rm -f "$RESULTS_DIR/$load".* # results of an earlier run in the same dir
    if [ "$L_IDLE" = 1 ]; then
        echo "{\"load\":\"$load\",\"idle\":1,\"kind\":\"$L_KIND\",\"conns\":$L_SUBS}" >"$RESULTS_DIR/$load.load"
        run_idle "$load"
    else
        echo "{\"load\":\"$load\",\"idle\":0,\"kind\":\"$L_KIND\",\"subs\":$L_SUBS,\"topics\":$L_TOPICS,\"msgs\":$L_MSGS,\"size\":$L_SIZE,\"rate\":$L_RATE}" \
            >"$RESULTS_DIR/$load.load"
        run_pubsub "$load"
    fi
done
bench_log "runs took $(($(date +%s) - START)) s"

"${PYTHON:-/usr/bin/python3}" - "$RESULTS_DIR" "$SERVERS" "${ORDER[*]}" "$REPEATS" \
    "$ONE_ARGS" "$BURST_ARGS" "$PUBS" >"$RESULTS_DIR/table.md" <<'EOF' || FAILED=1
import glob, json, os, statistics, sys
rdir, servers, loads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
repeats, one_args, burst_args = int(sys.argv[4]), sys.argv[5], sys.argv[6]
pub_modes = sys.argv[7].split()

def jload(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

meta = {l: jload(os.path.join(rdir, l + ".load")) or {} for l in loads}

def pubs(l):
    m = meta[l]
    if m.get("idle"):
        return ["idle"]
    return ["r%d" % m["rate"]] if m.get("rate") else pub_modes

def cell(l, p, s):
    """(runs, failed runs, n/a reason) for one (load, pub, server)."""
    base = os.path.join(rdir, f"{l}.{p}.{s}")
    na = None
    if os.path.exists(base + ".na"):
        with open(base + ".na") as f:
            na = f.read().strip()
    runs = [r for r in (jload(f) for f in sorted(glob.glob(base + ".*.json"))) if r is not None]
    return runs, [r for r in runs if r.get("status") != 0], na

def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and x >= 0]
    return statistics.median(xs) if xs else None

def cpu_us(r):
    if r.get("received") and r.get("server_cpu_s", -1) >= 0:
        return r["server_cpu_s"] * 1e6 / r["received"]
    return None

stats = {}  # (l, p, s) -> dict of medians over passing runs
notes, failures = {}, []  # notes: (load, n/a reason) -> servers
for l in loads:
    for p in pubs(l):
        for s in servers:
            runs, bad, na = cell(l, p, s)
            ok = [r for r in runs if r.get("status") == 0]
            st0 = {"failed_only": not ok}
            if not ok:
                # Every run failed: show the figures of those that got to
                # publishing (lost messages, publish errors), marked FAIL.
                ok = [r for r in runs if r.get("status") in (3, 4)]
            st = dict(st0, na=na, bad=len(bad), n=len(runs))
            if p == "idle":
                st["bpc"] = med([r.get("pss_per_conn_b") for r in ok])
            else:
                st["dps"] = med([r.get("deliveries_per_s") for r in ok])
                st["cpu"] = med([cpu_us(r) for r in ok])
                st["p50"] = med([r.get("lat_p50_ms") for r in ok])
                st["p99"] = med([r.get("lat_p99_ms") for r in ok])
                st["lost"] = max([r.get("lost", 0) for r in runs], default=None)
            stats[(l, p, s)] = st
            for r in bad:
                failures.append(f"{l} pub={p} {s}: {r.get('reason') or 'status %s' % r.get('status')}")

def num(v, fmt):
    return "" if v is None else fmt.format(v)

def ratio(a, b):
    if a is None or not b:
        return ""
    r = a / b
    return f"{r:.2f}" if r >= 0.1 or r == 0 else f"{r:.2g}"

out = []
out.append("| load | pub | server | deliveries/s | CPU µs/deliv | p50 ms | p99 ms | lost | B/conn idle "
           "| deliv/s ÷ nchan | CPU or B/conn ÷ nchan | p99 ÷ nchan |")
out.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for l in loads:
    for p in pubs(l):
        ref = stats.get((l, p, "nchan"), {})
        nas = {stats[(l, p, s)]["na"] for s in servers if not stats[(l, p, s)]["n"]}
        if len(nas) == 1 and None not in nas and not any(stats[(l, p, s)]["n"] for s in servers):
            # Skipped for every server (e.g. not enough descriptors): one row.
            out.append(f"| {l} | {p} | all | n/a |" + " |" * 8)
            notes[(l, nas.pop())] = list(servers)
            continue
        for s in servers:
            st = stats[(l, p, s)]
            row = [l, p, s]
            if st["na"] and not st["n"]:
                row += ["n/a"] + [""] * 8
                if s not in notes.setdefault((l, st["na"]), []):
                    notes[(l, st["na"])].append(s)
            elif p == "idle":
                fail = st["bad"] > 0
                row += [""] * 4 + [f"FAIL {st['bad']}/{st['n']}" if fail else "",
                                   num(st["bpc"], "{:,.0f}"), "", ratio(st["bpc"], ref.get("bpc")), ""]
            else:
                lost = num(st["lost"], "{:.0f}")
                if st["bad"]:
                    lost = f"FAIL {st['bad']}/{st['n']}" + (f" (lost {lost})" if st["lost"] else "")
                row += [num(st["dps"], "{:,.0f}"), num(st["cpu"], "{:.2f}"), num(st["p50"], "{:.2f}"),
                        num(st["p99"], "{:.2f}"), lost, "",
                        ratio(st["dps"], ref.get("dps")), ratio(st["cpu"], ref.get("cpu")),
                        ratio(st["p99"], ref.get("p99"))]
            out.append("| " + " | ".join(row) + " |")

# sluice (each mode run) against the better (cheaper) floor mode, per
# throughput load.
floor = [s for s in ("floor-direct", "floor-batched") if s in servers]
mine = [s for s in ("sluice", "sluice-relaxed") if s in servers]
tput = [(l, p) for l in loads for p in pubs(l)
        if p in ("1", "16") and meta[l].get("kind") != "longpoll"]
if mine and floor and tput:
    out.append("")
    out.append("| load | pub | " + " | ".join(f"{s} µs/deliv" for s in mine) + " | " +
               " | ".join(f"{s} µs" for s in floor) + " | " +
               " | ".join(f"{s} ÷ best floor" for s in mine) + " |")
    out.append("|---|---|" + "--:|" * (2 * len(mine) + len(floor)))
    for l, p in tput:
        sl = [stats[(l, p, s)].get("cpu") for s in mine]
        fl = [stats[(l, p, s)].get("cpu") for s in floor]
        best = min([f for f in fl if f], default=None)
        out.append(f"| {l} | {p} | " + " | ".join(num(v, "{:.2f}") for v in sl + fl) + " | " +
                   " | ".join(ratio(v, best) for v in sl) + " |")

out.append("")
out.append(f"Medians of {repeats} run(s). pub: 1 = one publish at a time ({one_args}); "
           f"16 = 16 in flight ({burst_args}); rN = N messages/s ({one_args}).")
out.append("CPU µs/deliv = server CPU seconds per million deliveries; B/conn = PSS growth per idle "
           "connection. Ratios to nchan: deliveries/s higher is better; CPU, B/conn, p99 lower is better.")
for l in loads:
    m = meta[l]
    if m.get("idle"):
        out.append(f"- {l}: {m['conns']:,} idle {m['kind']} connections, fresh server per run")
    elif m:
        per = m["subs"] // m["topics"]
        where = "one topic" if m["topics"] == 1 else f"{m['topics']:,} topics ({per} each)"
        rate = f", {m['rate']}/s" if m.get("rate") else ""
        out.append(f"- {l}: {m['kind']}, {m['subs']:,} subscribers on {where}, "
                   f"{m['msgs']:,} messages of {m['size']} B per run{rate}")
for (l, why), srvs in notes.items():
    who = "all servers" if len(srvs) == len(servers) > 1 else ", ".join(srvs)
    out.append(f"- n/a: {l}, {who}: {why}")
for f in failures:
    out.append(f"- FAIL: {f}")
print("\n".join(out))

# Chart data: server CPU µs per delivery, one file per pub mode; rows are the
# throughput loads, columns the servers (NaN where not run or where every
# run failed).
for p in ("1", "16"):
    with open(os.path.join(rdir, f"cpu-{p}.dat"), "w") as f:
        f.write("load " + " ".join(servers) + "\n")
        for l in loads:
            if p not in pubs(l):
                continue
            vals = [None if stats[(l, p, s)]["failed_only"] else stats[(l, p, s)].get("cpu")
                    for s in servers]
            f.write(l + " " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
EOF
cat "$RESULTS_DIR/table.md"
echo
echo "raw results: $RESULTS_DIR (table.md, LOAD.PUB.SERVER.REP.json, cpu-*.dat)"

if [[ " $PUBS " != *" 1 "* || " $PUBS " != *" 16 "* ]] && [ "$CHART" != none ]; then
    echo "no chart: it draws both pub modes, and PUBS is \"$PUBS\""
    CHART=none
fi
if [ "$CHART" != none ]; then
    if command -v gnuplot >/dev/null; then
        if gnuplot -c "$BENCH_DIR/chart.gp" "$RESULTS_DIR/cpu-1.dat" "$RESULTS_DIR/cpu-16.dat" "$CHART" \
            "$BURST_ARGS" 2>"$RESULTS_DIR/gnuplot.log"; then
            echo "chart: $CHART"
        else
            cat "$RESULTS_DIR/gnuplot.log" >&2
            bench_log "gnuplot failed; no chart"
        fi
    else
        echo "no chart: gnuplot is not installed (apt-get install -y gnuplot-nox), then:"
        echo "  gnuplot -c $BENCH_DIR/chart.gp $RESULTS_DIR/cpu-1.dat $RESULTS_DIR/cpu-16.dat $CHART '$BURST_ARGS'"
    fi
fi
[ "$FAILED" = 0 ] || echo "some runs FAILED (see above); exit status 1"
exit $FAILED
