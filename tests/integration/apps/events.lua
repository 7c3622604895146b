-- Test app for event names (test_event_names.py): every path a name can
-- take (a handler's sluice.publish, a WebSocket client's message,
-- on_publish, a filter) with names that are not valid text.
local sluice = require "sluice"

-- POST /pub/TOPIC?event=NAME -> {"id": ...} or {"err": ...}
sluice.route("POST", "/pub/:topic", function(req)
  local opts = req.query.event and { event = req.query.event } or nil
  local id, err = sluice.publish(req.params.topic, req.body or "", opts)
  return sluice.json(id and 200 or 400, { id = id, err = err })
end)

sluice.route("GET", "/valid_event", function(req)
  return 200, tostring(sluice.valid_event(req.query.name))
end)

sluice.route("GET", "/metrics", function()
  return 200, sluice.metrics()
end)

-- on_publish sets the event from the message's data: "ev:<name>" (the name
-- percent-encoded).
local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
sluice.on_publish("op.*", function(msg)
  local name = msg.data:match("^ev:(.*)$")
  if name then msg.event = unescape(name) end
  return msg
end)

-- A filter that sets the event the same way, per subscriber.
local function filter(msg)
  local name = msg.data:match("^fev:(.*)$")
  if name then msg.event = unescape(name) end
  return msg
end

-- A WebSocket client's message "NAME|DATA" is published with that event.
local ws_opts = {
  on_message = function(conn, data)
    local name, body = data:match("^(.-)|(.*)$")
    local id, err = sluice.publish(conn.topic, body or data, { event = name })
    if err then conn:send("refused: " .. err) end
  end,
}

sluice.route("GET", "/sub/:topic", function(req)
  local opts = {}
  if req.query.filter then opts.filter = filter end
  if req.transport == "websocket" then opts.on_message = ws_opts.on_message end
  return req:subscribe(req.params.topic, opts)
end)
