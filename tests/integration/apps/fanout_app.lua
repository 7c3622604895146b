-- Test app for test_fanout_order.py: the default app's routes, and a route
-- that publishes from Lua, so a burst of handler publishes (each resumed
-- when its commit is done) runs next to a burst of plain ones.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

-- POST /lua/:topic: publish the body; the answer is {"id": ...}.
sluice.route("POST", "/lua/:topic", function(req)
  return sluice.json(200, { id = sluice.publish(req.params.topic, req.body) })
end)
