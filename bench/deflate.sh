#!/usr/bin/env bash
# bench/deflate.sh: WebSocket fan-out with permessage-deflate against
# without (issue 28 #4), and the idle WebSocket's memory with it negotiated.
#
#   bench/deflate.sh                 # SUBS=1000 MSGS=2000 SIZES="64 4096" REPEATS=3
#
# Each run: a fresh sluice (default app, one worker), SUBS WebSocket
# subscribers on one topic, MSGS messages of SIZE bytes of JSON-looking
# records (loadgen --body json) published 8 in flight, relaxed durability; loadgen inflates
# the compressed frames (--deflate) and checks every delivery.  Printed per
# run: deliveries/s and the server's CPU per delivery (loadgen --pid), and
# the median over REPEATS per (size, mode) with the ratio
# compressed/plain.  Then the idle memory per WebSocket (IDLE connections
# held HOLD s, PSS growth per connection) with and without the extension.
# Raw JSON lines go to bench/runs/deflate-DATE.jsonl.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SUBS=${SUBS:-1000}
MSGS=${MSGS:-2000}
SIZES=${SIZES:-"64 4096"}
REPEATS=${REPEATS:-3}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-5}
make -s -C "$BENCH_DIR" loadgen
bench_raise_nofile $((IDLE + 1000))
mkdir -p "$BENCH_DIR/runs"
out="$BENCH_DIR/runs/deflate-$(date +%Y%m%d-%H%M%S).jsonl"
app="$BENCH_TMP/app.lua"
# The default app with compression of every size (min_size 0: the 64 B
# case is compressed too, the worst case for the ratio).
{ echo 'require("sluice").config{compression = {websocket = true, min_size = 0}, storage = {durability = "relaxed"}}'
  cat "$REPO_DIR/scripts/default.lua"; } >"$app"

run() { # SIZE MODE -> one JSON line
    local size=$1 mode=$2 extra=()
    [ "$mode" = deflate ] && extra=(--deflate)
    bench_start_sluice "$app"
    "$BENCH_DIR/loadgen" -p "$SLUICE_PORT" -k ws -n "$SUBS" -m "$MSGS" -s "$size" --body json -c 1 -K 8 \
        --topic-prefix "dfl$size$mode" --pid "$SLUICE_PID" --json "${extra[@]}" 2>"$BENCH_TMP/lg.err" |
        sed "s/^{/{\"mode_deflate\":\"$mode\",/"
    grep -E "compressed|server cpu|deliveries|result" "$BENCH_TMP/lg.err" | sed 's/^/    /' >&2
    bench_cleanup_sluice
}
bench_cleanup_sluice() {
    kill -TERM "$SLUICE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SLUICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SLUICE_PID" 2>/dev/null || true
}

for size in $SIZES; do
    for rep in $(seq "$REPEATS"); do
        for mode in plain deflate; do
            bench_log "fan-out: $SUBS subscribers, $size B, $mode, run $rep"
            run "$size" "$mode" | tee -a "$out"
        done
    done
done

"${PYTHON:-/usr/bin/python3}" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("\nsize  mode     deliveries/s  server us/delivery  (median of %d)" %
      max(1, len(rows) // 4))
med = {}
for size in sorted({r["size"] for r in rows}):
    for mode in ("plain", "deflate"):
        rs = [r for r in rows if r["size"] == size and r["mode_deflate"] == mode and r["status"] == 0]
        if not rs:
            continue
        cpu = statistics.median(r["server_cpu_s"] * 1e6 / max(1, r["received"]) for r in rs)
        rate = statistics.median(r["deliveries_per_s"] for r in rs)
        med[(size, mode)] = cpu
        print("%5d %-8s %12.0f %19.3f" % (size, mode, rate, cpu))
    if (size, "plain") in med and (size, "deflate") in med:
        print("%5d ratio compressed/plain CPU per delivery: %.2f" %
              (size, med[(size, "deflate")] / med[(size, "plain")]))
PY

for mode in plain deflate; do
    extra=()
    [ "$mode" = deflate ] && extra=(--deflate)
    bench_log "idle: $IDLE WebSockets, $mode"
    bench_start_sluice "$app"
    "$BENCH_DIR/loadgen" -I -p "$SLUICE_PORT" -k ws -n "$IDLE" --hold "$HOLD" --pid "$SLUICE_PID" \
        --json "${extra[@]}" 2>"$BENCH_TMP/lg.err" | sed "s/^{/{\"mode_deflate\":\"$mode\",/" |
        tee -a "$out"
    grep -E "PSS|RSS|result" "$BENCH_TMP/lg.err" | sed 's/^/    /' >&2
    bench_cleanup_sluice
done
bench_log "raw runs: $out"
