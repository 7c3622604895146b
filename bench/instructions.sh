#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per answered long-poll, for
# sluice and nchan, counted by valgrind's callgrind.
#
# CPU time on this shared 2-core VM varies by ±30% from run to run; an
# instruction count does not, so it shows what a change to the request path
# is worth where a timed A/B cannot. Kernel work (the same read and write
# per poll for both servers) is not counted.
#
# For each server: run it under callgrind, then long-poll with POLLERS
# clients on one topic while MSGS messages are published one at a time
# (each message answers every held poll, which re-polls with its cursor),
# and again with MSGS/10 messages. The difference of the two totals over
# the difference in answered polls is the cost of one poll (its request,
# its share of the publish and fan-out, its answer) without start-up.
#
# Environment: POLLERS (100), MSGS (100), SERVERS ("sluice nchan"),
# SLUICE_BIN, NGINX_BIN. Needs valgrind; takes about a minute.
set -u
. "$(dirname "$0")/lib.sh"

POLLERS=${POLLERS:-100}
MSGS=${MSGS:-100}
SERVERS=${SERVERS:-"sluice nchan"}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
command -v valgrind >/dev/null || { bench_log "valgrind is not installed"; exit 1; }
bench_raise_nofile 4096

# total_ir SERVER MSGS: callgrind's instruction total of the server's
# processes (nginx: the worker's, the master sees no traffic) over one run.
total_ir() {
    local srv=$1 msgs=$2 dir wrap port pids sub pub
    dir=$(mktemp -d "$BENCH_TMP/callgrind.XXXXXX")
    wrap=$dir/under-callgrind
    if [ "$srv" = sluice ]; then
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/out.%%p %s "$@"\n' \
            "$dir" "$SLUICE_BIN" >"$wrap"
    else
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=%s/out.%%p %s "$@"\n' \
            "$dir" "$NGINX_BIN" >"$wrap"
    fi
    chmod +x "$wrap"
    if [ "$srv" = sluice ]; then
        SLUICE_BIN=$wrap bench_start_sluice >/dev/null || return 1
        port=$SLUICE_PORT pids=$SLUICE_PID sub='/topics/{topic}' pub='/topics/{topic}'
    else
        port=$(bench_free_port)
        NGINX_BIN=$wrap bench_start_nginx "$BENCH_DIR/nchan/nchan.conf.in" "$port" >/dev/null ||
            return 1
        pids=$NGINX_PID sub='/sub/{topic}' pub='/pub/{topic}'
    fi
    "$LOADGEN" -p "$port" -k longpoll -n "$POLLERS" -m "$msgs" -s 64 -c 1 -K 1 \
        -S "$sub" -P "$pub" >/dev/null 2>&1 || bench_log "$srv: loadgen failed"
    if [ "$srv" = sluice ]; then
        bench_stop "$pids"
    else
        kill -QUIT "$pids" 2>/dev/null # graceful: callgrind writes its files
        for _ in $(seq 100); do kill -0 "$pids" 2>/dev/null || break; sleep 0.1; done
        bench_stop "$pids"
    fi
    # The largest total is the process that served (sluice, or nginx's worker).
    for f in "$dir"/out.*; do
        callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
    done | sort -n | tail -1
}

printf '%-8s %14s %14s %18s\n' server "Ir (${MSGS} msgs)" "Ir ($((MSGS / 10)) msgs)" "Ir per answered poll"
declare -A per_poll
for srv in $SERVERS; do
    hi=$(total_ir "$srv" "$MSGS") lo=$(total_ir "$srv" $((MSGS / 10)))
    if [ -z "$hi" ] || [ -z "$lo" ]; then
        bench_log "$srv: no callgrind output"
        continue
    fi
    per_poll[$srv]=$(((hi - lo) / (POLLERS * (MSGS - MSGS / 10))))
    printf '%-8s %14s %14s %18s\n' "$srv" "$hi" "$lo" "${per_poll[$srv]}"
done
if [ -n "${per_poll[sluice]:-}" ] && [ -n "${per_poll[nchan]:-}" ]; then
    awk -v s="${per_poll[sluice]}" -v n="${per_poll[nchan]}" \
        'BEGIN { printf "sluice / nchan: %.2f\n", s / n }'
fi
