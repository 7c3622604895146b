-- Reload test app, generation A (test_lua_api.py copies it over the
-- running script and sends SIGHUP).  Same routes as api_reload_b.lua; the
-- differences are what the tests look for: /version answers "A", the timer
-- publishes "A" to topic "gen", and subscribers get callbacks from this
-- generation: the filter passes every message unchanged except on topic
-- "tagged", where it prefixes "A:"; on_message answers "A:" .. data.
local sluice = require "sluice"

local GEN = "A"

sluice.every(0.05, function()
  sluice.publish("gen", GEN)
end)

sluice.on_publish("loop", function(msg) return msg end)

sluice.route("GET", "/version", function() return 200, GEN end)

sluice.route("POST", "/pub/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)

sluice.route("GET", "/sub/:topic", function(req)
  return req:subscribe(req.params.topic, {
    filter = function(msg)
      if msg.topic == "tagged" then msg.data = GEN .. ":" .. msg.data end
      return msg
    end,
    on_message = function(conn, data)
      conn:send(GEN .. ":" .. data)
    end,
  })
end)
