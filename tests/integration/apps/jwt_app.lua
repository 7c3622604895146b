-- Test app for test_jwt.py: sluice.jwt.verify and sluice.jws.verify driven
-- by a JSON body {token =, keys =, opts =, jws =}.
local sluice = require "sluice"

sluice.config{ workers = 1 }

sluice.route("POST", "/verify", function(req)
  local a = sluice.json.decode(req.body)
  local fn = a.jws and sluice.jws.verify or sluice.jwt.verify
  local v, why = fn(a.token, a.keys, a.opts)
  if v == nil then return sluice.json(200, { ok = false, reason = why }) end
  return sluice.json(200, { ok = true, claims = v })
end)

-- A key set parsed once, from a PEM file given at the first call.
local parsed
sluice.route("POST", "/verify_parsed", function(req)
  local a = sluice.json.decode(req.body)
  if not parsed then parsed = assert(sluice.jwt.keys(a.keys)) end
  local v, why = sluice.jwt.verify(a.token, parsed)
  return sluice.json(200, { ok = v ~= nil, reason = why, n = #parsed })
end)

-- In a filter nothing can wait: a JWKS URL not fetched yet fails there.
sluice.route("GET", "/in_filter", function(req)
  local url, token = req.query.url, req.query.token
  return req:subscribe("jwt.filter", { filter = function(msg)
    local claims, why = sluice.jwt.verify(token, url)
    msg.data = claims and "ok" or why
    return msg
  end })
end)
sluice.route("POST", "/pub/:topic", function(req)
  return sluice.json(200, { id = sluice.publish(req.params.topic, req.body) })
end)
