-- tests/fuzz/fuzz_conn_app.lua: the Lua app that tests/fuzz/fuzz_conn.c
-- serves half of its inputs with (the other half get the built-in app).
--
-- It uses every callback the API offers, each doing what docs/lua-api.md
-- allows: filters that transform, drop, fail, run past their budget,
-- publish, and close their own or another subscriber in the middle of a
-- fan-out; on_message that echoes, publishes, closes itself or the others;
-- on_close that publishes.  What a callback does is chosen by the first
-- byte of the message it sees, so the fuzzer picks it with the bytes it
-- sends:
--
--   P  publish the rest to the same topic     K  close every other subscriber
--   C  close this subscriber                  A  close every subscriber, this one too
--   S  send the rest back (conn:send)         B  send 3,000 bytes back
--   E  raise an error                         L  loop until the budget stops it
--   D  (filter) drop the message              X  (filter) deliver a changed message
--   V  (filter) set an invalid event          anything else: deliver as it is
local sluice = require "sluice"

-- A small budget: an `L` costs a fraction of a millisecond, not a second.
sluice.config { limits = { instruction_budget = 100000 } }
-- A short backlog: the store in the fuzzer's temporary directory stays small.
sluice.topic("*", { backlog = 8 })

-- The open subscribers by topic, as the `conn` objects their callbacks got.
local roster = {}

local function enrol(conn)
  local t = conn.topic
  if not t then return end
  roster[t] = roster[t] or {}
  roster[t][conn] = true
end

local function close_others(topic, me, also_me)
  local set = roster[topic]
  if not set then return end
  for c in pairs(set) do
    if c ~= me or also_me then c:close(4000, "closed by a callback") end
  end
end

-- What every callback does for a command byte; returns true when handled.
local function act(cmd, rest, topic, me)
  if cmd == "P" then
    if topic and sluice.valid_topic(topic) then sluice.publish(topic, rest) end
  elseif cmd == "K" then
    if topic then close_others(topic, me, false) end
  elseif cmd == "A" then
    if topic then close_others(topic, me, true) end
  elseif cmd == "C" then
    if me then me:close(4001, "closed itself") end
  elseif cmd == "S" then
    if me then me:send(rest, #rest % 2 == 1) end
  elseif cmd == "B" then
    if me then me:send(string.rep("b", 3000)) end
  elseif cmd == "E" then
    error("fuzz: an error in a callback")
  elseif cmd == "L" then
    local n = 0
    while true do n = n + 1 end
  else
    return false
  end
  return true
end

-- on_publish on one prefix: drops `D`, rewrites `X`, passes the rest.
sluice.on_publish("op.*", function(msg)
  local cmd = msg.data:sub(1, 1)
  if cmd == "D" then return nil end
  if cmd == "X" then msg.data = msg.data:upper(); msg.event = "rewritten" end
  if cmd == "E" then error("fuzz: an error in on_publish") end
  return msg
end)

local function subscribe(req, topic)
  local q = req.query
  local topics = topic
  if q.also then topics = { topic, q.also } end
  local me -- this subscription's conn, once a callback has seen it
  local opts = {
    skip_self = q.skip == "1",
    format = q.format,
    protocol = q.proto,
    events = q.ev and { q.ev, "rewritten" } or nil,
    on_message = function(conn, data, binary)
      me = conn
      enrol(conn)
      act(data:sub(1, 1), data:sub(2), conn.topic, conn)
    end,
    on_close = function(conn)
      for _, set in pairs(roster) do set[conn] = nil end
      if q.bye and sluice.valid_topic(q.bye) then sluice.publish(q.bye, "bye") end
    end,
  }
  if q.nofilter ~= "1" then
    opts.filter = function(msg)
      local cmd = msg.data:sub(1, 1)
      if cmd == "D" then return nil end
      if cmd == "X" then
        msg.data = "x" .. msg.data
        msg.event = "rewritten"
        return msg
      end
      if cmd == "V" then
        msg.event = "bad\nevent"
        return msg
      end
      act(cmd, msg.data:sub(2), msg.topic, me)
      return msg
    end
  end
  return req:subscribe(topics, opts)
end

sluice.route("GET", "/s/:topic", function(req)
  return subscribe(req, req.params.topic)
end)

-- Publishes and waits for the commit (the request is held meanwhile).
sluice.route("POST", "/p/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body, { event = req.query.event })
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)

-- Plain answers: headers, a body the size of the output limit, errors.
sluice.route("GET", "/h", function(req)
  local h = req.headers
  return 200, "ok " .. (h["x-a"] or ""), { ["x-echo"] = req.query.v or "v", ["x-list"] = { "a", "b" } }
end)
sluice.route("GET", "/big", function()
  return 200, string.rep("z", 8000)
end)
sluice.route("POST", "/echo", function(req)
  return 201, req.body, { ["content-type"] = req.headers["content-type"] }
end)
sluice.route("*", "/e", function()
  error("fuzz: an error in a handler")
end)
sluice.route("GET", "/bad-header", function()
  return 200, "x", { ["x-bad"] = "a\r\nb" }
end)
sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)
