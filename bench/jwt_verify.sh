#!/usr/bin/env bash
# bench/jwt_verify.sh: sluice.jwt.verify verifications per second for
# HS256, RS256 (2048-bit) and ES256 (P-256), beside `openssl speed` for the
# same operations (issue 29 #8).
#
# The tokens are made with the openssl command line (tests/integration/
# test_jwt.py's Keys); bench/apps/jwt_bench.lua verifies one N times in a
# handler, keys parsed once, and answers the rate.  What sluice adds to
# OpenSSL's own verify: splitting and base64url-decoding the token, JSON of
# header and claims (lua-cjson), the claims checks, the Lua call.
#
# Environment: N (20000 HMAC, N/4 for the others), SLUICE_BIN, SECONDS_SPEED
# (openssl speed's seconds per test, 2).
set -u
. "$(dirname "$0")/lib.sh"
N=${N:-20000}
SPEED=${SECONDS_SPEED:-2}

SLUICE_READY_PATH=/ready bench_start_sluice "$BENCH_DIR/apps/jwt_bench.lua" || exit 1
PORT=$SLUICE_PORT
KEYDIR=$(mktemp -d "$BENCH_TMP/keys.XXXXXX")

# name|alg|n -> the JSON body for /bench
bodies=$("${PYTHON:-/usr/bin/python3}" - "$KEYDIR" "$REPO_DIR" <<'PY'
import json, sys, time
sys.path.insert(0, sys.argv[2] + "/tests/integration")
from test_jwt import Keys
k = Keys(sys.argv[1])
claims = {"sub": "bench", "iat": int(time.time()), "exp": int(time.time()) + 3600}
secret = "a secret of 32 bytes, or longer!"
for alg, key, pub in (("HS256", secret, secret), ("RS256", "rsa", k.pub["rsa"]),
                      ("ES256", "P-256", k.pub["P-256"])):
    print(alg + "\t" + json.dumps({"token": k.token(alg, key, claims), "keys": pub}))
PY
) || exit 1

declare -A SLUICE_RATE
while IFS=$'\t' read -r alg body; do
    n=$N
    [ "$alg" = HS256 ] || n=$((N / 4))
    rate=$(curl -s -m 120 -d "$body" "http://127.0.0.1:$PORT/bench?n=$n" |
        "${PYTHON:-/usr/bin/python3}" -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["per_second"])')
    SLUICE_RATE[$alg]=$rate
    bench_log "sluice.jwt.verify $alg: $rate/s"
done <<<"$bodies"
bench_cleanup

# openssl speed: verify/s of rsa2048 and ecdsap256; HMAC-SHA256 of 256-byte
# blocks (a token's signing input is about that long) as operations/s.
speed=$(openssl speed -seconds "$SPEED" rsa2048 ecdsap256 2>/dev/null)
rsa=$(echo "$speed" | awk '$1 == "rsa" && $2 == "2048" {print $(NF)}')
ec=$(echo "$speed" | awk '/nistp256/ && $1 == "256" {print $(NF)}')
hm=$(openssl speed -seconds "$SPEED" -bytes 256 -evp sha256 -hmac bench 2>/dev/null |
    awk '/^hmac/ {v = $NF; sub(/k$/, "", v); print v * 1000 / 256}')
[ -n "$hm" ] || hm=$(openssl speed -seconds "$SPEED" -bytes 256 -hmac sha256 2>/dev/null |
    awk '/^hmac/ {v = $NF; sub(/k$/, "", v); print v * 1000 / 256}')

echo
echo "sluice.jwt.verify (keys parsed once, claims checked) vs openssl speed, $(nproc) CPUs, one thread"
printf '%-8s %18s %22s %8s\n' alg 'sluice verify/s' 'openssl speed verify/s' ratio
for alg in HS256 RS256 ES256; do
    case $alg in HS256) o=$hm ;; RS256) o=$rsa ;; ES256) o=$ec ;; esac
    printf '%-8s %18s %22.0f %8.2f\n' "$alg" "${SLUICE_RATE[$alg]:-?}" "${o:-0}" \
        "$(awk -v a="${SLUICE_RATE[$alg]:-0}" -v b="${o:-1}" 'BEGIN {print a / b}')"
done
