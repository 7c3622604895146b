#!/usr/bin/env bash
# tests/fuzz/coverage.sh CORPUS...: the lines of the connection layer that
# fuzz_conn's inputs reach.  Builds fuzz_conn with clang's source-based
# coverage (-fprofile-instr-generate -fcoverage-mapping, no sanitizers),
# runs it once over every input of the corpus directories given (default:
# the seeds), and prints llvm-cov's report for the connection layer's
# files.  A corpus worth measuring comes from a longer run:
#   FUZZ_KEEP=/tmp/fz tests/fuzz/run.sh 600 fuzz_conn
#   tests/fuzz/coverage.sh /tmp/fz/fuzz_conn.corpus
# FUZZ_KEEP=DIR keeps the build, the profile and the line-by-line report
# (DIR/conn.txt) there.  Needs clang and Debian's llvm (llvm-profdata,
# llvm-cov); no test runs it.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -gt 0 ] || set -- "$top/tests/fuzz/seeds/fuzz_conn"
if [ -n "${FUZZ_KEEP:-}" ]; then
    out=$FUZZ_KEEP
    mkdir -p "$out"
else
    out=$(mktemp -d /tmp/sluice-cov.XXXXXX)
    trap 'rm -rf "$out"' EXIT
fi
cc=${CLANG:-clang}
cov=(-fprofile-instr-generate -fcoverage-mapping)
cmake -S "$top" -B "$out/cov-build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_C_FLAGS="-g -O1 ${cov[*]}" -DSLUICE_MIMALLOC=OFF -DBUILD_TESTING=OFF \
      >"$out/cov-build.log" 2>&1 &&
    cmake --build "$out/cov-build" --target sluice_lua -j"${FUZZ_JOBS:-$(nproc)}" >>"$out/cov-build.log" 2>&1 ||
    { tail -40 "$out/cov-build.log"; exit 1; }
b=$out/cov-build
# -fsanitize=fuzzer only for libFuzzer's main, which runs each input once.
"$cc" -g -O1 "${cov[@]}" -fsanitize=fuzzer -D_GNU_SOURCE -I"$top" -I/usr/share/include/llhttp \
    -I/usr/include/lua5.4 "-DSLUICE_FUZZ_APP=\"$top/tests/fuzz/fuzz_conn_app.lua\"" \
    "$top/tests/fuzz/fuzz_conn.c" "$b/libsluice_lua.a" "$b/libsluice_core.a" \
    "$b/libsluice_codec.a" "$b/libsluice_store.a" "$b/libllhttp.a" \
    -Wl,--no-as-needed -lnghttp2 -Wl,--as-needed -llua5.4-cjson -llua5.4 \
    -llmdb -lcurl -lnats -ljansson -lev -lssl -lcrypto -lz -lpthread -lm -o "$out/fuzz_conn_cov"
rm -f "$out"/fuzz_conn.*.profraw
inputs=0
for d in "$@"; do inputs=$((inputs + $(find "$d" -type f | wc -l))); done
LLVM_PROFILE_FILE="$out/fuzz_conn.%p.profraw" TMPDIR="$out" \
    "$out/fuzz_conn_cov" -runs=0 -detect_leaks=0 "$@" >"$out/cov-run.log" 2>&1 ||
    { tail -20 "$out/cov-run.log"; exit 1; }
llvm-profdata merge -sparse "$out"/fuzz_conn.*.profraw -o "$out/fuzz_conn.profdata"
files=("$top/core/conn.c" "$top/core/wsconn.c" "$top/core/sseconn.c" "$top/core/longpoll.c"
       "$top/core/subscriber.c" "$top/core/hub.c" "$top/core/server.c" "$top/lua/api.c")
echo "== coverage of fuzz_conn over $inputs inputs ($*)"
llvm-cov report "$out/fuzz_conn_cov" -instr-profile="$out/fuzz_conn.profdata" "${files[@]}"
llvm-cov show "$out/fuzz_conn_cov" -instr-profile="$out/fuzz_conn.profdata" "${files[@]}" \
    >"$out/conn.txt"
