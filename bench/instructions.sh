#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per unit of work, for
# sluice and nchan, counted by valgrind's callgrind.
#
# CPU time on this shared 2-core VM varies by ±30% from run to run; an
# instruction count does not, so it shows what a change is worth where a
# timed A/B cannot. Kernel work is not counted.
#
# Two measures (LOAD):
#   longpoll  one answered long-poll: POLLERS clients hold polls on one
#             topic while messages are published one at a time (each
#             message answers every held poll, which re-polls with its
#             cursor). Its request, its share of the publish and fan-out,
#             its answer. Both servers make the same read and write per poll.
#   publish   one publish to SUBS WebSocket subscribers of its topic, one at
#             a time: the request, the commit (sluice), the fan-out and the
#             answer. With SUBS=10 this is the unit of the 1kx10 loads,
#             where the per-publish cost weighs ten times more per delivery
#             than at 100 subscribers.
# For each server: run it under callgrind with MSGS messages, and again
# with MSGS/10. The difference of the two totals over the difference in
# work is the cost of one unit without start-up. All threads count (sluice's
# storage thread included).
#
# Environment: LOAD (longpoll), POLLERS (100), SUBS (10), MSGS (100 for
# longpoll, 2000 for publish), SERVERS ("sluice nchan"; also
# sluice-relaxed, the default app with relaxed durability), SLUICE_BIN,
# NGINX_BIN. Needs valgrind; takes about a minute.
set -u
. "$(dirname "$0")/lib.sh"

LOAD=${LOAD:-longpoll}
POLLERS=${POLLERS:-100}
SUBS=${SUBS:-10}
SERVERS=${SERVERS:-"sluice nchan"}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
case $LOAD in
longpoll) MSGS=${MSGS:-100} unit="answered poll" ;;
publish) MSGS=${MSGS:-2000} unit="publish to $SUBS" ;;
*)
    bench_log "LOAD must be longpoll or publish"
    exit 1
    ;;
esac
command -v valgrind >/dev/null || { bench_log "valgrind is not installed"; exit 1; }
bench_raise_nofile 4096

# total_ir SERVER MSGS: callgrind's instruction total of the server's
# processes (nginx: the worker's, the master sees no traffic) over one run.
total_ir() {
    local srv=$1 msgs=$2 dir wrap port pids sub pub load
    dir=$(mktemp -d "$BENCH_TMP/callgrind.XXXXXX")
    wrap=$dir/under-callgrind
    if [ "$srv" != nchan ]; then
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/out.%%p %s "$@"\n' \
            "$dir" "$SLUICE_BIN" >"$wrap"
    else
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=%s/out.%%p %s "$@"\n' \
            "$dir" "$NGINX_BIN" >"$wrap"
    fi
    chmod +x "$wrap"
    case $srv in
    sluice)
        # shellcheck disable=SC2119 # the default app: no arguments
        SLUICE_BIN=$wrap bench_start_sluice >/dev/null || return 1
        ;;
    sluice-relaxed)
        SLUICE_BIN=$wrap bench_start_sluice "$BENCH_DIR/apps/relaxed.lua" >/dev/null || return 1
        ;;
    nchan)
        port=$(bench_free_port)
        NGINX_BIN=$wrap bench_start_nginx "$BENCH_DIR/nchan/nchan.conf.in" "$port" >/dev/null ||
            return 1
        ;;
    *)
        bench_log "unknown server $srv (sluice sluice-relaxed nchan)"
        return 1
        ;;
    esac
    if [ "$srv" = nchan ]; then
        pids=$NGINX_PID sub='/sub/{topic}' pub='/pub/{topic}'
    else
        port=$SLUICE_PORT pids=$SLUICE_PID sub='/topics/{topic}' pub='/topics/{topic}'
    fi
    if [ "$LOAD" = longpoll ]; then
        load=(-k longpoll -n "$POLLERS")
    else
        load=(-k ws -n "$SUBS")
    fi
    "$LOADGEN" -p "$port" "${load[@]}" -m "$msgs" -s 64 -c 1 -K 1 \
        -S "$sub" -P "$pub" >/dev/null 2>&1 || bench_log "$srv: loadgen failed"
    if [ "$srv" = nchan ]; then
        kill -QUIT "$pids" 2>/dev/null # graceful: callgrind writes its files
        for _ in $(seq 100); do kill -0 "$pids" 2>/dev/null || break; sleep 0.1; done
    fi
    bench_stop "$pids"
    # The largest total is the process that served (sluice, or nginx's worker).
    for f in "$dir"/out.*; do
        callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
    done | sort -n | tail -1
}

printf '%-15s %14s %14s %22s\n' server "Ir (${MSGS} msgs)" "Ir ($((MSGS / 10)) msgs)" "Ir per $unit"
declare -A per_unit
for srv in $SERVERS; do
    hi=$(total_ir "$srv" "$MSGS") lo=$(total_ir "$srv" $((MSGS / 10)))
    if [ -z "$hi" ] || [ -z "$lo" ]; then
        bench_log "$srv: no callgrind output"
        continue
    fi
    units=$((MSGS - MSGS / 10))
    [ "$LOAD" = longpoll ] && units=$((units * POLLERS))
    per_unit[$srv]=$(((hi - lo) / units))
    printf '%-15s %14s %14s %22s\n' "$srv" "$hi" "$lo" "${per_unit[$srv]}"
done
for srv in sluice sluice-relaxed; do
    if [ -n "${per_unit[$srv]:-}" ] && [ -n "${per_unit[nchan]:-}" ]; then
        awk -v s="${per_unit[$srv]}" -v n="${per_unit[nchan]}" -v name="$srv" \
            'BEGIN { printf "%s / nchan: %.2f\n", name, s / n }'
    fi
done
