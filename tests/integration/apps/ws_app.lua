-- Test app for the WebSocket tests: the default app's routes (loaded from
-- scripts/default.lua) plus routes that use the per-connection Lua API:
-- conn:send and conn:close from on_message, a subprotocol chosen by the
-- app, JSON envelopes forced by the app, a per-subscriber filter, and a
-- short retention for topics "small.*" (so a resume ID falls out of it).
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

sluice.topic("small.*", { backlog = 3 })

-- What a client sends comes back as "echo:<data>" on its own connection
-- (not published); "close" closes with 4000 "bye"; "bin" answers three
-- bytes as a binary frame; "text-bytes" answers the same bytes as text
-- (conn:send's second argument says which).
sluice.route("GET", "/echo/:topic", function(req)
  return req:subscribe(req.params.topic, {
    on_message = function(conn, data, binary)
      if data == "close" then
        conn:close(4000, "bye")
      elseif data == "bin" then
        conn:send("\1\2\255", true)
      elseif data == "transport" then
        conn:send(conn.transport)
      else
        conn:send("echo:" .. (binary and "binary:" or "text:") .. data)
      end
    end,
  })
end)

sluice.route("GET", "/proto/:topic", function(req)
  return req:subscribe(req.params.topic, { protocol = "chat.v1" })
end)

sluice.route("GET", "/json/:topic", function(req)
  return req:subscribe(req.params.topic, { format = "json" })
end)

-- Drops the data "drop", upper-cases data that starts with "up:", passes
-- the rest unchanged.
sluice.route("GET", "/filtered/:topic", function(req)
  return req:subscribe(req.params.topic, {
    filter = function(msg)
      if msg.data == "drop" then return nil end
      if msg.data:sub(1, 3) == "up:" then
        msg.data = msg.data:upper()
      end
      return msg
    end,
  })
end)
