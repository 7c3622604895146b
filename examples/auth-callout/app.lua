-- auth-callout: a subscribe handler that asks a backend whether the user
-- may read the topic (an auth callout, as Centrifugo's proxy or nchan's
-- nchan_authorize_request do), and join/leave webhooks to that backend.
--
--   GET  /topics/:topic   (Authorization: Bearer USER, or ?user=USER)
--        SSE, WebSocket or long-poll on `topic` if the backend says yes
--   POST /topics/:topic   publishes the body (no callout: a demo)
--
-- The callout (sluice.http.request) makes the handler wait without holding
-- the server: other connections are served meanwhile.  The webhooks
-- (sluice.http.send) are queued and sent after the answer: they never
-- delay it, and when the backend is slow the queue is bounded (drops are
-- counted in /metrics as sluice_webhooks_total{result="dropped"}).
local sluice = require "sluice"

local BACKEND = os.getenv("AUTH_BACKEND") or "http://127.0.0.1:9000"
-- How long a subscriber waits for the backend before it gets 503.
local CALLOUT_TIMEOUT = 2

-- One webhook at a time keeps join before leave (several at once may
-- overtake each other); 4096 may wait before new ones are dropped.
sluice.config{ http = { max_in_flight = 512, max_webhooks = 1, webhook_queue = 4096 } }

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function user_of(req)
  local auth = req:header("authorization")
  local user = auth and auth:match("^Bearer%s+(%S+)$") or req.query.user
  if user and #user <= 64 and user:match("^[%w_.-]+$") then return user end
end

-- A webhook: queued, sent after the answer; a full queue drops it (and
-- /metrics counts it), so a slow backend never slows the subscribers.
local function event(kind, user, topic)
  local ok, err = sluice.http.send{
    method = "POST", url = BACKEND .. "/events", timeout = 5,
    headers = { ["Content-Type"] = "application/json" },
    body = sluice.json.encode{ event = kind, user = user, topic = topic, at = os.time() },
  }
  if not ok then sluice.log("warn", "webhook", kind, "not sent:", err) end
end

sluice.route("GET", "/topics/:topic", function(req)
  local topic = req.params.topic
  if not sluice.valid_topic(topic) then return sluice.json(400, { error = "bad topic" }) end
  local user = user_of(req)
  if not user then return sluice.json(401, { error = "who are you?" }) end

  -- The callout: the backend answers 200 to allow, 403 to refuse.
  local res, err = sluice.http.request{
    url = BACKEND .. "/authorize?user=" .. escape(user) .. "&topic=" .. escape(topic),
    timeout = CALLOUT_TIMEOUT,
  }
  if not res then
    -- Backend down or slow: fail closed, and say it is not the client's fault.
    return sluice.json(503, { error = "authorization unavailable: " .. err })
  end
  if res.status == 403 or res.status == 401 then
    return sluice.json(403, { error = "not allowed" })
  end
  if res.status ~= 200 then
    return sluice.json(503, { error = "authorization failed: status " .. res.status })
  end

  -- Join once the subscription is live, and leave only after a join: a
  -- subscription that fails to start, or a poll answered at once, sends
  -- neither.
  local joined = false
  return req:subscribe(topic, {
    on_open = function(conn)
      joined = true
      event("join", user, topic)
    end,
    on_close = function(conn)
      if joined then event("leave", user, topic) end
    end,
  })
end)

sluice.route("POST", "/topics/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return sluice.json(503, { error = err }) end
  return sluice.json(200, { id = id })
end)
