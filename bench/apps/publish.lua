-- bench/apps/publish.lua: the default app's publish route, plus what the
-- publish benchmark needs: durability from BENCH_DURABILITY, a deep backlog
-- for the replay topic, and a route that fills a topic with N messages.
local sluice = require "sluice"

sluice.config{ storage = { durability = os.getenv("BENCH_DURABILITY") or "durable" } }
sluice.topic("replay", { backlog = 200000 })

sluice.route("GET", "/healthz", function() return 200, "ok" end)

sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)

sluice.route("GET", "/topics/:topic", function(req)
  return req:subscribe(req.params.topic)
end)

-- POST /fill/:topic?n=N publishes N 64-byte messages, each acknowledged
-- before the next; answers the first and last IDs.
sluice.route("POST", "/fill/:topic", function(req)
  local n = tonumber(req.query.n) or 1000
  local data = string.rep("x", 64)
  local first, last
  for i = 1, n do
    last = assert(sluice.publish(req.params.topic, data))
    first = first or last
  end
  return sluice.json(200, { first = first, last = last })
end)
