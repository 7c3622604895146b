#!/usr/bin/env bash
# bench/allocs.sh: heap allocations per publish and per delivery in sluice,
# counted by uprobes on the allocator's malloc, calloc and realloc.
#
# Issue 6 asks that the fan-out allocate nothing per delivery. SUBS
# WebSocket (or SSE) subscribers of one topic get MSGS messages, published
# one at a time; then a second run (new subscribers) gets MSGS * 4. The
# difference of the two counts over the difference in messages is what one
# publish allocates, subscribing and start-up left out: per delivery it is
# that over SUBS, and a fan-out that allocated per subscriber would show it
# at 1 or more.
#
# Environment: SUBS (10000), MSGS (10), KIND (ws or sse), SLUICE_BIN.
# Needs perf with uprobes (linux-perf; root): the probes are added for the
# run and removed after. The counts are exact; the run is slower than usual
# (each allocation traps), so it prints no rates.
set -u
. "$(dirname "$0")/lib.sh"

SUBS=${SUBS:-10000}
MSGS=${MSGS:-10}
KIND=${KIND:-ws}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
command -v perf >/dev/null || { bench_log "perf is not installed (Debian: linux-perf)"; exit 1; }
[ -x "$LOADGEN" ] || make -s -C "$BENCH_DIR" loadgen >&2 || exit 1
bench_raise_nofile $((SUBS * 2 + 200))

# The allocator the binary calls: mimalloc when linked in, else libc's.
lib=$(ldd "$SLUICE_BIN" | awk '/libmimalloc/ { print $3 }')
[ -n "$lib" ] || lib=$(ldd "$SLUICE_BIN" | awk '/libc\.so/ { print $3 }')
lib=$(readlink -f "$lib")
group=sluice_allocs
remove_probes() { perf probe -q -d "$group:*" 2>/dev/null; }
remove_probes
for fn in malloc calloc realloc; do
    if ! perf probe -q -x "$lib" --add "$group:$fn=$fn" 2>/dev/null; then
        bench_log "perf probe could not add $fn in $lib (uprobes need root and a kernel with them)"
        remove_probes
        exit 1
    fi
done
trap 'remove_probes; bench_cleanup' EXIT

# allocs MSGS: allocations counted in the server over one loadgen run.
allocs() {
    local msgs=$1 out=$BENCH_TMP/perf.$1 stat
    perf stat -x, -e "$group:malloc,$group:calloc,$group:realloc" -p "$SLUICE_PID" -o "$out" &
    stat=$!
    sleep 0.5 # perf attaches
    "$LOADGEN" -p "$SLUICE_PORT" -k "$KIND" -n "$SUBS" -T 1 -m "$msgs" -s 64 -c 1 -K 1 \
        -S '/topics/{topic}' -P '/topics/{topic}' >/dev/null 2>&1 || bench_log "loadgen failed"
    kill -INT "$stat"
    wait "$stat"
    awk -F, '/sluice_allocs/ { n += $1 } END { print n + 0 }' "$out"
}

# shellcheck disable=SC2119 # the default app: no arguments
bench_start_sluice || exit 1
allocs "$MSGS" >/dev/null # warm-up: the first fan-outs fill the pools
lo=$(allocs "$MSGS")
hi=$(allocs $((MSGS * 4)))
extra=$((MSGS * 3))
bench_log "allocator: $lib"
awk -v lo="$lo" -v hi="$hi" -v m="$extra" -v subs="$SUBS" -v msgs="$MSGS" -v kind="$KIND" 'BEGIN {
    printf "%d %s subscribers: %d allocations with %d messages, %d with %d\n", subs, kind, lo, msgs, hi, msgs * 4
    printf "per publish (its request, Lua task and tables, message, answer): %.1f; per delivery: %.4f\n",
        (hi - lo) / m, (hi - lo) / m / subs
}'
