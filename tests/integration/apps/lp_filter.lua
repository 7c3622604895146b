-- A long-poll whose filter raises on messages that start with "E", for
-- test_lifetimes.py: the error ends the poll during its replay.
local sluice = require "sluice"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.route("GET", "/s/:topic", function(req)
  return req:subscribe(req.params.topic, {
    filter = function(msg)
      if msg.data:sub(1, 1) == "E" then error("filter fails on " .. msg.data) end
      return msg
    end,
  })
end)
