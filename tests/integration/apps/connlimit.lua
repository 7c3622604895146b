-- Test app allowing only three connections at a time.
local sluice = require "sluice"

sluice.config{ limits = { max_connections = 3 } }

sluice.route("GET", "/ping", function(req) return 200, "pong" end)
