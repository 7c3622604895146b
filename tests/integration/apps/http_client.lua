-- Test app for test_lua_http.py: sluice.http.request and sluice.http.send
-- driven by the query, against the test's own backend servers.
local sluice = require "sluice"

-- Two requests in flight per worker: the third answers "busy".
sluice.config{ workers = 1, http = { max_in_flight = 2, max_webhooks = 1, webhook_queue = 2 } }

local VERSION = "v1"

-- At load nothing is sent: the top level runs on every worker and reload.
local top_ok, top_err = sluice.http.send{ url = "http://127.0.0.1:9/loaded" }
sluice.route("GET", "/top_send", function(req)
  return sluice.json(200, { ok = top_ok or false, err = top_err })
end)

-- The options of a call from the query: url, timeout, max_body, ca,
-- follow, method, body.
local function opts_of(q)
  local o = { url = q.url, method = q.method, body = q.body }
  if q.timeout then o.timeout = tonumber(q.timeout) end
  if q.max_body then o.max_body = math.tointeger(tonumber(q.max_body)) end
  if q.ca then o.ca = q.ca end
  if q.follow then o.follow_redirects = true end
  if q.header then o.headers = { ["X-Test"] = q.header } end
  return o
end

local function answer(res, err)
  if not res then return sluice.json(200, { ok = false, err = err, version = VERSION }) end
  return sluice.json(200, { ok = true, status = res.status, headers = res.headers,
                            body = res.body, len = #res.body, version = VERSION })
end

sluice.route("GET", "/call", function(req)
  return answer(sluice.http.request(opts_of(req.query)))
end)

-- The plain string form: a GET of that URL.
sluice.route("GET", "/get", function(req)
  return answer(sluice.http.request(req.query.url))
end)

-- Two calls in a row in one handler: the second reuses the connection.
sluice.route("GET", "/twice", function(req)
  local a = sluice.http.request(req.query.url)
  local b, err = sluice.http.request(req.query.url)
  return answer(b, err)
end)

-- A timer's task waits too; its answer lands in a global read back later.
local timer_result
sluice.route("GET", "/timer", function(req)
  timer_result = nil
  local o = opts_of(req.query)
  sluice.timer(0.001, function()
    local res, err = sluice.http.request(o)
    -- Stopping: a second try, after a publish that waits for its commit
    -- (resumed once the client is gone), is refused at once: no new
    -- client starts on a loop that no longer runs.
    if err == "shutting down" then
      sluice.publish("hc.stopping", "x")
      res, err = sluice.http.request(o)
      sluice.log("info", "timer retry while stopping:", err)
    end
    timer_result = res and { ok = true, status = res.status, body = res.body }
                       or { ok = false, err = err }
  end)
  return 200, "started"
end)
sluice.route("GET", "/timer_result", function(req)
  return sluice.json(200, timer_result or { pending = true })
end)

-- Misuse: where nothing can wait, the call raises.
sluice.route("GET", "/in_filter", function(req)
  return req:subscribe("hc.filter", { filter = function(msg)
    sluice.http.request(req.query.url)
    return msg
  end })
end)
sluice.route("GET", "/in_coroutine", function(req)
  local ok, err = coroutine.resume(coroutine.create(function()
    return sluice.http.request(req.query.url)
  end))
  return sluice.json(200, { ok = ok, err = tostring(err) })
end)
sluice.route("GET", "/bad_option", function(req)
  local ok, err = pcall(sluice.http.request, { url = req.query.url, tiemout = 1 })
  return sluice.json(200, { ok = ok, err = tostring(err) })
end)
sluice.route("GET", "/bad_header", function(req)
  return answer(sluice.http.request{ url = req.query.url, headers = { ["X-A"] = "a\r\nX-B: b" } })
end)

-- Webhooks: fire and forget, from a handler and from on_close.
sluice.route("POST", "/send", function(req)
  local ok, err = sluice.http.send{ url = req.query.url, body = req.body,
                                    headers = { ["Content-Type"] = "application/json" } }
  return sluice.json(200, { ok = ok or false, err = err })
end)
-- A join webhook queued before the answer: the answer does not wait for it.
sluice.route("GET", "/join", function(req)
  sluice.http.send{ url = req.query.url, body = '{"event":"join"}' }
  return req:subscribe("hc.join")
end)
sluice.route("GET", "/hooked", function(req)
  local url = req.query.url
  return req:subscribe("hc.hooked", { on_close = function(conn)
    sluice.http.send{ url = url, body = '{"event":"leave"}' }
  end })
end)

-- Callbacks that wait (issue 29, item 1).  on_message asks the backend
-- for each client message (the path is the message: "slow", "ok",
-- "boom"), answers the client with what came back and publishes it; the
-- client's next message waits for it.  What the callbacks saw after a wait
-- lands in `seen`, read back through /seen.
local seen = {}
sluice.route("GET", "/seen", function(req)
  return sluice.json(200, seen)
end)
sluice.route("GET", "/ask", function(req)
  local base = req.query.url
  return req:subscribe("hc.ask", {
    on_message = function(conn, data)
      local q = data == "slow" and "/slow?s=30" or "/ok?m=" .. data
      local res, err = sluice.http.request{ url = base .. q, timeout = 30 }
      local answer = data .. ":" .. (res and res.body or err)
      seen[#seen + 1] = { msg = data, closed = conn.closed, topic = conn.topic or "nil" }
      if data == "boom" then error("boom after the wait") end
      local ok, send_err = conn:send(answer)
      seen[#seen].send = ok and "sent" or send_err
      sluice.publish("hc.answers", answer)
    end,
    on_close = function(conn)
      seen[#seen + 1] = { on_close = true }
    end,
  })
end)
-- on_close waits, detached: the connection is gone when it resumes.
sluice.route("GET", "/close_asks", function(req)
  local url = req.query.url
  return req:subscribe("hc.close", { on_close = function(conn)
    local res, err = sluice.http.request{ url = url, timeout = 30 }
    local ok, send_err = conn:send("late")
    seen[#seen + 1] = { on_close = true, status = res and res.status or err,
                        closed = conn.closed, transport = conn.transport,
                        topic = conn.topic or "nil", send = ok and "sent" or send_err }
  end })
end)
-- on_open waits: a welcome before any delivery, then the backend's
-- answer once it comes (the client may have gone by then).
sluice.route("GET", "/open_asks", function(req)
  local url = req.query.url
  return req:subscribe("hc.open", { on_open = function(conn)
    conn:send("welcome")
    local res, err = sluice.http.request{ url = url, timeout = 30 }
    local ok, send_err = conn:send("backend:" .. (res and res.body or err))
    seen[#seen + 1] = { on_open = true, status = res and res.status or err,
                        closed = conn.closed, send = ok and "sent" or send_err }
    if req.query.fail then error("on_open failed after the wait") end
  end })
end)
sluice.route("GET", "/answers", function(req)
  return req:subscribe("hc.answers")
end)

sluice.route("POST", "/pub/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  return sluice.json(id and 200 or 503, { id = id, err = err })
end)
sluice.route("GET", "/metrics_text", function(req)
  return 200, sluice.metrics()
end)
sluice.route("GET", "/version", function(req) return 200, VERSION end)
