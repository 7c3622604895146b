-- bench/apps/auth_callout.lua: a subscribe handler with and without an
-- HTTP auth callout, for bench/auth_callout.sh.  With AUTH_URL set, each
-- subscription first asks that backend (sluice.http.request) and
-- subscribes on a 200; without it, the same handler subscribes at once.
-- The subscription is a short poll (?timeout=0): one request, one
-- subscription, answered at once.
local sluice = require "sluice"

local AUTH_URL = os.getenv("AUTH_URL")

sluice.config{ http = { max_in_flight = 4096 } }

sluice.route("GET", "/sub/:topic", function(req)
  local topic = req.params.topic
  if AUTH_URL then
    local res, err = sluice.http.request{ url = AUTH_URL .. "?topic=" .. topic, timeout = 5 }
    if not res then return sluice.json(503, { error = err }) end
    if res.status ~= 200 then return sluice.json(403, { error = "not allowed" }) end
  end
  return req:subscribe(topic)
end)
