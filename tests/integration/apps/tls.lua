-- Test app for TLS: a short handshake timeout so a silent client is
-- dropped quickly.
local sluice = require "sluice"

sluice.config{ limits = { tls_handshake_timeout = 1 } }

sluice.route("GET", "/ping", function(req) return 200, "pong" end)
sluice.route("GET", "/transport", function(req)
  return 200, tostring(req.transport)
end)
