#!/usr/bin/env bash
# bench/pushpin/run.sh [SECONDS]: run the benchmark's Pushpin and its GRIP
# origin (bench_start_pushpin in bench/lib.sh) for manual loadgen runs;
# prints the ports and the loadgen options, then waits SECONDS (default
# 3600) or until Ctrl-C, and stops everything it started. E.g.
#   bench/pushpin/run.sh &
#   bench/loadgen -p PORT -k ws -n 100 -m 1000 $PUSHPIN_LG_ARGS --pid PIDS
set -u
. "$(dirname "$0")/../lib.sh"
bench_raise_nofile 20000
bench_start_pushpin || exit 1
echo "pushpin on 127.0.0.1:$PUSHPIN_PORT, publish on 127.0.0.1:$PUSHPIN_PUB_PORT (dir $PUSHPIN_DIR)" >&2
echo "loadgen -p $PUSHPIN_PORT $PUSHPIN_LG_ARGS --pid $PUSHPIN_PIDS" >&2
sleep "${1:-3600}" &
wait $! # a trap (Ctrl-C) interrupts this wait, not a foreground sleep
bench_stop_pushpin
