-- Test app for test_fanout_order.py: fanout_app.lua with relaxed
-- durability, where each worker commits its own publishes at the end of
-- its loop pass instead of handing them to the writer thread.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/fanout_app.lua")

sluice.config { storage = { durability = "relaxed" } }
