-- examples/presence/app.lua: who is in a room, with join and leave events.
--
--   GET /rooms/:room/ws?user=NAME   WebSocket on presence.<room>: JSON
--                                   envelopes with the events "join",
--                                   "leave" and "say"; ?events=join,leave
--                                   keeps only those
--   GET /rooms/:room/who            the roster: {"room":..., "users":[...]}
--
-- A user's first connection to a room publishes {"user","room","users"}
-- with the event "join", its last one going away publishes the same with
-- "leave" (a user with two tabs joins once).  Text frames a client sends
-- are published as "say" events {"user","text"} to the others (skip_self:
-- the sender shows its own line, it does not get it back).
--
-- Why it is shaped so: the roster is a Lua table, the simplest thing that
-- works on one server.  It is state of the script generation: a reload
-- (SIGHUP, --watch) runs this file again with an empty roster, while the
-- connections opened before keep the callbacks, and so the roster, of the
-- generation that accepted them; /who then answers only for connections
-- made since the reload.  A restart empties it too (the join and leave
-- events themselves stay in storage).  Several servers would keep the
-- roster in a shared store instead.
local sluice = require "sluice"

-- The roster is a table of this Lua state, and each worker has its own
-- state: one worker, so every connection sees the same roster.
sluice.config{ workers = 1 }

sluice.topic("presence.*", { backlog = 100, max_age = 3600 })

-- rooms[room][user] = number of open connections of that user in the room.
local rooms = {}

local function valid_name(s)
  return type(s) == "string" and #s >= 1 and #s <= 32 and not s:find("[^%w_%-]")
end

local function users(room)
  local list = {}
  for u in pairs(rooms[room] or {}) do list[#list + 1] = u end
  table.sort(list)
  return list
end

-- JSON of a list of names: an empty Lua table would encode as {}.
local function json_list(list)
  return #list > 0 and sluice.json.encode(list) or "[]"
end

local function event_data(room, user)
  return '{"user":' .. sluice.json.encode(user) .. ',"room":' .. sluice.json.encode(room) ..
         ',"users":' .. json_list(users(room)) .. "}"
end

sluice.route("GET", "/rooms/:room/ws", function(req)
  local room, user = req.params.room, req.query.user
  if not valid_name(room) then
    return sluice.json(400, { error = "room: 1 to 32 letters, digits, _ or -" })
  end
  if not valid_name(user) then
    return sluice.json(400, { error = "user: 1 to 32 letters, digits, _ or -" })
  end
  if req.transport ~= "websocket" then
    return sluice.json(400, { error = "WebSocket only" })
  end
  local topic = "presence." .. room
  local opts = {
    format = "json",
    skip_self = true,
    on_message = function(conn, data, binary)
      if binary or #data > 1000 then
        conn:send(sluice.json.encode({ error = "text frames of at most 1000 bytes" }))
        return
      end
      sluice.publish(topic, sluice.json.encode({ user = user, text = data }), { event = "say" })
    end,
    on_close = function(conn)
      local r = rooms[room]
      if not r or not r[user] then return end
      r[user] = r[user] - 1
      if r[user] > 0 then return end
      r[user] = nil
      if next(r) == nil then rooms[room] = nil end
      -- In a callback publish queues: nothing waits here.
      sluice.publish(topic, event_data(room, user), { event = "leave" })
    end,
  }
  if req.query.events then
    local list = {}
    for name in req.query.events:gmatch("[^,]+") do list[#list + 1] = name end
    if #list > 0 then opts.events = list end
  end
  -- Join before subscribing: the publish returns once the event is stored
  -- and handed to everyone already in the room, so the others learn of the
  -- newcomer, and the newcomer, whose subscription starts after it, reads
  -- the roster from /who (or from the "users" of the next event).
  rooms[room] = rooms[room] or {}
  local r = rooms[room]
  r[user] = (r[user] or 0) + 1
  if r[user] == 1 then
    local id, err = sluice.publish(topic, event_data(room, user), { event = "join" })
    if not id then
      r[user] = nil
      if next(r) == nil then rooms[room] = nil end
      return sluice.json(503, { error = err })
    end
  end
  return req:subscribe(topic, opts)
end)

sluice.route("GET", "/rooms/:room/who", function(req)
  local room = req.params.room
  if not valid_name(room) then
    return sluice.json(400, { error = "room: 1 to 32 letters, digits, _ or -" })
  end
  local body = '{"room":' .. sluice.json.encode(room) .. ',"users":' .. json_list(users(room)) .. "}"
  return 200, body, { ["content-type"] = "application/json" }
end)

sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)
