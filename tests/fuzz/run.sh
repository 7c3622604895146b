#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS: builds every libFuzzer target with clang
# (address and undefined-behaviour sanitizers) and runs each for SECONDS on
# a fresh corpus seeded from tests/fuzz/seeds/NAME/ when present.  ctest runs
# it briefly on every test run; run it longer by hand:
#   tests/fuzz/run.sh 600
set -euo pipefail
secs=${1:-20}
top=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp -d /tmp/sluice-fuzz.XXXXXX)
trap 'rm -rf "$out"' EXIT
cc=${CLANG:-clang}
flags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -D_GNU_SOURCE -I"$top" -I/usr/share/include/llhttp)
llhttp=(/usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c)
declare -A srcs=(
    [fuzz_http]="core/http.c ${llhttp[*]}"
    [fuzz_ws]="core/ws.c core/utf8.c"
    [fuzz_sse]="core/sse.c core/b64.c core/utf8.c"
    [fuzz_wal]="storage/wal.c"
)
status=0
for name in fuzz_http fuzz_ws fuzz_sse fuzz_wal; do
    files=()
    for f in ${srcs[$name]}; do
        case $f in /*) files+=("$f") ;; *) files+=("$top/$f") ;; esac
    done
    "$cc" "${flags[@]}" "${files[@]}" "$top/tests/fuzz/$name.c" -lcrypto -o "$out/$name" -w
    mkdir -p "$out/$name.corpus"
    if [ -d "$top/tests/fuzz/seeds/$name" ]; then cp "$top/tests/fuzz/seeds/$name"/* "$out/$name.corpus/"; fi
    echo "== $name: ${secs}s"
    if ! "$out/$name" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 \
            "$out/$name.corpus" >"$out/$name.log" 2>&1; then
        status=1
        tail -40 "$out/$name.log"
    else
        grep -E "stat::number_of_executed_units|Done" "$out/$name.log" | tail -2
    fi
done
exit $status
