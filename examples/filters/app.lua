-- examples/filters/app.lua: one topic, many readers, each seeing only its
-- own messages, transformed for it.
--
--   GET  /inbox?user=NAME       subscribe to the topic "inbox" (SSE,
--                               WebSocket, long-poll)
--   POST /send?to=NAME|*        publish a JSON body {"text": ..., "from": ...}
--                               to one user, or to everyone with to=*
--
-- Why it is shaped so: every message goes to the one topic "inbox", with a
-- routing envelope {"to": ...}.  Two Lua hooks do the rest:
--
--   * sluice.on_publish("inbox", ...) runs once per message, before it is
--     stored: it parses and validates the body, normalises it (trimmed
--     text, a default sender, a timestamp, no unknown fields) and drops what
--     is invalid, so storage, replay and every subscriber see only clean
--     messages;
--   * each subscriber's `filter` runs per message and subscriber: it keeps
--     the messages for that user or for everyone, strips the routing
--     envelope and adds a greeting with the user's name.
--
-- A filter is Lua per delivery; for plain routing by name the declarative
-- `events` option (checked in C) is the cheaper tool.  Here the filter also
-- rewrites each message, which needs Lua anyway.
local sluice = require "sluice"

local MAX_TEXT = 1000 -- bytes

sluice.topic("inbox", { backlog = 1000 })

local function valid_user(s)
  return type(s) == "string" and #s >= 1 and #s <= 32 and not s:find("[^%w_%-]")
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- The one gate of the topic: msg.data is {"to": NAME|"*", "body": "<raw
-- request body>"}; the body must be a JSON object with a non-empty string
-- "text" and optionally a string "from".  Returns the normalised message
-- {"to", "from", "text", "sent_at"} with the event "direct" or "broadcast",
-- or nil to drop it.
sluice.on_publish("inbox", function(msg)
  local ok, env = pcall(sluice.json.decode, msg.data)
  if not ok or type(env) ~= "table" or type(env.body) ~= "string" then return nil end
  if env.to ~= "*" and not valid_user(env.to) then return nil end
  local ok2, body = pcall(sluice.json.decode, env.body)
  if not ok2 or type(body) ~= "table" or type(body.text) ~= "string" then return nil end
  local text = trim(body.text)
  if text == "" or #text > MAX_TEXT or not utf8.len(text) then return nil end
  local from = body.from
  if from == nil then from = "anonymous" end
  if not valid_user(from) then return nil end
  msg.data = sluice.json.encode({ to = env.to, from = from, text = text, sent_at = os.time() })
  msg.event = env.to == "*" and "broadcast" or "direct"
  return msg
end)

sluice.route("POST", "/send", function(req)
  local to = req.query.to
  if to ~= "*" and not valid_user(to) then
    return sluice.json(400, { error = "to: a user name or *" })
  end
  -- The raw body travels as a string: on_publish is where it is judged.
  local id, err = sluice.publish("inbox", sluice.json.encode({ to = to, body = req.body }))
  if not id then
    if err == "dropped by on_publish" then
      return sluice.json(422, { error = "invalid message: want a JSON object with a non-empty \"text\"" })
    end
    return sluice.json(503, { error = err })
  end
  return sluice.json(200, { id = id })
end)

sluice.route("GET", "/inbox", function(req)
  local user = req.query.user
  if not valid_user(user) then
    return sluice.json(400, { error = "user: 1 to 32 letters, digits, _ or -" })
  end
  local greeting = "Hello, " .. user .. "!"
  return req:subscribe("inbox", {
    filter = function(msg)
      -- Messages were normalised by on_publish, so this decode succeeds.
      local m = sluice.json.decode(msg.data)
      if m.to ~= user and m.to ~= "*" then return nil end
      msg.data = sluice.json.encode({
        greeting = greeting,
        from = m.from,
        text = m.text,
        sent_at = m.sent_at,
        broadcast = m.to == "*",
      })
      return msg
    end,
  })
end)

sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)
