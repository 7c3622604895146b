-- shared_app.lua: sluice.presence, sluice.subscribers, sluice.limit and
-- opts.on_open, for test_presence.py (run with --workers 2).
--
--   GET  /room/:t?id=ID&name=N&events=1   subscribe to t (any transport),
--        a member ID with info {name=N} when id is given; events=1 asks
--        for sluice.join / sluice.leave; on_open sends "open <worker>" on
--        a WebSocket
--   GET  /multi?t=a,b                     subscribe to several topics or patterns
--   GET  /who/:t                          {"members":[...], "count":n, "worker":w}
--   GET  /count?name=N                    sluice.subscribers(N)
--   GET  /limit?key=K&rate=R&burst=B      {"ok":bool, "retry_after":s}
--   GET  /bad/:what                       misuse of subscribe options (500)
--   POST /pub/:t                          publish the body (?event=)
--   GET  /limit_many?n=N                  N calls of sluice.limit, each its own key
--   GET  /wrong                           a handler returning a wrong value
--   GET  /wsrate/:t                       WebSocket whose messages are limited per
--                                         connection (1/s, bursts of 2): "ok" back, or 1008
local sluice = require "sluice"

local function list(q)
  local out = {}
  for s in (q or ""):gmatch("[^,]+") do out[#out + 1] = s end
  return out
end

sluice.route("GET", "/room/:t", function(req)
  local opts = { format = "json" }
  if req.query.id then
    opts.presence = { id = req.query.id, info = { name = req.query.name or req.query.id } }
  end
  if req.query.events then opts.presence_events = true end
  opts.on_open = function(conn)
    if conn.transport == "websocket" then conn:send("open " .. sluice.worker.id) end
  end
  return req:subscribe(req.params.t, opts)
end)

sluice.route("GET", "/multi", function(req)
  return req:subscribe(list(req.query.t))
end)

sluice.route("GET", "/who/:t", function(req)
  local members = sluice.presence(req.params.t)
  table.sort(members, function(a, b) return a.id < b.id end)
  return sluice.json(200, { members = #members > 0 and members or sluice.json.decode("[]"),
                            count = sluice.subscribers(req.params.t), worker = sluice.worker.id })
end)

sluice.route("GET", "/count", function(req)
  return sluice.json(200, { count = sluice.subscribers(req.query.name) })
end)

sluice.route("GET", "/limit", function(req)
  local ok, retry = sluice.limit(req.query.key, tonumber(req.query.rate), tonumber(req.query.burst))
  return sluice.json(200, { ok = ok, retry_after = retry or 0 })
end)

sluice.route("GET", "/bad/:what", function(req)
  local w = req.params.what
  if w == "unknown" then return req:subscribe("x", { last_event_idd = "1" }) end
  if w == "type" then return req:subscribe("x", { skip_self = "yes" }) end
  if w == "presence" then return req:subscribe("x", { presence = { name = "a" } }) end
  if w == "info" then return req:subscribe("x", { presence = { id = "a", info = { s = string.rep("x", 2000) } } }) end
  if w == "format" then return req:subscribe("x", { format = "xml" }) end
  return req:subscribe("x", { filter = function(m) return 42 end })
end)

-- The app's own /metrics: served instead of the built-in one (/healthz,
-- not routed here, is the built-in).
sluice.route("GET", "/metrics", function()
  return 200, "custom metrics"
end)

sluice.route("GET", "/builtin_metrics", function()
  return 200, sluice.metrics()
end)

sluice.route("GET", "/limit_many", function(req)
  for i = 1, tonumber(req.query.n) do sluice.limit("many " .. i, 1, 1) end
  return 200, "done"
end)

-- A handler that returns a wrong value (logged with route and file:line).
sluice.route("GET", "/wrong", function(req)
  return "two hundred"
end)

sluice.route("POST", "/pub/:t", function(req)
  local id, err = sluice.publish(req.params.t, req.body, { event = req.query.event })
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)

-- Per-connection limit on what a WebSocket client sends (docs/lua-api.md,
-- "Rate limits"): one on_message for every connection, the key from conn.
local rate_opts = {
  on_message = function(conn, data)
    if not sluice.limit("ws " .. tostring(conn), 1, 2) then
      return conn:close(1008, "too many messages")
    end
    conn:send("ok")
  end,
}
sluice.route("GET", "/wsrate/:t", function(req)
  return req:subscribe(req.params.t, rate_opts)
end)
