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
    for i in "${BENCH_PIDS[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done
    BENCH_PIDS=("${keep[@]}")
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
