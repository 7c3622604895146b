-- The default app's publish route (scripts/default.lua passes the
-- Idempotency-Key header), with a dedup window of one second so that a
-- test can outlive it, and a route that publishes twice with one key from
-- Lua: sluice.publish(topic, data, {idempotency_key = KEY}).
local sluice = require "sluice"

sluice.config { storage = { dedup_window = 1 } }

sluice.route("POST", "/topics/:topic", function(req)
  local key = req.headers["idempotency-key"]
  if key ~= nil and (#key < 1 or #key > 200) then
    return sluice.json(400, { error = "Idempotency-Key must be 1 to 200 bytes" })
  end
  local id, err = sluice.publish(req.params.topic, req.body, { idempotency_key = key })
  if not id then
    return sluice.json(503, { error = err })
  end
  return sluice.json(200, { id = id })
end)

sluice.route("POST", "/twice/:topic", function(req)
  local a = sluice.publish(req.params.topic, "one", { idempotency_key = "lua-key" })
  local b = sluice.publish(req.params.topic, "two", { idempotency_key = "lua-key" })
  local c, err = sluice.publish(req.params.topic, "three", { idempotency_key = "" })
  return sluice.json(200, { a = a, b = b, c = c or false, err = err })
end)

sluice.route("GET", "/topics/:topic", function(req)
  return req:subscribe(req.params.topic)
end)
