#!/bin/bash
# examples/cluster/run.sh: three NATS servers with JetStream, two sluice
# nodes sharing their topics through them, and nginx round-robin in front,
# all on loopback.  Ctrl-C stops everything.  See README.md.
#
#   examples/cluster/run.sh [SLUICE_BINARY]
#
# Ports: nginx 8080; sluice 8081, 8082; NATS clients 4222-4224, routes
# 6222-6224, monitoring 8222-8224.  State goes to a temp directory that is
# removed at the end.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin" # nats-server and nginx, for a user's PATH too
here=$(cd "$(dirname "$0")" && pwd)
sluice=${1:-$here/../../build/sluice}
command -v nats-server >/dev/null || { echo "nats-server not found (apt-get install nats-server)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx not found (apt-get install nginx-light)"; exit 1; }
[ -x "$sluice" ] || { echo "sluice binary not found: $sluice (build it, or pass its path)"; exit 1; }

dir=$(mktemp -d /tmp/sluice-cluster-XXXXXX)
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT INT TERM

routes="nats-route://127.0.0.1:6222,nats-route://127.0.0.1:6223,nats-route://127.0.0.1:6224"
for i in 0 1 2; do
    cat > "$dir/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4222 + i))
http: 127.0.0.1:$((8222 + i))
jetstream { store_dir: "$dir/store$i" }
# Room for sluice's largest message (1 MiB by default) and its headers.
max_payload: 2MB
cluster { name: sluice-example, listen: 127.0.0.1:$((6222 + i)), routes: [$routes] }
CONF
    nats-server -c "$dir/n$i.conf" > "$dir/n$i.log" 2>&1 &
    pids+=($!)
    # One after another: started at once, nats-server 2.10 can form a
    # JetStream meta group that leaves a server out (docs/cluster.md).
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$((8222 + i))/varz" && break
        sleep 0.05
    done
done
echo "waiting for the NATS cluster to elect its JetStream leader..."
for _ in $(seq 100); do
    if curl -sf http://127.0.0.1:8222/jsz | grep -q '"leader"'; then break; fi
    sleep 0.1
done

servers=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
cat > "$dir/app.lua" <<'LUA'
local sluice = require "sluice"
-- Three replicas: an acknowledged publish is on two of the three servers.
sluice.config{cluster = {replicas = 3, stream = "EXAMPLE"}}
sluice.topic("*", {backlog = 1000})
sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, {error = err}) end
  return sluice.json(200, {id = id})
end)
sluice.route("GET", "/topics/:topic", function(req)
  return req:subscribe(req.params.topic)
end)
sluice.route("GET", "/metrics", function()
  return 200, sluice.metrics(), {["content-type"] = "text/plain; version=0.0.4"}
end)
LUA
for i in 1 2; do
    "$sluice" --cluster "$servers" -l 127.0.0.1:$((8080 + i)) -d "$dir/sluice$i" -w 1 \
        "$dir/app.lua" > "$dir/sluice$i.log" 2>&1 &
    pids+=($!)
done

cat > "$dir/nginx.conf" <<CONF
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    upstream sluice { server 127.0.0.1:8081; server 127.0.0.1:8082; }  # round-robin
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    server {
        listen 127.0.0.1:8080;
        location / {
            proxy_pass http://sluice;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_buffering off;          # SSE and long-polls pass through at once
            proxy_read_timeout 1h;
        }
    }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" &
pids+=($!)
# A node listens once its stream is placed and read: a NATS cluster just
# formed may take some seconds to place one (docs/cluster.md).
echo "waiting for the sluice nodes..."
for port in 8081 8082 8080; do
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    if ! curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "nothing listens on $port after 30 s; see the logs in $dir" >&2
        exit 1
    fi
done
echo "ready: nginx on http://127.0.0.1:8080 (round-robin over sluice 8081 and 8082)"
echo "logs and state in $dir; Ctrl-C stops everything"
wait
