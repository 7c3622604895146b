-- Test app for the storage tests (test_storage.py, test_crash.py): the
-- default app's routes (loaded from scripts/default.lua), retention rules
-- that the tests can see take effect within seconds, and a route that
-- subscribes one connection to two topics, so that a multi-topic resume
-- goes through req:subscribe({a, b}) like a user app's would.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.topic("short.*", { backlog = 5 })
sluice.topic("aged.*", { max_age = 1 })
-- Crash rounds must never lose an acknowledged message to retention.
sluice.topic("crash.*", { backlog = 1000000 })

-- GET /multi/A/B: one subscription to topics A and B, any transport.
sluice.route("GET", "/multi/:a/:b", function(req)
  return req:subscribe({ req.params.a, req.params.b })
end)
