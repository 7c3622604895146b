-- bench/apps/relaxed.lua: the default app with relaxed durability (log
-- writes reach the page cache, fsync once a second; see docs/storage.md).
-- The comparison runs it beside the default, durable sluice to show what
-- the per-publish fsync costs next to servers that keep no backlog on disk.
local sluice = require "sluice"

sluice.config{ storage = { durability = "relaxed" } }

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../scripts/default.lua")
