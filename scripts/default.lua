-- scripts/default.lua: the built-in app, run when sluice starts without a
-- script.  An open pub/sub service for prototyping on a trusted network,
-- written on the public Lua API like any user app (see docs/lua-api.md).
local sluice = require "sluice"

sluice.route("GET", "/healthz", function(req)
  return 200, "ok"
end)
