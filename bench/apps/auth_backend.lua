-- bench/apps/auth_backend.lua: the backend of bench/auth_callout.sh, a
-- second sluice that allows every subscription (a C-fast stand-in for an
-- app's authorizer, so that the figures show the callout's cost, not a
-- slow backend's).
local sluice = require "sluice"

sluice.route("GET", "/authorize", function(req)
  return 200, "ok"
end)
