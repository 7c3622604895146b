#!/usr/bin/env bash
# bench/filter.sh: what a per-subscriber Lua filter costs per delivery, at
# 1,000 WebSocket subscribers on one topic, against the declarative options
# (evaluated in C) and no filter.  Prints deliveries/s and server CPU
# microseconds per delivery for each; the difference is the filter's cost.
#
#   bench/filter.sh        SUBS=1000 MSGS=400 ROUNDS=3
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

SUBS=${SUBS:-1000}
MSGS=${MSGS:-400}
ROUNDS=${ROUNDS:-3}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
make -s -C "$BENCH_DIR" loadgen >/dev/null
bench_raise_nofile $((SUBS + 512))

printf '%-12s %6s %14s %18s\n' subscription round "deliveries/s" "CPU us/delivery"
for kind in plain declarative lua; do
    for round in $(seq "$ROUNDS"); do
        bench_start_sluice "$BENCH_DIR/apps/filter.lua"
        out=$("$LOADGEN" -p "$SLUICE_PORT" -k ws -n "$SUBS" -m "$MSGS" -s 64 \
              -S "/$kind/{topic}" -P "/topics/{topic}" --pid "$SLUICE_PID" --json 2>/dev/null)
        /usr/bin/python3 - "$kind" "$round" "$out" <<'PY'
import json, sys
kind, rnd, line = sys.argv[1], sys.argv[2], sys.argv[3].strip().splitlines()[-1]
r = json.loads(line)
d = r.get("received") or 0
cpu = r.get("server_cpu_s") or 0.0
rate = r.get("deliveries_per_s") or 0
print("%-12s %6s %14.0f %18.2f" % (kind, rnd, rate, (cpu * 1e6 / d) if d else float("nan")))
PY
        bench_stop "$SLUICE_PID" || true
    done
done
