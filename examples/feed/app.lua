-- examples/feed/app.lua: a resumable Server-Sent Events feed fed by a timer.
--
--   GET /feed          subscribe to feed.ticks (SSE; long-poll and WebSocket
--                      work too); ?events=quote,counter keeps only those
--   GET /              a small page that shows the feed with sluice's JS
--                      client (SSE, long-poll where SSE cannot pass)
--   GET /sluice.js     that client, clients/js/sluice.js of this repository
--
-- Every second a timer publishes one message to feed.ticks, cycling through
-- three event names: "tick" (the time), "quote" (a random-walk price) and
-- "counter" (a running count).  Why it is shaped so: the timer is the only
-- publisher, and every message goes through LMDB with an ID, so a client
-- that drops and comes back with Last-Event-ID gets exactly what it missed
-- (the newest 100 are kept); one that comes back too late is told with the
-- `sluice.gap` event before the replay.
--
-- Environment (for demos and tests): FEED_INTERVAL seconds between messages
-- (default 1), FEED_BACKLOG messages kept (default 100).
local sluice = require "sluice"

local INTERVAL = tonumber(os.getenv("FEED_INTERVAL")) or 1
local BACKLOG = math.tointeger(tonumber(os.getenv("FEED_BACKLOG"))) or 100

sluice.topic("feed.*", { backlog = BACKLOG })

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end
local page = slurp(here .. "/index.html")
-- The page's client library, from the repository's clients/js.
local client_js = slurp(here .. "/../../clients/js/sluice.js")

-- State of this script generation: a reload starts the count again (the
-- IDs, which come from storage, keep increasing).
local count = 0
local price = 100.0

local function next_message()
  count = count + 1
  local kind = count % 3
  if kind == 1 then
    return "tick", sluice.json.encode({ n = count, time = os.date("!%Y-%m-%dT%H:%M:%SZ") })
  elseif kind == 2 then
    price = math.max(1, price + (math.random() - 0.5) * 2)
    return "quote", sluice.json.encode({ n = count, symbol = "SLC",
                                         price = math.floor(price * 100 + 0.5) / 100 })
  end
  return "counter", sluice.json.encode({ n = count })
end

-- A timer run is a task: publish waits for the commit, so messages are
-- stored one after the other in order.
sluice.every(INTERVAL, function()
  local event, data = next_message()
  local id, err = sluice.publish("feed.ticks", data, { event = event })
  if not id then sluice.log("warn", "feed publish failed:", err) end
end)

sluice.route("GET", "/", function()
  return 200, page, { ["content-type"] = "text/html; charset=utf-8" }
end)

sluice.route("GET", "/sluice.js", function()
  return 200, client_js, { ["content-type"] = "text/javascript; charset=utf-8" }
end)

sluice.route("GET", "/healthz", function()
  return 200, "ok"
end)

sluice.route("GET", "/feed", function(req)
  local opts = {}
  if req.query.events then
    -- Which events to deliver, checked in C for each message.
    local list = {}
    for name in req.query.events:gmatch("[^,]+") do list[#list + 1] = name end
    if #list > 0 then opts.events = list end
  end
  return req:subscribe("feed.ticks", opts)
end)
