-- Test app for test_lua_api.py: one route (or topic) per function of the
-- public Lua API (docs/lua-api.md), so the tests can drive each one with
-- normal and bad arguments and watch what the server does.  Routes under
-- /try/ run a bad call under pcall and answer the error text; the others
-- let errors escape so the tests see the 500 and the logged message.
local sluice = require "sluice"

-- A small budget keeps runaway callbacks short (1M VM instructions).
sluice.config{ limits = { instruction_budget = 1000000 } }

sluice.topic("keep3", { backlog = 3 })
sluice.topic("aged.*", { max_age = 1 })

local function spin()
  local n = 0
  while true do n = n + 1 end
end

local function unhex(s)
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

-- ---- on_publish ------------------------------------------------------------

sluice.on_publish("xf.*", function(msg)
  msg.data = "xf:" .. msg.data
  return msg
end)
sluice.on_publish("xf.long.*", function(msg)
  msg.data = "long:" .. msg.data
  return msg
end)
sluice.on_publish("xf.long.exact", function(msg)
  msg.data = "exact:" .. msg.data
  return msg
end)
sluice.on_publish("xf.id", function(msg)
  msg.data = "id=" .. tostring(msg.id) .. " topic=" .. msg.topic .. " event=" .. tostring(msg.event)
  return msg
end)
sluice.on_publish("drop.*", function(msg)
  if msg.data == "keep" then return msg end
  return nil
end)
sluice.on_publish("move.*", function(msg)
  msg.topic = "moved." .. msg.topic:sub(6)
  return msg
end)
sluice.on_publish("evchange", function(msg)
  msg.event = "changed"
  return msg
end)
sluice.on_publish("opboom", function(msg)
  error("boom in on_publish")
end)
sluice.on_publish("opspin", function(msg)
  spin()
end)
sluice.on_publish("opbadret", function(msg)
  return 42
end)

-- ---- plain routes ------------------------------------------------------------

sluice.route("GET", "/ping", function() return 200, "pong" end)

sluice.route("GET", "/metrics", function()
  return 200, sluice.metrics(), { ["content-type"] = "text/plain; version=0.0.4" }
end)

sluice.route("GET", "/version", function() return 200, sluice.version end)

local function inspect(req)
  return sluice.json(200, {
    method = req.method, path = req.path, query = req.query,
    headers = req.headers, params = req.params, body = req.body,
    remote_addr = req.remote_addr, transport = req.transport,
  })
end
sluice.route("*", "/inspect/:a/:b", inspect)

-- req.query, req.headers and req.remote_addr are built on first read, from a
-- copy of the request: read after the handler yielded in sluice.publish,
-- and by a later request (kept_req), they are still this request's.
local kept_req
sluice.route("GET", "/lazy/after-yield", function(req)
  sluice.publish("lazy.yield", "x")
  kept_req = req
  return sluice.json(200, { query = req.query, headers = req.headers,
                            remote_addr = req.remote_addr })
end)
sluice.route("GET", "/lazy/kept", function(req)
  return sluice.json(200, { query = kept_req.query, headers = kept_req.headers,
                            remote_addr = kept_req.remote_addr, path = kept_req.path })
end)
-- pairs(req) lists every field once, built or not; sluice.json(status, req)
-- encodes them all.
sluice.route("GET", "/lazy/pairs", function(req)
  local keys = {}
  for k, v in pairs(req) do keys[#keys + 1] = k .. "=" .. type(v) end
  table.sort(keys)
  return 200, table.concat(keys, ",")
end)
-- req:header(name): one header, any case, repeated ones joined; nil when
-- absent; the req.headers table is not built by it.
sluice.route("GET", "/header", function(req)
  local v = req:header(req.query.name)
  local built = rawget(req, "headers") ~= nil
  return sluice.json(200, { value = v or "absent", headers_built = built })
end)
sluice.route("GET", "/lazy/json", function(req)
  return sluice.json(200, req)
end)
-- A field the handler set (or cleared) stays as it set it.
sluice.route("GET", "/lazy/assign", function(req)
  req.query = { mine = "yes" }
  req.headers = nil
  return sluice.json(200, { query = req.query, headers = req.headers or "cleared" })
end)
sluice.route("GET", "/inspect", inspect)
sluice.route("POST", "/inspect", inspect)
sluice.route("GET", "/splat/*", inspect)

-- Publish: ?event=, answers the id or the reason (always 200 so the test
-- sees both).
sluice.route("POST", "/pub/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body, { event = req.query.event })
  return sluice.json(200, { id = id or sluice.json.null, err = err or sluice.json.null })
end)

-- Publish without catching anything: bad names raise (500, logged).
sluice.route("POST", "/rawpub", function(req)
  local opts = nil
  if req.query.event then opts = { event = req.query.event } end
  sluice.publish(req.query.topic, req.body, opts)
  return 200, "published"
end)

-- Several publishes from one handler: each waits for its commit.
sluice.route("POST", "/pubmany/:topic", function(req)
  local ids = {}
  for i = 1, tonumber(req.query.n or "3") do
    ids[i] = sluice.publish(req.params.topic, req.body .. i)
  end
  return sluice.json(200, ids)
end)

-- Bad calls under pcall: the answer is the error text.
local tries = {
  publish_topic = function() sluice.publish("bad topic!", "x") end,
  publish_data_table = function() sluice.publish("ok", {}) end,
  publish_data_nil = function() sluice.publish("ok") end,
  publish_event_type = function() sluice.publish("ok", "x", { event = 5 }) end,
  publish_event_crlf = function() sluice.publish("ok", "x", { event = "a\nb" }) end,
  publish_event_base64 = function() sluice.publish("ok", "x", { event = "x.base64" }) end,
  publish_opts_type = function() sluice.publish("ok", "x", "event") end,
  route_in_handler = function() sluice.route("GET", "/late", function() end) end,
  config_in_handler = function() sluice.config{ workers = 1 } end,
  on_publish_in_handler = function() sluice.on_publish("x", function(m) return m end) end,
  log_level = function() sluice.log("loud", "x") end,
  log_level_type = function() sluice.log(nil, "x") end,
  timer_fn = function() sluice.timer(1, "not a function") end,
  timer_secs_small = function() sluice.timer(0, function() end) end,
  timer_secs_large = function() sluice.every(366 * 86400, function() end) end,
  timer_secs_type = function() sluice.every("soon", function() end) end,
  hmac_key = function() sluice.hmac_sha256(nil, "x") end,
  hmac_data = function() sluice.hmac_sha256("k", {}) end,
  hex_arg = function() sluice.hex({}) end,
  jwt_token = function() sluice.jwt.verify(nil, "k") end,
  jwt_key = function() sluice.jwt.verify("a.b.c", nil) end,
  json_decode = function() sluice.json.decode("{not json") end,
  json_encode = function() sluice.json.encode(function() end) end,
  topic_in_handler_bad = function() sluice.topic("bad name!", {}) end,
  subscribe_topic = function(req) req:subscribe("bad topic!") end,
  subscribe_topics_type = function(req) req:subscribe(42) end,
  subscribe_too_many = function(req)
    local t = {}
    for i = 1, 65 do t[i] = "t" .. i end
    req:subscribe(t)
  end,
  subscribe_empty_list = function(req) req:subscribe({}) end,
  subscribe_opts_type = function(req) req:subscribe("ok", "opts") end,
}
sluice.route("GET", "/try/:case", function(req)
  local f = tries[req.params.case]
  if not f then return 404, "no such case" end
  local ok, err = pcall(f, req)
  if ok then return 200, "no error" end
  return 200, tostring(err)
end)

-- The same calls without pcall: 500 and a logged traceback.
sluice.route("GET", "/raw/:case", function(req)
  tries[req.params.case](req)
  return 200, "no error"
end)

sluice.route("GET", "/error", function() error("handler boom") end)
sluice.route("GET", "/badreturn", function() return "two hundred" end)
sluice.route("GET", "/spin", function() spin() end)
-- pcall catches the overrun error, but the task must still be stopped.
sluice.route("GET", "/pcallspin", function()
  local ok = pcall(spin)
  return 200, "swallowed"
end)
sluice.route("GET", "/pcallspin_work", function()
  local ok = pcall(spin)
  local s = 0
  for i = 1, 100000 do s = s + i end
  return 200, "swallowed " .. s
end)

-- ---- JSON, log, crypto ---------------------------------------------------------

sluice.route("POST", "/json/roundtrip", function(req)
  local v = sluice.json.decode(req.body)
  return 200, sluice.json.encode(v), { ["content-type"] = "application/json" }
end)

sluice.route("GET", "/json/cases", function()
  local ok, err = pcall(sluice.json.decode, "[1, 2")
  local decoded = sluice.json.decode('{"a":null,"b":[1,2,3],"c":"\\u00e9"}')
  return sluice.json(201, {
    empty = sluice.json.encode({}),
    null_is_sentinel = decoded.a == sluice.json.null,
    list_len = #decoded.b,
    c = decoded.c,
    number = sluice.json.encode(1.5),
    string = sluice.json.encode("a\"b/c"),
    decode_error_caught = not ok,
    decode_error = tostring(err),
  })
end)

sluice.route("GET", "/log", function(req)
  sluice.log(req.query.level, "api-log-test", req.query.msg, 42, true, nil) -- LOGLINE
  return 200, "logged"
end)

sluice.route("GET", "/hmac", function(req)
  return 200, sluice.hex(sluice.hmac_sha256(unhex(req.query.key), unhex(req.query.data)))
end)

sluice.route("GET", "/hex", function(req)
  return 200, sluice.hex(unhex(req.query.bytes)) .. "|" .. sluice.hex("")
end)

-- sluice.valid_topic on each name of ?names= (comma-separated, hex each),
-- then on values that are not strings.
sluice.route("GET", "/valid_topic", function(req)
  local out = {}
  for name in (req.query.names or ""):gmatch("[^,]*") do
    out[#out + 1] = tostring(sluice.valid_topic(unhex(name)))
  end
  out[#out + 1] = tostring(sluice.valid_topic(nil))
  out[#out + 1] = tostring(sluice.valid_topic(42))
  return 200, table.concat(out, " ")
end)

sluice.route("POST", "/jwt", function(req)
  local claims, reason = sluice.jwt.verify(req.body, req.query.key)
  if claims then return sluice.json(200, { ok = true, claims = claims }) end
  return sluice.json(200, { ok = false, reason = reason })
end)

-- ---- timers ---------------------------------------------------------------------

local ticker, ticks = nil, 0

sluice.route("POST", "/timer/once", function(req)
  local t = sluice.timer(0.05, function()
    local id = sluice.publish("timer.once", "fired:" .. req.query.tag)
    sluice.publish("timer.once", "after-commit:" .. tostring(id ~= nil))
  end)
  return 200, type(t)
end)

sluice.route("POST", "/timer/cancel_once", function(req)
  local t = sluice.timer(0.2, function() sluice.publish("timer.once", "should-not-fire") end)
  t:cancel()
  t:cancel() -- harmless twice
  return 200, "cancelled"
end)

sluice.route("POST", "/timer/every", function(req)
  ticks = 0
  ticker = sluice.every(0.05, function()
    ticks = ticks + 1
    sluice.publish("timer.every", "tick" .. ticks)
  end)
  return 200, "started"
end)

sluice.route("POST", "/timer/stop", function(req)
  ticker:cancel()
  return 200, tostring(ticks)
end)

sluice.route("GET", "/timer/ticks", function(req) return 200, tostring(ticks) end)

local errticker, errticks = nil, 0
sluice.route("POST", "/timer/every_error", function(req)
  errticks = 0
  errticker = sluice.every(0.05, function()
    errticks = errticks + 1
    sluice.publish("timer.err", "run" .. errticks)
    error("timer boom " .. errticks)
  end)
  return 200, "started"
end)
sluice.route("POST", "/timer/every_error_stop", function(req)
  errticker:cancel()
  return 200, tostring(errticks)
end)

sluice.route("POST", "/timer/spin", function(req)
  sluice.timer(0.01, function()
    sluice.publish("timer.spin", "before")
    spin()
  end)
  return 200, "armed"
end)

-- ---- subscriptions ----------------------------------------------------------------

local closes = {}

local filters = {
  -- "drop" is skipped, "up:x" becomes "X" with event "upper", others pass.
  basic = function(msg)
    if msg.data == "drop" then return nil end
    if msg.data:sub(1, 3) == "up:" then
      msg.data = msg.data:sub(4):upper()
      msg.event = "upper"
      return msg
    end
    return msg
  end,
  -- sees the message fields
  fields = function(msg)
    msg.data = "id=" .. tostring(msg.id ~= nil) .. " topic=" .. msg.topic ..
               " event=" .. tostring(msg.event) .. " data=" .. msg.data
    return msg
  end,
  spin = function(msg)
    if msg.data == "spin" then spin() end
    return msg
  end,
  pcallspin = function(msg)
    if msg.data == "spin" then pcall(spin) end
    return msg
  end,
  err = function(msg)
    if msg.data == "err" then error("filter boom") end
    return msg
  end,
}

local function on_message_for(topic)
  return function(conn, data, binary)
    local cmd, arg = data:match("^(%w+):?(.*)$")
    if binary then
      conn:send("got binary " .. #data)
    elseif cmd == "echo" then
      conn:send("echo:" .. arg)
    elseif cmd == "bin" then
      conn:send("\0\1\2\255", true)
    elseif cmd == "close" then
      conn:close(tonumber(arg), "bye")
    elseif cmd == "badclose" then
      conn:close(999)
    elseif cmd == "transport" then
      conn:send("transport=" .. conn.transport .. " closed=" .. tostring(conn.closed))
    elseif cmd == "topic" then
      conn:send("topic=" .. tostring(conn.topic))
    elseif cmd == "pub" then
      local n = select("#", sluice.publish(topic, arg))
      conn:send("returned " .. n)
    elseif cmd == "spin" then
      spin()
    elseif cmd == "pcallspin" then
      pcall(spin)
      conn:send("survived")
    elseif cmd == "err" then
      error("on_message boom")
    else
      conn:send("unknown " .. data)
    end
  end
end

local function split(s)
  local out = {}
  for w in s:gmatch("[^,]+") do out[#out + 1] = w end
  return out
end

-- GET /sub/:topic: options from the query.
--   filter=NAME  skip_self=1  events=a,b  protocol=P  format=json
--   tag=T (on_close records into closes[T])  onclose=spin|err
--   topics=a,b (several topics instead of :topic)  badopt=NAME
sluice.route("GET", "/sub/:topic", function(req)
  local q = req.query
  local topic = req.params.topic
  local opts = {}
  if q.filter then opts.filter = filters[q.filter] end
  if q.skip_self then opts.skip_self = true end
  if q.events then opts.events = split(q.events) end
  if q.protocol then opts.protocol = q.protocol end
  if q.fmt then opts.format = q.fmt end
  if q.resume then opts.last_event_id = q.resume end
  if req.transport == "websocket" then opts.on_message = on_message_for(topic) end
  if q.tag then
    local tag = q.tag
    opts.on_close = function(conn)
      if q.onclose == "spin" then spin() end
      if q.onclose == "err" then error("on_close boom") end
      local rec = closes[tag] or { count = 0 }
      rec.count = rec.count + 1
      local ok, why = conn:send("too late")
      rec.send_ok = ok or false
      rec.send_reason = why
      rec.transport = conn.transport
      rec.closed = conn.closed
      closes[tag] = rec
    end
  end
  local bad = {
    filter = { filter = 42 },
    on_message = { on_message = "x" },
    on_close = { on_close = {} },
    protocol = { protocol = 5 },
    events = { events = "a" },
    events_item = { events = { 1 } },
    last_event_id = { last_event_id = 5 },
    format = { format = 1 },
  }
  if q.badopt then opts = bad[q.badopt] end
  local topics = topic
  if q.topics then topics = split(q.topics) end
  return req:subscribe(topics, opts)
end)

sluice.route("GET", "/closes/:tag", function(req)
  local rec = closes[req.params.tag]
  if not rec then return sluice.json(200, { count = 0 }) end
  return sluice.json(200, rec)
end)
