-- Test app with small limits so the limit tests stay fast.
local sluice = require "sluice"

sluice.config{
  limits = {
    max_header_size = 2048,
    max_uri_size = 512,
    max_body_size = 4096,
    header_timeout = 1,
    idle_timeout = 1,
    instruction_budget = 1000000,
  },
}

sluice.route("GET", "/ping", function(req) return 200, "pong" end)
sluice.route("GET", "/metrics", function(req) return 200, sluice.metrics() end)
sluice.route("POST", "/len", function(req) return 200, tostring(#(req.body or "")) end)
sluice.route("GET", "/runaway", function(req) while true do end end)
sluice.route("GET", "/loop/:n", function(req)
  local x = 0
  for i = 1, tonumber(req.params.n) do x = x + i end
  return 200, tostring(x)
end)
