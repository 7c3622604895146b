-- Test app for test_fanout_writes.py: the default app, with room in each
-- connection's output queue for every message the test publishes while its
-- subscribers do not read.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.config { limits = { max_output_buffer = 64 * 1024 * 1024 } }
