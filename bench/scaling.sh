#!/usr/bin/env bash
# bench/scaling.sh: what a second worker buys.  For WORKERS_LIST (default
# "1 2") sluice workers, the same fan-out loads as compare.sh (SUBS
# subscribers on one topic, 64-byte messages, WebSocket and SSE, one publish
# at a time and 16 in flight on 16 publisher connections), REPEATS runs each; prints the median
# deliveries/s and server CPU microseconds per delivery per worker count,
# and the ratio to one worker.
#
# The machine has 2 cores, which loadgen shares: with 2 workers the server
# and the load generator compete for them, so the curve shows what a second
# loop costs and gives on this machine, not on a bigger one.
#
# Environment: WORKERS_LIST ("1 2"), SUBS (1000), DELIVERIES (300000 per
# run), REPEATS (3), KINDS ("ws sse"), SLUICE_BIN, LOADGEN.  Takes about
# 2 minutes with the defaults.  Exit status 0 when every run passed.
set -u
. "$(dirname "$0")/lib.sh"

WORKERS_LIST=${WORKERS_LIST:-"1 2"}
SUBS=${SUBS:-1000}
DELIVERIES=${DELIVERIES:-300000}
REPEATS=${REPEATS:-3}
KINDS=${KINDS:-"ws sse"}
LOADGEN=${LOADGEN:-$BENCH_DIR/loadgen}
if [ "$LOADGEN" = "$BENCH_DIR/loadgen" ] && ! make -s -C "$BENCH_DIR" loadgen >&2; then
    bench_log "cannot build bench/loadgen"
    exit 1
fi
bench_raise_nofile 20000
MSGS=$((DELIVERIES / SUBS))
[ "$MSGS" -lt 20 ] && MSGS=20
FAILED=0

# median of the arguments (numbers)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# json_field LINE NAME: a number from loadgen's --json line
json_field() { sed -n "s/.*\"$2\":\([-0-9.e]*\).*/\1/p" <<<"$1"; }

declare -A RATE CPU
for w in $WORKERS_LIST; do
    SLUICE_WORKERS=$w bench_start_sluice || exit 1
    for kind in $KINDS; do
        for flight in 1 16; do
            rates=() cpus=()
            for r in $(seq "$REPEATS"); do
                line=$("$LOADGEN" -p "$SLUICE_PORT" -k "$kind" -n "$SUBS" -m "$MSGS" -s 64 \
                    -c "$flight" -K 1 --pid "$SLUICE_PID" --json 2>/dev/null) || {
                    bench_log "run failed: workers=$w $kind flight=$flight"
                    FAILED=1
                    continue
                }
                rate=$(json_field "$line" deliveries_per_s)
                cpu=$(json_field "$line" server_cpu_s)
                n=$(json_field "$line" received)
                rates+=("$rate")
                cpus+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN {printf "%.3f", c * 1e6 / n}')")
            done
            [ ${#rates[@]} -gt 0 ] || continue
            RATE[$w,$kind,$flight]=$(median "${rates[@]}")
            CPU[$w,$kind,$flight]=$(median "${cpus[@]}")
        done
    done
    bench_stop "$SLUICE_PID" || true
done

first=${WORKERS_LIST%% *}
echo
echo "| load | in flight | workers | deliveries/s | x vs $first | CPU us/delivery | x vs $first |"
echo "|---|---|---|---|---|---|---|"
for kind in $KINDS; do
    for flight in 1 16; do
        for w in $WORKERS_LIST; do
            r=${RATE[$w,$kind,$flight]:-} c=${CPU[$w,$kind,$flight]:-}
            r1=${RATE[$first,$kind,$flight]:-} c1=${CPU[$first,$kind,$flight]:-}
            [ -n "$r" ] && [ -n "$r1" ] || continue
            awk -v k="$kind-$SUBS-64" -v f="$flight" -v w="$w" -v r="$r" -v c="$c" -v r1="$r1" \
                -v c1="$c1" 'BEGIN {printf "| %s | %s | %s | %.0f | %.2f | %.2f | %.2f |\n",
                k, f, w, r, r / r1, c, c / c1}'
        done
    done
done
exit $FAILED
