-- Test app for the slow-consumer tests (WebSocket and SSE): the default
-- app's routes with a small per-connection output limit, and a short
-- retention so the backlog itself stays small in memory.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.config{ limits = { max_output_buffer = 256 * 1024 } }
sluice.topic("*", { backlog = 16 })
