#!/usr/bin/env bash
# bench/http.sh: HTTP request throughput of sluice's core beside nginx.
#
# wrk drives, with keep-alive and the same settings for each target:
#   nginx   `return 200 "ok"` (bench/nginx/hello.conf.in, one worker): the
#           ceiling for a static answer on this machine;
#   sluice  GET /healthz (the default app's route);
#   sluice  GET /hello/:name (bench/apps/hello.lua: routing + a Lua handler).
# and prints requests/s, p50/p99 latency and the ratio to nginx.
#
# Both servers run one worker. The machine has 2 cores and wrk shares them
# with the server: the figures compare servers under the same handicap, not
# absolute capacity. PIN=1 pins the server to CPU 0 and wrk to CPU 1.
#
# The machine is shared and its load drifts: all servers stay up and ROUNDS
# rounds interleave the targets; the table shows each target's median round.
#
# Environment: WRK_THREADS (1), WRK_CONNS (50), WRK_DURATION (10s),
# WRK_WARMUP (2s), ROUNDS (3), PIN (0), SLUICE_BIN (build/sluice),
# SKIP_SLUICE=1 to run the nginx baseline alone. Exit status: 0 if every
# target ran, 1 otherwise.
set -u
. "$(dirname "$0")/lib.sh"

THREADS=${WRK_THREADS:-1}
CONNS=${WRK_CONNS:-50}
DURATION=${WRK_DURATION:-10s}
WARMUP=${WRK_WARMUP:-2s}
PIN=${PIN:-0}
ROUNDS=${ROUNDS:-3}

bench_raise_nofile 20000

wrk_cmd() { [ "$PIN" = 1 ] && echo "taskset -c 1 wrk" || echo "wrk"; }

# Results: one line per measured run: name|rps|p50_ms|p99_ms|errors
RESULTS=()
FAILED=0

# to_ms VALUE: wrk prints latency as 812.00us / 1.20ms / 1.05s.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

# run_wrk NAME URL: one warm-up run, one measured run, appended to RESULTS.
run_wrk() {
    local name=$1 url=$2 out rps p50 p99 errs
    # shellcheck disable=SC2046
    timeout 60 $(wrk_cmd) -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >/dev/null 2>&1
    # shellcheck disable=SC2046
    out=$(timeout 120 $(wrk_cmd) -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" 2>&1)
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}')
    if [ -z "$rps" ] || [ -z "$p99" ]; then
        bench_log "$name: wrk failed:"
        echo "$out" >&2
        FAILED=1
        return
    fi
    if [ "$errs" != 0 ]; then
        bench_log "$name: wrk reported errors (the run counts as failed):"
        FAILED=1
        echo "$out" | grep -E 'Non-2xx|Socket errors|requests in' >&2
    fi
    RESULTS+=("$name|$rps|$(to_ms "$p50")|$(to_ms "$p99")|$errs")
    bench_log "$name: $rps req/s, p50 $p50, p99 $p99, errors $errs"
}

pin() { [ "$PIN" = 1 ] && taskset -a -c -p 0 "$1" >/dev/null; }

# All servers up at once, then the rounds interleave them, so that drift in
# the machine's load (other jobs, thermal) spreads over every target.
NAMES=()
URLS=()
SPIDS=() # server pid per target, to notice a crash
LOGS=()  # server stderr per target
NGINX_PORT=$(bench_free_port)
if bench_start_nginx "$BENCH_DIR/nginx/hello.conf.in" "$NGINX_PORT"; then
    for p in $(bench_nginx_pids "$NGINX_PID" | tr , ' '); do pin "$p"; done
    NAMES+=("nginx return 200")
    URLS+=("http://127.0.0.1:$NGINX_PORT/")
    SPIDS+=("$NGINX_PID")
    LOGS+=("$NGINX_PREFIX/stderr.log")
else
    FAILED=1
fi
if [ "${SKIP_SLUICE:-0}" != 1 ]; then
    if bench_start_sluice; then
        pin "$SLUICE_PID"
        NAMES+=("sluice /healthz")
        URLS+=("http://127.0.0.1:$SLUICE_PORT/healthz")
        SPIDS+=("$SLUICE_PID")
        LOGS+=("$SLUICE_LOG")
    else
        FAILED=1
    fi
    if SLUICE_READY_PATH=/hello/ready bench_start_sluice "$BENCH_DIR/apps/hello.lua"; then
        pin "$SLUICE_PID"
        NAMES+=("sluice Lua /hello/:name")
        URLS+=("http://127.0.0.1:$SLUICE_PORT/hello/bench")
        SPIDS+=("$SLUICE_PID")
        LOGS+=("$SLUICE_LOG")
    else
        FAILED=1
    fi
fi
for round in $(seq "$ROUNDS"); do
    bench_log "round $round of $ROUNDS"
    for i in "${!NAMES[@]}"; do
        [ -n "${SPIDS[$i]}" ] || continue
        run_wrk "${NAMES[$i]}" "${URLS[$i]}"
        if ! kill -0 "${SPIDS[$i]}" 2>/dev/null; then
            wait "${SPIDS[$i]}" 2>/dev/null
            bench_log "${NAMES[$i]}: the server died (exit status $?); the end of its log:"
            tail -20 "${LOGS[$i]}" >&2
            SPIDS[i]= # skip it from now on
            FAILED=1
        fi
    done
done
bench_cleanup

# --- table: per target, the median round (by requests/s) of ROUNDS.
echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION (keep-alive), median of $ROUNDS round(s)," \
    "1 server worker, $(nproc) CPUs, pinning: $([ "$PIN" = 1 ] && echo 'server CPU 0, wrk CPU 1' || echo none)"
printf '%-26s %12s %10s %10s %8s %10s\n' target 'requests/s' 'p50 ms' 'p99 ms' errors 'vs nginx'
median() { # median() NAME -> the RESULTS line of the median run
    local r
    for r in "${RESULTS[@]}"; do [ "${r%%|*}" = "$1" ] && echo "$r"; done |
        sort -t'|' -k2 -g | awk '{ a[NR] = $0 } END { if (NR) print a[int((NR + 1) / 2)] }'
}
base=$(median "nginx return 200" | cut -d'|' -f2)
for name in "${NAMES[@]}"; do
    r=$(median "$name")
    [ -n "$r" ] || continue
    IFS='|' read -r _ rps p50 p99 errs <<<"$r"
    ratio=$([ -n "$base" ] && awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.2f", a / b}' || echo -)
    printf '%-26s %12.0f %10s %10s %8s %10s\n' "$name" "$rps" "$p50" "$p99" "$errs" "$ratio"
done
exit $FAILED
