-- The default app with an 8 MiB output limit: an HTTP/2 connection whose
-- reader pauses holds megabytes in its streams' queues without being cut
-- (test_h2.py, test_socket_backlog_resumes_whole).
local sluice = require "sluice"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
sluice.config { limits = { max_output_buffer = 8 * 1024 * 1024 } }
dofile(here .. "/../../../scripts/default.lua")
