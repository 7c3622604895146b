# shellcheck shell=bash
# bench/lib.sh: shell helpers shared by the benchmark scripts (sourced, not
# run). Starting and stopping servers lives here so that every script starts
# sluice and nginx the same way: in the foreground of a background job, on
# a loopback port, with a private mktemp directory, and is sure to stop
# them (by the pid it started) when the script ends, even on error.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$REPO_DIR/build/sluice}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

# Pids started by this script, stopped by bench_cleanup (the EXIT trap).
BENCH_PIDS=()
BENCH_TMP=$(mktemp -d /tmp/sluice-bench.XXXXXX)

bench_log() { echo "[$(date +%T)] $*" >&2; }

bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${BENCH_PIDS[@]}"; do
        # Bounded wait: 5 s, then SIGKILL.
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    BENCH_PIDS=()
    [ -n "${BENCH_KEEP_TMP:-}" ] || rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Raise the open-file limit as far as the hard limit allows (root in a
# container may still be unable to raise the hard limit itself).
bench_raise_nofile() {
    local want=${1:-65536} hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -Hn "$want" 2>/dev/null || want=$hard
    fi
    ulimit -n "$want" 2>/dev/null || ulimit -n "$hard"
    bench_log "RLIMIT_NOFILE: soft $(ulimit -n), hard $(ulimit -Hn)"
}

# A free loopback TCP port (the kernel's pick; tiny race until the server
# binds it, acceptable for a benchmark).
bench_free_port() {
    "${PYTHON:-/usr/bin/python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# bench_wait_http PORT PATH [SECONDS]: poll until GET answers 200.
bench_wait_http() {
    local port=$1 path=$2 secs=${3:-10} i
    for i in $(seq $((secs * 10))); do
        if curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port$path" | grep -q 200; then
            return 0
        fi
        sleep 0.1
    done
    bench_log "server on port $port did not answer $path within ${secs}s"
    return 1
}

# bench_stop PID: stop one server started here and forget it.
bench_stop() {
    local p=$1 i keep=()
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    bench_stop_forget_pid "$p"
}

# bench_start_nginx TEMPLATE PORT: run nginx with the config TEMPLATE
# (@PORT@ replaced) in a fresh prefix dir. Sets NGINX_PID (the master) and
# NGINX_PREFIX. The worker pids are found with bench_nginx_pids.
bench_start_nginx() {
    local tmpl=$1 port=$2
    NGINX_PREFIX=$(mktemp -d "$BENCH_TMP/nginx.XXXXXX")
    mkdir -p "$NGINX_PREFIX/tmp" "$NGINX_PREFIX/logs"
    sed "s/@PORT@/$port/g" "$tmpl" >"$NGINX_PREFIX/nginx.conf"
    "$NGINX_BIN" -p "$NGINX_PREFIX/" -c "$NGINX_PREFIX/nginx.conf" -g 'daemon off;' \
        >"$NGINX_PREFIX/stderr.log" 2>&1 &
    NGINX_PID=$!
    BENCH_PIDS+=("$NGINX_PID")
    if ! bench_wait_http "$port" /healthz 10; then
        cat "$NGINX_PREFIX/stderr.log" >&2
        return 1
    fi
}

# bench_nginx_pids MASTER: the master and its workers, comma-separated.
bench_nginx_pids() {
    local m=$1 kids
    kids=$(pgrep -P "$m" | tr '\n' ',' | sed 's/,$//')
    echo "$m${kids:+,$kids}"
}

# bench_start_sluice [ARGS...]: run sluice on a free loopback port with a
# fresh data dir and one worker (SLUICE_WORKERS), waiting until
# SLUICE_READY_PATH (default /healthz) answers 200. Logs at warn
# (SLUICE_LOG_LEVEL): at info, sluice writes an access line per request,
# which nginx (access_log off) does not pay. Sets SLUICE_PID, SLUICE_PORT and
# SLUICE_LOG.
bench_start_sluice() {
    local dir
    if [ ! -x "$SLUICE_BIN" ]; then
        bench_log "no sluice binary at $SLUICE_BIN (build it first, or set SLUICE_BIN)"
        return 1
    fi
    dir=$(mktemp -d "$BENCH_TMP/sluice.XXXXXX")
    SLUICE_PORT=$(bench_free_port)
    "$SLUICE_BIN" -l "127.0.0.1:$SLUICE_PORT" -d "$dir/data" -w "${SLUICE_WORKERS:-1}" \
        --log-level "${SLUICE_LOG_LEVEL:-warn}" "$@" >"$dir/stderr.log" 2>&1 &
    SLUICE_PID=$!
    BENCH_PIDS+=("$SLUICE_PID")
    # shellcheck disable=SC2034 # used by the scripts that source this file
    SLUICE_LOG=$dir/stderr.log
    if ! bench_wait_http "$SLUICE_PORT" "${SLUICE_READY_PATH:-/healthz}" 10; then
        bench_log "sluice did not come up; its stderr:"
        cat "$dir/stderr.log" >&2
        return 1
    fi
}

# bench_start_floor MODE: run bench/floor (the fan-out floor: a minimal
# epoll pub/sub server with nchan's paths, see floor.c; MODE direct or
# batched) on a free loopback port, waiting until /healthz answers 200.
# Builds nothing: `make -C bench` first. Sets FLOOR_PID and FLOOR_PORT.
bench_start_floor() {
    local mode=${1:-direct} dir
    if [ ! -x "$BENCH_DIR/floor" ]; then
        bench_log "no floor binary at $BENCH_DIR/floor (run make -C $BENCH_DIR first)"
        return 1
    fi
    dir=$(mktemp -d "$BENCH_TMP/floor.XXXXXX")
    FLOOR_PORT=$(bench_free_port)
    "$BENCH_DIR/floor" -p "$FLOOR_PORT" -m "$mode" >"$dir/stderr.log" 2>&1 &
    FLOOR_PID=$!
    BENCH_PIDS+=("$FLOOR_PID")
    if ! bench_wait_http "$FLOOR_PORT" /healthz 10; then
        bench_log "floor did not come up; its stderr:"
        cat "$dir/stderr.log" >&2
        return 1
    fi
}

# ---- Pushpin (bench/pushpin/) ----
#
# Pushpin is a runner (`pushpin`) that starts four processes of its own:
# condure (client connections), zurl (HTTP client to the origin),
# pushpin-proxy and pushpin-handler, each in its own process group; the
# runner stops them on SIGTERM. Beside it runs the GRIP origin
# (bench/pushpin/grip-origin), which tells Pushpin what to hold.

# _bench_pushpin_ours PID: true if PID is still one of Pushpin's programs (a
# pid recorded earlier may have been reused once the process exited).
_bench_pushpin_ours() {
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    case $comm in pushpin | pushpin-* | condure | zurl | grip-origin) return 0 ;; esac
    return 1
}

# bench_start_pushpin: run Pushpin (bench/pushpin/pushpin.conf.in) and its
# GRIP origin on free loopback ports in a fresh mktemp dir under BENCH_TMP,
# waiting until a request reaches the origin through the proxy and the
# publish port answers. PUSHPIN_LOG_LEVEL (1: warnings) sets Pushpin's log
# level. Sets PUSHPIN_PORT (clients), PUSHPIN_PUB_PORT (POST /publish/),
# PUSHPIN_PID (the runner), PUSHPIN_PIDS (runner, condure, zurl, proxy,
# handler: comma-separated for loadgen --pid; not the origin),
# PUSHPIN_ORIGIN_PID, PUSHPIN_DIR (config, run/, log/) and PUSHPIN_LG_ARGS
# (loadgen's -S/-P/--pub-port/--pub-format for Pushpin; long-poll takes
# -S '/lp/{topic}' after them). All pids go to BENCH_PIDS.
bench_start_pushpin() {
    local dir hp pp op i kids n
    if ! command -v pushpin >/dev/null || ! command -v condure >/dev/null ||
        ! command -v zurl >/dev/null; then
        bench_log "pushpin, condure or zurl missing (apt-get install -y pushpin)"
        return 1
    fi
    if ! make -s -C "$BENCH_DIR/pushpin" grip-origin >&2; then
        bench_log "cannot build bench/pushpin/grip-origin"
        return 1
    fi
    dir=$(mktemp -d "$BENCH_TMP/pushpin.XXXXXX")
    mkdir -p "$dir/run" "$dir/log"
    # Three distinct free ports (the kernel could hand out one twice).
    hp=$(bench_free_port)
    for i in $(seq 20); do pp=$(bench_free_port); [ "$pp" != "$hp" ] && break; done
    for i in $(seq 20); do op=$(bench_free_port); [ "$op" != "$hp" ] && [ "$op" != "$pp" ] && break; done
    sed -e "s|@DIR@|$dir|g" -e "s|@HTTP_PORT@|$hp|g" -e "s|@PUB_PORT@|$pp|g" \
        -e "s|@LOG_LEVEL@|${PUSHPIN_LOG_LEVEL:-1}|g" \
        "$BENCH_DIR/pushpin/pushpin.conf.in" >"$dir/pushpin.conf"
    sed "s|@ORIGIN_PORT@|$op|g" "$BENCH_DIR/pushpin/routes.in" >"$dir/routes"
    PUSHPIN_DIR=$dir

    "$BENCH_DIR/pushpin/grip-origin" -p "$op" >"$dir/origin.log" 2>&1 &
    PUSHPIN_ORIGIN_PID=$!
    BENCH_PIDS+=("$PUSHPIN_ORIGIN_PID")
    # From the private dir (the runner looks for in-tree files relative to
    # its cwd); with as many descriptors as allowed, for condure.
    (cd "$dir" && ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec pushpin --config "$dir/pushpin.conf") \
        >"$dir/runner.log" 2>&1 &
    PUSHPIN_PID=$!
    BENCH_PIDS+=("$PUSHPIN_PID")

    # The runner starts its four services at once; wait for all of them.
    kids=
    for i in $(seq 100); do
        kids=$(pgrep -P "$PUSHPIN_PID" | tr '\n' ' ')
        n=$(echo "$kids" | wc -w)
        [ "$n" -ge 4 ] && break
        kill -0 "$PUSHPIN_PID" 2>/dev/null || break
        sleep 0.1
    done
    for i in $kids; do BENCH_PIDS+=("$i"); done
    if [ "$(echo "$kids" | wc -w)" -lt 4 ]; then
        bench_log "pushpin did not start its services; $dir/runner.log:"
        cat "$dir/runner.log" >&2
        return 1
    fi
    PUSHPIN_PIDS=$PUSHPIN_PID,$(echo "$kids" | tr -s ' ' ',' | sed 's/,$//')
    if ! bench_wait_http "$hp" /healthz 15; then
        bench_log "pushpin: /healthz did not reach the origin; logs in $dir/log:"
        tail -n 5 "$dir/runner.log" "$dir"/log/*.log "$dir/origin.log" >&2
        return 1
    fi
    for i in $(seq 100); do
        if curl -s -o /dev/null -m 1 -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
            -d '{"items":[]}' "http://127.0.0.1:$pp/publish/" | grep -q 200; then
            break
        fi
        sleep 0.1
    done
    PUSHPIN_PORT=$hp
    PUSHPIN_PUB_PORT=$pp
    # shellcheck disable=SC2034 # used by the scripts that source this file
    PUSHPIN_LG_ARGS="-S /sub/{topic} -P /publish/ --pub-port $pp --pub-format pushpin"
}

# bench_stop_pushpin: stop what bench_start_pushpin started: the runner
# first (it stops its services in order), then any service or origin left.
bench_stop_pushpin() {
    local p
    [ -n "${PUSHPIN_PID:-}" ] && bench_stop "$PUSHPIN_PID"
    for p in ${PUSHPIN_PIDS//,/ } ${PUSHPIN_ORIGIN_PID:-}; do
        [ "$p" = "${PUSHPIN_PID:-}" ] && continue
        if _bench_pushpin_ours "$p"; then
            bench_stop "$p"
        else
            # Already gone: only forget it.
            bench_stop_forget_pid "$p"
        fi
    done
    PUSHPIN_PID= PUSHPIN_PIDS= PUSHPIN_ORIGIN_PID=
}

# bench_stop_forget_pid PID: drop PID from BENCH_PIDS without signalling it.
bench_stop_forget_pid() {
    local i keep=()
    for i in "${BENCH_PIDS[@]}"; do [ "$i" = "$1" ] || keep+=("$i"); done
    BENCH_PIDS=("${keep[@]}")
}
