#!/usr/bin/env bash
# bench/publish.sh: acknowledged publishes per second through sluice's HTTP
# API with 1, 16 and 256 concurrent publishers (wrk connections, one request
# in flight each), durable and relaxed, then the replay speed of 100,000
# messages over SSE and long-poll.
#
#   bench/publish.sh                      DURATION=8 FILL=100000 CONNS="1 16 256"
#
# A publish is answered only after its LMDB commit (and fsync when durable);
# concurrent publishes share commits, so throughput grows with concurrency.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-8}
CONNS=${CONNS:-"1 16 256"}
FILL=${FILL:-100000}
APP=$BENCH_DIR/apps/publish.lua
bench_raise_nofile 4096

printf '%-8s %11s %12s %10s %10s\n' mode publishers "publishes/s" "p50 ms" "p99 ms"
for mode in durable relaxed; do
    export BENCH_DURABILITY=$mode
    bench_start_sluice "$APP"
    for c in $CONNS; do
        t=$(( c < 2 ? 1 : 2 ))
        out=$(wrk -t"$t" -c"$c" -d"${DURATION}s" --latency -s "$BENCH_DIR/post.lua" \
              "http://127.0.0.1:$SLUICE_PORT/topics/bench$c")
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        printf '%-8s %11s %12.0f %10s %10s %s\n' "$mode" "$c" "$rps" "$p50" "$p99" \
            "${non2xx:+($non2xx non-2xx answers)}"
    done
    if [ "$mode" = relaxed ]; then
        bench_log "filling topic 'replay' with $FILL messages"
        ids=$(curl -s -m 600 -X POST "http://127.0.0.1:$SLUICE_PORT/fill/replay?n=$FILL")
        first=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["first"])' <<<"$ids")
        # Replay everything after the first message: FILL - 1 messages.
        /usr/bin/python3 "$BENCH_DIR/replay.py" "$SLUICE_PORT" replay "$first" $((FILL - 1))
    fi
    bench_stop "$SLUICE_PID" || true
done
