-- bench/apps/filter.lua: the same subscription three ways, to measure what
-- a per-subscriber Lua filter costs per delivery against the declarative
-- path (evaluated in C) and no filter at all.
local sluice = require "sluice"

sluice.config{ storage = { durability = "relaxed" } }

sluice.route("GET", "/healthz", function() return 200, "ok" end)

sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)

-- No filter.
sluice.route("GET", "/plain/:topic", function(req)
  return req:subscribe(req.params.topic)
end)

-- A Lua filter that passes every message unchanged (the shared encoding is
-- reused): the cost measured is entering Lua once per delivery.
sluice.route("GET", "/lua/:topic", function(req)
  return req:subscribe(req.params.topic, {
    filter = function(msg) return msg end,
  })
end)

-- The declarative equivalent, evaluated in C.
sluice.route("GET", "/declarative/:topic", function(req)
  return req:subscribe(req.params.topic, { skip_self = true })
end)
