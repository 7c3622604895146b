-- bench/apps/hello.lua: the smallest Lua route, for bench/http.sh to measure
-- the cost of a request that runs a script handler (routing, params, a Lua
-- call) beside the C-only /healthz.
local sluice = require "sluice"

sluice.route("GET", "/hello/:name", function(req)
    return 200, "hello " .. req.params.name
end)
