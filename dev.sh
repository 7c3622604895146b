#!/usr/bin/env bash
# dev.sh: the two commands of the README.
#
#   ./dev.sh run [sluice options]   install what is missing, build, run sluice
#   ./dev.sh test                   install what is missing, build (plain,
#                                   ASan/UBSan and ThreadSanitizer), run every
#                                   test under ctest (the threaded ones under
#                                   TSan too)
#   ./dev.sh bench [SCRIPT]         install the servers it compares against
#                                   (nginx + nchan, Pushpin, gnuplot), build,
#                                   run bench/SCRIPT (default compare.sh)
#
# Dependencies come from Debian's packages (and npm for the JavaScript test
# clients); nothing is installed that is already there.
set -euo pipefail
cd "$(dirname "$0")"
top=$PWD
# nats-server and nginx are in /usr/sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

run_deps=(build-essential cmake pkg-config liblua5.4-dev lua-cjson-dev libev-dev node-llhttp
          libssl-dev liblmdb-dev zlib1g-dev libmimalloc-dev libcurl4-openssl-dev libnats-dev)
test_deps=(curl openssl util-linux strace python3 python3-websockets python3-autobahn chromium clang
           libclang-rt-14-dev nginx-light)
bench_deps=(nginx-light libnginx-mod-nchan pushpin gnuplot-nox wrk redis-server)
# nats-server too, for both (install_nats_server).
# Cluster reads (storage/cluster.c): the JetStream API's JSON answers, parsed by jansson.
run_deps+=(libjansson-dev)
# HTTP/2 (core/h2.c): libnghttp2; nghttp, h2load and a raw client for its tests.
run_deps+=(libnghttp2-dev)
test_deps+=(nghttp2-client python3-h2)
# The deployment checks: systemd-analyze verify on the unit, groff on the man page.
test_deps+=(systemd groff-base)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "dev.sh: installing ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

# nats-server 2.10 or newer, for the cluster tests and benchmarks: 2.9.10
# (bookworm's) can lose an acknowledged message when the stream's leader is
# paused (docs/cluster.md, "NATS server versions").  On bookworm it comes
# from trixie, pinned so that no other package does: a static Go binary
# whose only library is libc.
nats_server_version() { # empty when there is none
    if command -v nats-server >/dev/null; then
        nats-server --version 2>/dev/null | sed -n 's/^nats-server: v//p' || true
    fi
}
install_nats_server() {
    local have codename
    have=$(nats_server_version)
    if [ -n "$have" ] && dpkg --compare-versions "$have" ge 2.10; then return 0; fi
    codename=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release 2>/dev/null)
    if [ "$codename" = bookworm ] && [ ! -e /etc/apt/preferences.d/sluice-nats-server ]; then
        echo "dev.sh: nats-server 2.10 or newer is needed (have: ${have:-none}): adding trixie's, pinned"
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: trixie' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
            sudo_ tee /etc/apt/sources.list.d/sluice-trixie.sources >/dev/null
        printf '%s\n' 'Package: *' 'Pin: release n=trixie' 'Pin-Priority: 1' '' \
            'Package: nats-server' 'Pin: release n=trixie' 'Pin-Priority: 500' |
            sudo_ tee /etc/apt/preferences.d/sluice-nats-server >/dev/null
    fi
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nats-server
    have=$(nats_server_version)
    if [ -z "$have" ] || ! dpkg --compare-versions "$have" ge 2.10; then
        echo "dev.sh: nats-server ${have:-(none)} installed; the cluster tests need 2.10 or newer" >&2
        exit 1
    fi
}

# Node.js and npm: Debian's packages unless the machine already has both
# (some images ship a nodejs package that bundles npm and conflicts with
# Debian's npm).
install_node() {
    if command -v node >/dev/null && command -v npm >/dev/null; then return 0; fi
    install_packages nodejs npm
}

# The test clients (tests/integration), and Node.js 18 from the npm registry
# (tests/node18), the oldest Node the JS client supports, to run its tests.
install_node_modules() {
    local dir
    for dir in "$top/tests/integration" "$top/tests/node18"; do
        if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
            touch "$dir/node_modules"
        fi
    done
}

build() { # build DIR [cmake args]
    local dir=$1
    shift
    cmake -S "$top" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    cmake --build "$dir" -j"$(nproc)"
}

case "${1:-}" in
run)
    shift
    install_packages "${run_deps[@]}"
    build "$top/build"
    exec "$top/build/sluice" "$@"
    ;;
test)
    install_packages "${run_deps[@]}" "${test_deps[@]}"
    install_nats_server
    install_node
    install_node_modules
    build "$top/build" -DSLUICE_WERROR=ON
    build "$top/build-asan" -DSLUICE_WERROR=ON -DSLUICE_SANITIZE=ON
    build "$top/build-tsan" -DSLUICE_WERROR=ON -DSLUICE_TSAN=ON
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
    status=0
    echo "== tests (release build)"
    (cd "$top/build" && ctest --output-on-failure -j2 --timeout 600) || status=1
    echo "== tests (AddressSanitizer + UndefinedBehaviorSanitizer build)"
    (cd "$top/build-asan" && ctest --output-on-failure -j2 --timeout 900) || status=1
    echo "== tests of the threads (ThreadSanitizer build)"
    (cd "$top/build-tsan" && ctest -L threads --output-on-failure -j2 --timeout 900) || status=1
    exit $status
    ;;
bench)
    script=${2:-compare.sh}
    install_packages "${run_deps[@]}" "${bench_deps[@]}"
    install_nats_server
    build "$top/build"
    exec "$top/bench/$script"
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
