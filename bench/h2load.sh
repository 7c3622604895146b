#!/usr/bin/env bash
# bench/h2load.sh: h2load (Debian nghttp2-client) over HTTP/2 with prior
# knowledge against nginx's HTTP/2 answering a fixed "ok"
# (nginx/hello_h2.conf.in) and sluice's smallest Lua route
# (apps/hello.lua: /hello/:name).  One worker each; REPEAT rounds, the
# targets alternated; N requests over C connections with M streams in
# flight on each.  Prints requests/s and the server's CPU µs per request.
#
#   SLUICE_BIN=build/sluice bench/h2load.sh       # N=200000 C=10 M=10 REPEAT=3
set -euo pipefail
. "$(dirname "$0")/lib.sh"
N=${N:-200000} C=${C:-10} M=${M:-10} REPEAT=${REPEAT:-3}
command -v h2load >/dev/null || { bench_log "h2load not found (apt-get install nghttp2-client)"; exit 1; }
bench_raise_nofile 65536

cpu_of() { # PIDS (comma-separated): utime + stime in seconds
    local t=0 p
    for p in ${1//,/ }; do
        t=$(awk -v t="$t" '{ print t + ($14 + $15) / 100 }' "/proc/$p/stat")
    done
    echo "$t"
}

NGINX_PORT=$(bench_free_port)
NGINX_PREFIX=$(mktemp -d "$BENCH_TMP/nginx.XXXXXX")
mkdir -p "$NGINX_PREFIX/tmp" "$NGINX_PREFIX/logs"
sed "s/@PORT@/$NGINX_PORT/g" "$BENCH_DIR/nginx/hello_h2.conf.in" >"$NGINX_PREFIX/nginx.conf"
"$NGINX_BIN" -p "$NGINX_PREFIX/" -c "$NGINX_PREFIX/nginx.conf" -g 'daemon off;' \
    >"$NGINX_PREFIX/stderr.log" 2>&1 &
NGINX_PID=$!
BENCH_PIDS+=("$NGINX_PID")
for _ in $(seq 100); do
    curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$NGINX_PORT/" && break
    sleep 0.1
done
SLUICE_READY_PATH=/hello/ready bench_start_sluice "$BENCH_DIR/apps/hello.lua"

for r in $(seq "$REPEAT"); do
    for target in nginx lua; do
        case $target in
        nginx) url=http://127.0.0.1:$NGINX_PORT/ pids=$(bench_nginx_pids "$NGINX_PID") ;;
        lua) url=http://127.0.0.1:$SLUICE_PORT/hello/bench pids=$SLUICE_PID ;;
        esac
        c0=$(cpu_of "$pids")
        out=$(h2load -n "$N" -c "$C" -m "$M" "$url" 2>&1)
        c1=$(cpu_of "$pids")
        rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
        ok=$(echo "$out" | awk '/^requests:/ { print $8 }')
        awk -v r="$r" -v t="$target" -v rps="$rps" -v ok="$ok" -v n="$N" -v c0="$c0" -v c1="$c1" \
            'BEGIN { printf "round=%s target=%s requests=%s/%s req_per_s=%s cpu_us_per_req=%.2f\n",
                     r, t, ok, n, rps, (c1 - c0) * 1e6 / n }'
    done
done
