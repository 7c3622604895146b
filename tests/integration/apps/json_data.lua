-- json_data.lua: for test_json_data.py.  A stream over two topics (SSE
-- sends its messages in the JSON envelope that names the topic), and
-- publishes from Lua with sluice.publish's content_type option.
local sluice = require "sluice"

sluice.route("GET", "/multi", function(req)
  return req:subscribe({ "ja", "jb" })
end)

sluice.route("GET", "/sub/:topic", function(req)
  return req:subscribe(req.params.topic)
end)

-- POST /lua/TOPIC?ct=TYPE: publishes the body with content_type = TYPE.
sluice.route("POST", "/lua/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body, { content_type = req.query.ct })
  if not id then
    return sluice.json(503, { error = err })
  end
  return sluice.json(200, { id = id })
end)

-- on_publish changes the data: the JSON check runs on what it returns.
sluice.on_publish("op.wrap", function(msg)
  msg.data = '{"wrapped":' .. msg.data .. "}"
  return msg
end)
sluice.on_publish("op.break", function(msg)
  msg.data = msg.data .. "!"
  return msg
end)

-- A WebSocket client's message published as JSON.
sluice.route("GET", "/wsjson/:topic", function(req)
  return req:subscribe(req.params.topic, {
    on_message = function(conn, data)
      sluice.publish(conn.topic, data, { content_type = "application/json" })
    end,
  })
end)
