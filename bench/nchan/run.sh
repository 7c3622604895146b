#!/usr/bin/env bash
# bench/nchan/run.sh [PORT]: run the reference nchan server in the
# foreground (Ctrl-C stops it) for manual loadgen runs, e.g.
#   bench/nchan/run.sh 8090 &
#   bench/loadgen -p 8090 -k ws -n 100 -m 1000 -S '/sub/{topic}' -P '/pub/{topic}'
# The prefix is a private mktemp dir, removed on exit.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${1:-8090}
DIR=$(mktemp -d /tmp/nchan-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/tmp" "$DIR/logs"
sed "s/@PORT@/$PORT/g" "$HERE/nchan.conf.in" >"$DIR/nginx.conf"
echo "nchan on 127.0.0.1:$PORT (publish POST /pub/{topic}, subscribe GET /sub/{topic})" >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nginx -p "$DIR/" -c "$DIR/nginx.conf" -g 'daemon off;'
