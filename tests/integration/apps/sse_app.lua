-- Test app for the SSE tests: the default app's routes (loaded from
-- scripts/default.lua), a route that subscribes one connection to several
-- topics (GET /multi?topics=a,b), and a short retention for "small.*".
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.topic("small.*", { backlog = 3 })

sluice.route("GET", "/multi", function(req)
  local topics = {}
  for t in (req.query.topics or ""):gmatch("[^,]+") do
    topics[#topics + 1] = t
  end
  return req:subscribe(topics)
end)
