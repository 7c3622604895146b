-- The default app with a storage queue of 100 publishes, so that a client
-- that publishes faster than commits fills it even on a fast disk
-- (test_ws_backpressure.py).
local sluice = require "sluice"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
sluice.config { limits = { max_publish_queue = 100 } }
dofile(here .. "/../../../scripts/default.lua")
