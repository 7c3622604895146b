#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS [NAME...]: builds the libFuzzer targets (all of
# them, or the NAMEs given) with clang (address and undefined-behaviour
# sanitizers) and runs each for SECONDS on a fresh corpus seeded from
# tests/fuzz/seeds/NAME/ when present.  ctest runs it briefly on every test
# run (fuzz.codecs, fuzz.conn); run it longer by hand:
#   tests/fuzz/run.sh 600
#   tests/fuzz/run.sh 3600 fuzz_conn
# FUZZ_KEEP=DIR keeps the binaries, corpora and logs in DIR.  A crash's
# reproducer is written beside the target as NAME-crash-*, and the
# directory is kept when a target fails.
set -euo pipefail
status=0
secs=${1:-20}
shift || true
top=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${FUZZ_KEEP:-}" ]; then
    out=$FUZZ_KEEP
    mkdir -p "$out"
else
    out=$(mktemp -d /tmp/sluice-fuzz.XXXXXX)
    trap 'if [ "$status" = 0 ]; then rm -rf "$out"; else echo "kept $out"; fi' EXIT
fi
cc=${CLANG:-clang}
flags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -D_GNU_SOURCE -I"$top" -I/usr/share/include/llhttp)
llhttp=(/usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c)
declare -A srcs=(
    [fuzz_http]="core/http.c ${llhttp[*]}"
    [fuzz_ws]="core/ws.c core/wsz.c core/utf8.c"
    [fuzz_sse]="core/sse.c core/b64.c core/utf8.c"
    [fuzz_wal]="storage/wal.c storage/crc32c.c"
)
# fuzz_conn links the server's libraries as CMakeLists.txt makes them (every
# layer but the command line: main.c, admin.c, worker.c), built here with
# clang, the fuzzer's coverage and the sanitizers, in $out/build.
build_conn() {
    local san=(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined)
    cmake -S "$top" -B "$out/build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Debug \
          -DCMAKE_C_FLAGS="-g -O1 ${san[*]}" -DSLUICE_MIMALLOC=OFF -DBUILD_TESTING=OFF \
          >"$out/build.log" 2>&1 &&
        cmake --build "$out/build" --target sluice_lua -j"${FUZZ_JOBS:-$(nproc)}" >>"$out/build.log" 2>&1 ||
        { tail -40 "$out/build.log"; return 1; }
    local b=$out/build
    "$cc" "${flags[@]}" -I/usr/include/lua5.4 \
        -Wl,--no-as-needed -lnghttp2 -Wl,--as-needed \
        "-DSLUICE_FUZZ_APP=\"$top/tests/fuzz/fuzz_conn_app.lua\"" "$top/tests/fuzz/fuzz_conn.c" \
        "$b/libsluice_lua.a" "$b/libsluice_core.a" "$b/libsluice_codec.a" "$b/libsluice_store.a" \
        "$b/libllhttp.a" -llua5.4-cjson -llua5.4 -llmdb -lcurl -lnats -ljansson -lev -lssl -lcrypto -lz -lpthread -lm \
        -o "$out/fuzz_conn"
}
# Inputs are client scripts: several requests and frames need more room.
declare -A maxlen=([fuzz_conn]=16384)
# fuzz_conn keeps pools and Lua state across inputs, so libFuzzer's leak
# check would scan the heap after nearly every input (15 ms each, 98% of
# the time); it runs once over the final corpus instead.
declare -A leaks=([fuzz_conn]=0)
# fuzz_conn logs every line at debug level: to /dev/null (sanitizer reports
# and libFuzzer's own output still reach the log).
declare -A fdmask=([fuzz_conn]=2)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(fuzz_http fuzz_ws fuzz_sse fuzz_wal fuzz_conn)
for name in "${names[@]}"; do
    if [ "$name" = fuzz_conn ]; then
        build_conn
    else
        files=()
        for f in ${srcs[$name]}; do
            case $f in /*) files+=("$f") ;; *) files+=("$top/$f") ;; esac
        done
        "$cc" "${flags[@]}" "${files[@]}" "$top/tests/fuzz/$name.c" -lcrypto -lz -o "$out/$name" -w
    fi
    mkdir -p "$out/$name.corpus"
    if [ -d "$top/tests/fuzz/seeds/$name" ]; then cp "$top/tests/fuzz/seeds/$name"/* "$out/$name.corpus/"; fi
    dict=()
    if [ -f "$top/tests/fuzz/$name.dict" ]; then dict=(-dict="$top/tests/fuzz/$name.dict"); fi
    echo "== $name: ${secs}s"
    if ! TMPDIR="$out" "$out/$name" -max_total_time="$secs" -max_len="${maxlen[$name]:-4096}" \
            -detect_leaks="${leaks[$name]:-1}" -close_fd_mask="${fdmask[$name]:-0}" -print_final_stats=1 -artifact_prefix="$out/$name-" \
            "${dict[@]}" "$out/$name.corpus" >"$out/$name.log" 2>&1; then
        status=1
        tail -60 "$out/$name.log"
    elif [ "${leaks[$name]:-1}" = 0 ] &&
            ! TMPDIR="$out" "$out/$name" -runs=0 -detect_leaks=1 -close_fd_mask=2 \
            -artifact_prefix="$out/$name-" \
            "$out/$name.corpus" >"$out/$name.leaks.log" 2>&1; then
        status=1
        tail -60 "$out/$name.leaks.log"
    else
        grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|Done" "$out/$name.log" | tail -3
    fi
done
exit $status
