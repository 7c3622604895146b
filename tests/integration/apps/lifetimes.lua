-- Test app for test_lifetimes.py: callbacks that close, subscribe and
-- publish from inside a fan-out, where a free under a caller would show.
--
-- /killer/:topic  WebSocket; a client that sends "register" is listed; a
--                 message "kill" makes each subscriber's filter close every
--                 listed connection (the other subscribers of the topic,
--                 in the middle of the fan-out), then deliver it.
-- /chaos/:topic   WebSocket; what a client sends is published; its filter,
--                 callbacks and a timer close, send and publish
--                 pseudo-randomly (seeded by the message), so one fan-out
--                 meets every kind of change at once.
-- The default app's routes come too (publish, /healthz).
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

local listed = {}

sluice.route("GET", "/killer/:topic", function(req)
  return req:subscribe(req.params.topic, {
    on_message = function(conn, data)
      if data == "register" then
        listed[#listed + 1] = conn
        conn:send("registered")
      end
    end,
    filter = function(msg)
      if msg.data == "kill" then
        for i = #listed, 1, -1 do
          listed[i]:close(4000, "killed")
          listed[i] = nil
        end
      end
      return msg
    end,
  })
end)

local conns = {}
local n = 0

local function pick(seed)
  n = n + 1
  return (seed + n * 7919) % 13
end

-- A timer closes one of them now and then, from outside any request.
sluice.every(0.05, function()
  if #conns > 0 and pick(1) == 7 then conns[#conns]:close(4005, "chaos") end
end)

sluice.route("GET", "/chaos/:topic", function(req)
  local topic = req.params.topic
  return req:subscribe(topic, {
    on_message = function(conn, data)
      conns[#conns + 1] = conn
      local r = pick(#data)
      if r == 0 then conn:close(4001, "chaos") end
      if r == 1 and #conns > 1 then conns[1]:close(4002, "chaos") end
      sluice.publish(topic, data)
    end,
    filter = function(msg)
      local r = pick(#msg.data)
      if r == 2 and #conns > 0 then
        local i = 1 + (#msg.data % #conns)
        conns[i]:close(4003, "chaos")
      elseif r == 3 then
        for _, c in ipairs(conns) do c:send("x") end
      elseif r == 4 then
        sluice.publish(topic, "from-filter")
      elseif r == 5 then
        return nil
      end
      return msg
    end,
    on_close = function(conn)
      for i = #conns, 1, -1 do
        if conns[i] == conn or conns[i].closed then table.remove(conns, i) end
      end
      if #conns > 0 and pick(0) == 6 then conns[1]:close(4004, "chaos") end
    end,
  })
end)
