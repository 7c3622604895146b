-- Test app for the integration suite: one route per behaviour the tests
-- check (params, splat, query, headers, bodies, JSON, errors, runaway
-- handlers, big responses).  Default limits (no sluice.config limits).
local sluice = require "sluice"

sluice.route("GET", "/ping", function(req)
  return 200, "pong"
end)

sluice.route("GET", "/hello/:name", function(req)
  return 200, "hello " .. req.params.name
end)

sluice.route("GET", "/rooms/:room/users/:user", function(req)
  return sluice.json(200, { room = req.params.room, user = req.params.user })
end)

sluice.route("GET", "/files/*", function(req)
  return 200, req.params["*"] or "<nil>"
end)

sluice.route("POST", "/echo", function(req)
  return 200, req.body, { ["Content-Type"] = "application/octet-stream" }
end)

sluice.route("PUT", "/echo", function(req)
  return 200, req.body, { ["Content-Type"] = "application/octet-stream" }
end)

sluice.route("POST", "/len", function(req)
  return 200, tostring(#(req.body or ""))
end)

local function inspect(req)
  return sluice.json(200, {
    method = req.method,
    path = req.path,
    query = req.query,
    headers = req.headers,
    params = req.params,
    body = req.body or "",
    remote_addr = req.remote_addr,
    transport = req.transport,
  })
end
sluice.route("GET", "/inspect", inspect)
sluice.route("POST", "/inspect", inspect)
sluice.route("DELETE", "/inspect/:id", inspect)

sluice.route("GET", "/json", function(req)
  return sluice.json(201, { a = 1, s = "x\"y", list = { 1, 2, 3 }, nested = { ok = true } })
end)

sluice.route("GET", "/encode", function(req)
  return 200, sluice.json.encode({ x = 1 }), { ["Content-Type"] = "application/json" }
end)

sluice.route("POST", "/decode", function(req)
  local v = sluice.json.decode(req.body)
  return sluice.json(200, { got = v.name, n = v.n })
end)

sluice.route("GET", "/custom", function(req)
  return 202, "custom", { ["X-Custom"] = "yes", ["Content-Type"] = "text/plain; charset=utf-8" }
end)

sluice.route("GET", "/status/:code", function(req)
  return tonumber(req.params.code), "status " .. req.params.code
end)

sluice.route("GET", "/inject", function(req)
  return 200, "inject", { ["X-Bad"] = "a\r\nX-Injected: 1" }
end)

sluice.route("POST", "/only-post", function(req)
  return 200, "posted"
end)

sluice.route("GET", "/error", function(req)
  local t = nil
  error("boom in handler")
end)

sluice.route("GET", "/error-table", function(req)
  error({ code = 1 })
end)

sluice.route("GET", "/nil-index", function(req)
  local t = nil
  return 200, t.field
end)

sluice.route("GET", "/bad-return", function(req)
  return "not a status", {}
end)

sluice.route("GET", "/runaway", function(req)
  while true do end
end)

sluice.route("GET", "/loop/:n", function(req)
  local x = 0
  for i = 1, tonumber(req.params.n) do x = x + i end
  return 200, tostring(x)
end)

sluice.route("GET", "/log", function(req)
  sluice.log("warn", "marker-from-lua " .. (req.query.tag or "none"))
  return 200, "logged"
end)

-- A big response (32 MiB) so that a client reading slowly keeps an answer
-- in flight for as long as it likes.
-- (Built as two halves: string.rep would hold its 32 MiB buffer and the
-- 32 MiB string at once, past the state's 64 MiB memory limit.)
local half = string.rep("0123456789abcdef", 1024 * 1024)
local big = half .. half
half = nil
sluice.route("GET", "/big", function(req)
  return 200, big, { ["Content-Type"] = "application/octet-stream" }
end)
