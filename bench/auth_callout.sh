#!/usr/bin/env bash
# bench/auth_callout.sh: what an HTTP auth callout costs a subscription
# (issue 29 #8).  Two sluice apps run the same subscribe handler
# (bench/apps/auth_callout.lua), one with a callout (sluice.http.request to
# a local backend before req:subscribe), one without; the backend is a
# second sluice (bench/apps/auth_backend.lua: GET /authorize -> 200), so the
# figures show the callout's own cost (a round trip on a kept-alive
# connection, a coroutine yield and resume), not a slow backend's.
#
# wrk drives short polls (GET /sub/bench?timeout=0: a subscription made,
# replayed from the store and answered at once) with keep-alive, ROUNDS
# rounds interleaving the two; the table shows subscriptions/s and p50/p99
# of each target's median round, and the ratio.
#
# The machine has 2 CPUs: wrk, the app and (for the callout) the backend
# share them, so the callout's figure also pays the backend's CPU.  The
# last columns, the CPU time the servers spent per subscription (the app,
# plus the backend for the callout; from /proc/PID/stat) and the app's part
# of it, are steadier than the rate on a machine that others load too.
#
# Environment: WRK_THREADS (1), WRK_CONNS (50), WRK_DURATION (10s),
# WRK_WARMUP (2s), ROUNDS (3), SLUICE_BIN (build/sluice).
set -u
. "$(dirname "$0")/lib.sh"

THREADS=${WRK_THREADS:-1}
CONNS=${WRK_CONNS:-50}
DURATION=${WRK_DURATION:-10s}
WARMUP=${WRK_WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
bench_raise_nofile 20000

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

# cpu_ticks PID...: user + system clock ticks the processes used so far.
cpu_ticks() {
    local p t=0
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo $t
}

RESULTS=()
FAILED=0
# run_wrk NAME URL PIDS: also the CPU time the servers (PIDS, comma-
# separated: the app and its backend) spent per subscription, which the
# machine's other load disturbs less than the rate.
run_wrk() {
    local name=$1 url=$2 pids=${3//,/ } out rps p50 p99 errs t0 t1 a0 a1 reqs us app
    timeout 60 wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >/dev/null 2>&1
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids) a0=$(cpu_ticks ${pids%% *})
    out=$(timeout 120 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" 2>&1)
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids) a1=$(cpu_ticks ${pids%% *})
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}')
    if [ -z "$rps" ] || [ -z "$p99" ]; then
        bench_log "$name: wrk failed:"; echo "$out" >&2; FAILED=1; return
    fi
    [ "$errs" = 0 ] || { bench_log "$name: $errs errors"; FAILED=1; }
    us=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" \
        'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    app=$(awk -v t=$((a1 - a0)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" \
        'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    RESULTS+=("$name|$rps|$(to_ms "$p50")|$(to_ms "$p99")|$errs|$us|$app")
    bench_log "$name: $rps subscriptions/s, p50 $p50, p99 $p99, errors $errs, server CPU ${us} us each"
}

SLUICE_READY_PATH=/authorize bench_start_sluice "$BENCH_DIR/apps/auth_backend.lua" || exit 1
BACKEND_PORT=$SLUICE_PORT
BACKEND_PID=$SLUICE_PID
NAMES=() URLS=() PIDS=()
SLUICE_READY_PATH=/sub/ready?timeout=0 bench_start_sluice "$BENCH_DIR/apps/auth_callout.lua" || exit 1
NAMES+=("subscribe") URLS+=("http://127.0.0.1:$SLUICE_PORT/sub/bench?timeout=0") PIDS+=("$SLUICE_PID")
export AUTH_URL="http://127.0.0.1:$BACKEND_PORT/authorize"
SLUICE_READY_PATH=/sub/ready?timeout=0 bench_start_sluice "$BENCH_DIR/apps/auth_callout.lua" || exit 1
unset AUTH_URL
NAMES+=("subscribe + auth callout") URLS+=("http://127.0.0.1:$SLUICE_PORT/sub/bench?timeout=0")
PIDS+=("$SLUICE_PID,$BACKEND_PID")

for round in $(seq "$ROUNDS"); do
    bench_log "round $round of $ROUNDS"
    for i in "${!NAMES[@]}"; do run_wrk "${NAMES[$i]}" "${URLS[$i]}" "${PIDS[$i]}"; done
done
bench_cleanup

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION (keep-alive, short polls), median of $ROUNDS round(s)," \
    "1 worker each, $(nproc) CPUs"
printf '%-26s %16s %10s %10s %8s %8s %11s %10s\n' target 'subscriptions/s' 'p50 ms' 'p99 ms' errors ratio \
    'CPU us/sub' 'of it app'
median() {
    local r
    for r in "${RESULTS[@]}"; do [ "${r%%|*}" = "$1" ] && echo "$r"; done |
        sort -t'|' -k2 -g | awk '{ a[NR] = $0 } END { if (NR) print a[int((NR + 1) / 2)] }'
}
base=$(median "subscribe" | cut -d'|' -f2)
for name in "${NAMES[@]}"; do
    r=$(median "$name")
    [ -n "$r" ] || continue
    IFS='|' read -r _ rps p50 p99 errs us app <<<"$r"
    printf '%-26s %16.0f %10s %10s %8s %8.2f %11s %10s\n' "$name" "$rps" "$p50" "$p99" "$errs" \
        "$(awk -v a="$rps" -v b="$base" 'BEGIN {print a / b}')" "$us" "$app"
done
exit $FAILED
