-- scripts/default.lua: the built-in app, run when sluice starts without a
-- script.  An open pub/sub service for prototyping on a trusted network,
-- written on the public Lua API like any user app (see docs/lua-api.md):
--
--   POST /topics/{topic}[?event=NAME]   publish the body     -> {"id": "..."}
--        (with Idempotency-Key: a retry answers the first publish's ID;
--        with Content-Type: application/json, JSON readers get it embedded)
--   GET  /topics/{topic}                subscribe: WebSocket, SSE, long-poll
--   GET  /healthz, GET /metrics
--
-- CORS (docs/protocol.md, "CORS"): a page from any origin may subscribe
-- (EventSource, long-poll, WebSocket); a page may publish only from an
-- origin listed in the environment variable SLUICE_PUBLISH_ORIGINS
-- (comma-separated, e.g. "https://app.example.com,http://localhost:3000");
-- none by default, so a browser on another origin cannot publish.  Clients
-- that send no Origin (curl, servers) are not concerned.
local sluice = require "sluice"

-- Topic names: 1 to 200 bytes of [A-Za-z0-9_.:-] (checked in C: a Lua
-- pattern here was about a tenth of a long-poll's instructions).
local valid_topic = sluice.valid_topic
local valid_event = sluice.valid_event

local publish_origins = {}
for origin in (os.getenv("SLUICE_PUBLISH_ORIGINS") or ""):gmatch("[^,%s]+") do
  publish_origins[#publish_origins + 1] = origin
end
local subscribe_route = { cors = { origins = "*", max_age = 600 } }
local publish_route = {
  cors = { origins = publish_origins, headers = { "Content-Type", "Idempotency-Key" }, max_age = 600 },
}

sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)

sluice.route("GET", "/metrics", function()
  return 200, sluice.metrics(), { ["content-type"] = "text/plain; version=0.0.4" }
end)

-- Rate limit: each client address may publish SLUICE_PUBLISH_RATE messages
-- a second (default 1000) in bursts of SLUICE_PUBLISH_BURST (default twice
-- the rate), over HTTP: past it, 429 with Retry-After (whole seconds,
-- rounded up); the buckets are shared by the workers (sluice.limit), and
-- refusals show in /metrics (sluice_rate_limit_total).  A rate of 0 turns
-- it off.
local publish_rate = tonumber(os.getenv("SLUICE_PUBLISH_RATE") or "") or 1000
local publish_burst = tonumber(os.getenv("SLUICE_PUBLISH_BURST") or "") or 2 * publish_rate
if publish_rate > 0 and publish_burst < 1 then publish_burst = 1 end

-- "127.0.0.1:54321" -> "127.0.0.1", "[::1]:54321" -> "[::1]"
local function client_address(req)
  return (req.remote_addr:match("^(.*):%d+$")) or req.remote_addr
end

-- In cluster mode a message may fit the body limit but not the NATS
-- servers' max_payload (docs/cluster.md): no retry would store it, so it
-- is refused as too large (413, WebSocket 1009), not as an outage.
local function too_large(err)
  return err:find("^message too large") ~= nil
end

sluice.route("POST", "/topics/:topic", function(req)
  local topic = req.params.topic
  if not valid_topic(topic) then
    return sluice.json(400, { error = "bad topic name" })
  end
  if publish_rate > 0 then
    local ok, retry_after = sluice.limit("publish " .. client_address(req), publish_rate, publish_burst)
    if not ok then
      return 429, '{"error":"too many publishes"}',
        { ["content-type"] = "application/json", ["retry-after"] = tostring(math.ceil(retry_after)) }
    end
  end
  local event = req.query.event
  if event ~= nil and not valid_event(event) then
    -- 1 to 128 bytes of UTF-8 without control characters, not *.base64
    return sluice.json(400, { error = "bad event name" })
  end
  -- A retry with the same key within the dedup window gets the first
  -- publish's ID and stores nothing (SPEC.md, "Publishing exactly once").
  local key = req:header("idempotency-key") -- one header, no req.headers table
  if key ~= nil and (#key < 1 or #key > 200) then
    return sluice.json(400, { error = "Idempotency-Key must be 1 to 200 bytes" })
  end
  -- Returns once the message is in LMDB and synced (group commit).  A body
  -- sent as application/json that parses is embedded as JSON by
  -- ?format=json ("encoding":"json") on WebSocket and long-poll; one that does not
  -- parse is stored as plain data.
  local id, err = sluice.publish(topic, req.body, {
    event = event,
    idempotency_key = key,
    content_type = req:header("content-type"),
  })
  if not id then
    return sluice.json(too_large(err) and 413 or 503, { error = err })
  end
  return sluice.json(200, { id = id })
end, publish_route)

-- What a WebSocket client sends is published to its topic.  One function
-- for every connection (conn.topic names the topic): a closure per
-- connection would cost each idle WebSocket about 150 bytes more.
-- The server paces such a client by its commits (it stops reading it while
-- its publishes wait for storage); a publish that storage refuses at once
-- (its queue is full) closes the connection with 1013, so the client knows
-- and retries, instead of losing the message silently.
local ws_opts = {
  on_message = function(conn, data)
    local ok, err = sluice.publish(conn.topic, data)
    if not ok then
      conn:close(too_large(err) and 1009 or 1013, "publish refused: " .. err)
    end
  end,
}

sluice.route("GET", "/topics/:topic", function(req)
  local topic = req.params.topic
  if not valid_topic(topic) then
    return sluice.json(400, { error = "bad topic name" })
  end
  if req.transport ~= "websocket" then
    return req:subscribe(topic) -- only a WebSocket sends: no hooks for the others
  end
  return req:subscribe(topic, ws_opts)
end, subscribe_route)
