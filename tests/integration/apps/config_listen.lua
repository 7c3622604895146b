-- Test app that chooses its own listeners; flags must override them.
local sluice = require "sluice"

sluice.config{ listen = { "127.0.0.1:0", "127.0.0.1:0" } }

sluice.route("GET", "/ping", function(req) return 200, "pong" end)
