#!/usr/bin/env bash
# bench/h2.sh: SSE fan-out over HTTP/2 against HTTP/1.1 on the same load
# (issue 28 #4).  One sluice (1 worker, relaxed durability so that the
# publisher's fsync is not what is measured) and bench/h2fan: SUBS SSE
# subscribers of one topic, over HTTP/1.1 (one per connection), over
# HTTP/2 with one stream per connection, and over HTTP/2 with 100 streams
# per connection; MESSAGES messages of SIZE bytes; REPEAT runs of each,
# interleaved.  Prints one line per run (deliveries/s and the server's CPU
# per delivery, its user part, and h2fan's own CPU: near the run's seconds, it is the
# load generator that limits the rate) and appends them to bench/runs/DATE-h2.csv.
#
#   SLUICE_BIN=build/sluice bench/h2.sh            # SUBS=2000 MESSAGES=200 SIZE=64 REPEAT=3
#   TAG=x bench/h2.sh                              # runs to bench/runs/DATE-h2-x.csv
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SUBS=${SUBS:-2000} MESSAGES=${MESSAGES:-200} SIZE=${SIZE:-64} REPEAT=${REPEAT:-3}
make -s -C "$BENCH_DIR" h2fan
bench_raise_nofile 65536
bench_start_sluice "$BENCH_DIR/apps/relaxed.lua"
out=$BENCH_DIR/runs/$(date +%F)-h2${TAG:+-$TAG}.csv
commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -f "$out" ] || echo "date,commit,rep,mode,streams_per_conn,conns,subs,messages,size,delivered,seconds,deliveries_per_s,server_cpu_s,cpu_us_per_delivery,client_cpu_s,server_user_s" >"$out"
for r in $(seq "$REPEAT"); do
    for mode in "h1 1" "h2 1" "h2 100"; do
        set -- $mode
        line=$("$BENCH_DIR/h2fan" --port "$SLUICE_PORT" --mode "$1" --streams "$2" --subs "$SUBS" \
            --messages "$MESSAGES" --size "$SIZE" --pid "$SLUICE_PID")
        echo "$line"
        # key=value pairs -> one CSV row (delivered=N/M keeps N)
        echo "$line" | awk -v d="$(date +%F)" -v c="$commit" -v r="$r" '{
            for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            split(v["delivered"], dv, "/")
            printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", d, c, r, v["mode"],
                v["streams_per_conn"], v["conns"], v["subs"], v["messages"], v["size"], dv[1],
                v["seconds"], v["deliveries_per_s"], v["server_cpu_s"], v["cpu_us_per_delivery"], v["client_cpu_s"],
                v["server_user_s"]
        }' >>"$out"
        sleep 1
    done
done
bench_log "runs appended to $out"
