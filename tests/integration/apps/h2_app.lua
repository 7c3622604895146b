-- The default app with a small output limit, so that an HTTP/2 stream
-- whose reader stalls passes it after a few messages (test_h2.py), and a
-- Lua route to check that routes run on streams too.
local sluice = require "sluice"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
sluice.config { limits = { max_output_buffer = 64 * 1024, header_timeout = 2 } }
sluice.route("GET", "/hello/:name", function(req)
    return 200, "hello " .. req.params.name .. " via " .. req.transport,
        { ["X-Test"] = "h2" }
end)
dofile(here .. "/../../../scripts/default.lua")
