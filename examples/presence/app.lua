-- examples/presence/app.lua: who is in a room, with join and leave events,
-- on sluice's built-in presence (docs/lua-api.md, "Presence and counts").
--
--   GET /rooms/:room/ws?user=NAME   WebSocket on presence.<room>, JSON
--                                   envelopes: first a "roster" frame (sent
--                                   by on_open), then the events
--                                   "sluice.join" and "sluice.leave" (data
--                                   {"topic","id","info"}) and "say";
--                                   ?events=sluice.join,sluice.leave keeps
--                                   only those
--   GET /rooms/:room/who            {"room":..., "users":[...], "connections":n}
--
-- The connection is a member of the room with the id NAME and the info
-- {name = NAME}: sluice keeps the members of every topic for all the
-- workers, publishes "sluice.join" when a user's first connection opens and
-- "sluice.leave" when its last one closes (a user with two tabs joins and
-- leaves once), and delivers those events to the connections that ask
-- (presence_events).  Text frames a client sends are published as "say"
-- events {"user","text"} to the others (skip_self: the sender shows its own
-- line, it does not get it back).
--
-- Why it is shaped so: the roster used to be a Lua table, which a reload
-- emptied and which each worker had for its own connections only.  The
-- built-in presence lives outside the script's Lua states: any number of
-- workers see one roster, and a reload (SIGHUP) keeps it.
local sluice = require "sluice"

sluice.topic("presence.*", { backlog = 100, max_age = 3600 })

local function valid_name(s)
  return type(s) == "string" and #s >= 1 and #s <= 32 and not s:find("[^%w_%-]")
end

local function users(topic)
  local list = {}
  for _, m in ipairs(sluice.presence(topic)) do list[#list + 1] = m.id end
  table.sort(list)
  return list
end

-- JSON of a list of names: an empty Lua table would encode as {}.
local function json_list(list)
  return #list > 0 and sluice.json.encode(list) or "[]"
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
    presence = { id = user, info = { name = user } },
    presence_events = true,
    -- The subscription is in place: the newcomer learns who is there.
    on_open = function(conn)
      conn:send('{"event":"roster","room":' .. sluice.json.encode(room) ..
                ',"users":' .. json_list(users(topic)) .. "}")
    end,
    on_message = function(conn, data, binary)
      if binary or #data > 1000 then
        conn:send(sluice.json.encode({ error = "text frames of at most 1000 bytes" }))
        return
      end
      sluice.publish(topic, sluice.json.encode({ user = user, text = data }), { event = "say" })
    end,
  }
  if req.query.events then
    local list = {}
    for name in req.query.events:gmatch("[^,]+") do list[#list + 1] = name end
    if #list > 0 then opts.events = list end
  end
  return req:subscribe(topic, opts)
end)

sluice.route("GET", "/rooms/:room/who", function(req)
  local room = req.params.room
  if not valid_name(room) then
    return sluice.json(400, { error = "room: 1 to 32 letters, digits, _ or -" })
  end
  local topic = "presence." .. room
  local body = '{"room":' .. sluice.json.encode(room) .. ',"users":' .. json_list(users(topic)) ..
               ',"connections":' .. sluice.subscribers(topic) .. "}"
  return 200, body, { ["content-type"] = "application/json" }
end)
