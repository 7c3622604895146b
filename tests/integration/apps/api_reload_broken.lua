-- Reload test app that fails while loading (after declaring a route and a
-- timer): the running app must stay as it was, with its timers.
local sluice = require "sluice"

sluice.every(0.05, function()
  sluice.publish("gen", "BROKEN")
end)

sluice.route("GET", "/version", function() return 200, "BROKEN" end)

error("api_reload_broken.lua fails on purpose")
