-- examples/chat/app.lua: a chat with rooms and JWT auth.
--
--   GET  /                       the chat page (index.html beside this file)
--   POST /login                  {"name":"alice","room":"lobby"}
--                                -> {"token":"<HS256 JWT>", ...}
--   GET  /rooms/:room?token=JWT  subscribe to room.<room> (WebSocket; SSE and
--                                long-poll work too, read-only); a WebSocket
--                                client's text frames are chat messages
--   POST /rooms/:room/messages   post a message with Authorization: Bearer JWT
--
-- Why it is shaped so: the browser cannot set headers on a WebSocket, so the
-- token rides in the query string; the server signs it itself (a demo: a
-- real deployment gets tokens from its identity provider and keeps only
-- sluice.jwt.verify).  A token names the one room it opens (claim "room"):
-- a token for one room is refused (403) by every other.  A token lasts
-- TOKEN_TTL seconds, and so does what it opened: the subscription ends at
-- the token's "exp" (opts.expires), a WebSocket with close code 4001, and
-- the page logs in again and resumes.  Every frame a client sees is a JSON envelope with the
-- message ID (format = "json"), so the page can resume with
-- ?last_event_id=ID after a reconnect and get exactly what it missed.
local sluice = require "sluice"

local SECRET = os.getenv("CHAT_SECRET") or "change-me: demo secret"
local TOKEN_TTL = tonumber(os.getenv("CHAT_TOKEN_TTL") or "") or 3600 -- seconds
local MAX_TEXT = 500 -- characters per message

-- Each room keeps its newest 200 messages for a day: the history a client
-- gets back when it resumes.
sluice.topic("room.*", { backlog = 200, max_age = 86400 })

-- The page, read once per script generation (a reload picks up edits).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local page do
  local f = assert(io.open(here .. "/index.html", "rb"))
  page = f:read("a")
  f:close()
end

-- base64url (RFC 4648 section 5) without padding, as JWT wants it.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for k = 1, chars do
      local v = (n >> (18 - 6 * (k - 1))) & 63
      out[#out + 1] = B64:sub(v + 1, v + 1)
    end
  end
  return table.concat(out)
end

-- An HS256 JWT for `claims`; sluice.jwt.verify checks it.
local function jwt_sign(claims, key)
  local head = b64url(sluice.json.encode({ alg = "HS256", typ = "JWT" }))
  local body = b64url(sluice.json.encode(claims))
  local input = head .. "." .. body
  return input .. "." .. b64url(sluice.hmac_sha256(key, input))
end

local function valid_name(s)
  return type(s) == "string" and #s >= 1 and #s <= 32 and not s:find("[^%w_%-]")
end

local function valid_room(s)
  return type(s) == "string" and #s >= 1 and #s <= 64 and not s:find("[^%w_%-]")
end

-- The claims of a request's token if it opens `room` (claims.sub is the
-- user); else nil, the HTTP status (401: no valid token, 403: a token for
-- another room) and why.
local function authenticate(req, room)
  local token = req.query.token
  local auth = req.headers["authorization"]
  if not token and auth then token = auth:match("^[Bb]earer%s+(%S+)$") end
  if not token then return nil, 401, "missing token" end
  local claims, err = sluice.jwt.verify(token, SECRET)
  if not claims then return nil, 401, err end
  if not valid_name(claims.sub) then return nil, 401, "bad subject" end
  if not valid_room(claims.room) then return nil, 401, "token names no room" end
  if claims.room ~= room then return nil, 403, "token is for another room" end
  return claims
end

-- Checks a chat text; returns the JSON to publish, or nil and an error.
local function chat_message(user, text)
  local len = utf8.len(text)
  if not len then return nil, "message is not UTF-8 text" end
  if not text:find("%S") then return nil, "empty message" end
  if len > MAX_TEXT then
    return nil, ("message too long (%d characters, at most %d)"):format(len, MAX_TEXT)
  end
  return sluice.json.encode({ from = user, text = text })
end

sluice.route("GET", "/", function()
  return 200, page, { ["content-type"] = "text/html; charset=utf-8" }
end)

sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)

-- Login: a demo that trusts any well-formed name, for the one room asked.
-- Name and room come as JSON {"name": ..., "room": ...}, form fields or
-- ?name=&room=.
sluice.route("POST", "/login", function(req)
  local name, room = req.query.name, req.query.room
  if req.body ~= "" then
    local ok, v = pcall(sluice.json.decode, req.body)
    if ok and type(v) == "table" then
      name, room = v.name, v.room
    else
      name = req.body:match("name=([%w_%-]+)") or name
      room = req.body:match("room=([%w_%-]+)") or room
    end
  end
  if not valid_name(name) then
    return sluice.json(400, { error = "name: 1 to 32 letters, digits, _ or -" })
  end
  if not valid_room(room) then
    return sluice.json(400, { error = "room: 1 to 64 letters, digits, _ or -" })
  end
  local now = os.time()
  local token = jwt_sign({ sub = name, room = room, iat = now, exp = now + TOKEN_TTL }, SECRET)
  return sluice.json(200, { token = token, user = name, room = room, expires_in = TOKEN_TTL })
end)

sluice.route("GET", "/rooms/:room", function(req)
  local room = req.params.room
  if not valid_room(room) then
    return sluice.json(400, { error = "room: 1 to 64 letters, digits, _ or -" })
  end
  local claims, status, why = authenticate(req, room)
  if not claims then
    return sluice.json(status, { error = why })
  end
  local user = claims.sub
  local topic = "room." .. room
  sluice.log("info", "chat join user=" .. user, "room=" .. room, "transport=" .. req.transport)
  return req:subscribe(topic, {
    format = "json",
    -- The socket lasts as long as its token: closed with 4001 at "exp".
    expires = claims.exp,
    on_message = function(conn, data, binary)
      local msg, err
      if binary then
        err = "send text frames"
      else
        msg, err = chat_message(user, data)
      end
      if not msg then
        conn:send(sluice.json.encode({ error = err }))
        return
      end
      -- In a callback publish queues the message: it is stored before
      -- anyone (the sender included) receives it.
      sluice.publish(topic, msg)
    end,
  })
end)

-- Posting without a WebSocket (curl, bots): same checks, answers the ID.
sluice.route("POST", "/rooms/:room/messages", function(req)
  local room = req.params.room
  if not valid_room(room) then
    return sluice.json(400, { error = "room: 1 to 64 letters, digits, _ or -" })
  end
  local claims, status, why = authenticate(req, room)
  if not claims then
    return sluice.json(status, { error = why })
  end
  local msg, err = chat_message(claims.sub, req.body)
  if not msg then
    return sluice.json(400, { error = err })
  end
  local id, perr = sluice.publish("room." .. room, msg)
  if not id then
    return sluice.json(503, { error = perr })
  end
  return sluice.json(200, { id = id })
end)
