-- Test app for test_crash.py: storage_app.lua with relaxed durability (no
-- fsync per commit).  A killed process must still lose nothing that was
-- acknowledged: the kernel holds the written pages (docs/storage.md).
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/storage_app.lua")

sluice.config { storage = { durability = "relaxed" } }
