-- lua_budget.lua: scripts that try to outrun the instruction budget, the
-- deadline and the memory limit from every place script code runs (see
-- tests/integration/test_lua_budget.py).  One worker, so that "the worker
-- still answers" is the worker that ran the script.
local sluice = require "sluice"

sluice.config{
  workers = 1,
  limits = {
    instruction_budget = 2000000,
    script_timeout = 0.5,
    script_memory = 16 * 1024 * 1024,
  },
}

local function spin() while true do end end
local dead -- keep_dead, close_dead

-- Ways to catch the overrun's error and go on.
local shapes = {
  pcall = function() while true do pcall(spin) end end,
  nested = function()
    while true do pcall(function() while true do pcall(spin) end end) end
  end,
  xpcall = function() while true do xpcall(spin, spin) end end,
  coroutine = function() while true do pcall(coroutine.wrap(spin)) end end,
  resume = function()
    while true do coroutine.resume(coroutine.create(spin)) end
  end,
  load = function() while true do load(spin) end end,
  gsub = function() while true do pcall(string.gsub, "aaaa", "a", spin) end end,
  sort = function() while true do pcall(table.sort, { 3, 1, 2 }, spin) end end,
  sethook = function()
    pcall(debug.sethook)
    pcall(debug.sethook, spin, "", 0)
    while true do pcall(spin) end
  end,
  -- A coroutine the overrun kills, with a __close handler that loops:
  -- closed at once (coroutine.wrap), or by a later run.
  wrap_close = function()
    while true do
      pcall(coroutine.wrap(function()
        local x <close> = setmetatable({}, { __close = spin })
        table.sort({ 3, 1, 2 }, spin)
      end))
    end
  end,
  keep_dead = function()
    dead = coroutine.create(function()
      local x <close> = setmetatable({}, { __close = spin })
      spin()
    end)
    coroutine.resume(dead)
    spin()
  end,
  close_dead = function()
    if dead then coroutine.close(dead) end
    spin()
  end,
  -- Standard calls that would loop in C without allocating.
  move = function() table.move({}, 1, 1e15, 2) end,
  rep = function() while true do pcall(string.rep, "", 1e15) end end,
  close = function()
    while true do
      pcall(function()
        local x <close> = setmetatable({}, { __close = spin })
      end)
    end
  end,
}
local function run(shape) return (shapes[shape] or spin)() end

sluice.route("GET", "/healthz", function() return 200, "ok" end)

sluice.route("GET", "/spin/:shape", function(req)
  run(req.params.shape)
  return 200, "escaped"
end)

-- Few instructions, each long (the comparison of two equal 2 MiB strings
-- is one VM instruction): only the deadline stops it.
sluice.route("GET", "/slow_c", function()
  local s, t = string.rep("x", 2 * 1024 * 1024), string.rep("x", 2 * 1024 * 1024)
  local same = 0
  for _ = 1, 1e7 do if s == t then same = same + 1 end end
  return 200, "finished " .. same
end)

-- Work inside one C call: a quadratic pattern (Lua's own matcher took 8 s
-- on 60 KB here), and a linear one that must pass.
sluice.route("POST", "/quadratic", function(req)
  return 200, tostring(req.body:find(".-b"))
end)

sluice.route("POST", "/linear", function(req)
  local out, n = req.body:gsub("a", "b")
  return 200, tostring(n)
end)

sluice.route("GET", "/timer/:shape", function(req)
  sluice.timer(0.01, function() run(req.params.shape) end)
  return 200, "armed"
end)

sluice.on_publish("spin.*", function(msg) run(msg.topic:sub(6)) return msg end)

sluice.route("POST", "/pub/:topic", function(req)
  local id, err = sluice.publish(req.params.topic, req.body)
  if not id then return 503, err end
  return 200, id
end)

sluice.route("GET", "/sub/:topic", function(req)
  local shape, where = req.query.shape, req.query.where
  local opts = {}
  local function cb() run(shape) end
  if where == "filter" then opts.filter = cb end
  if where == "on_message" then opts.on_message = cb end
  if where == "on_close" then opts.on_close = cb end
  return req:subscribe(req.params.topic, opts)
end)

-- Memory: grow past the limit; stop the collector; finalizers.
sluice.route("GET", "/grow", function()
  local t = {}
  for i = 1, 100 do t[i] = string.rep("x", 1024 * 1024) .. i end -- 100 MiB at most
  return 200, "grew " .. #t
end)

sluice.route("GET", "/gc/stop", function()
  local ok, err = pcall(collectgarbage, "stop")
  local ok2 = pcall(collectgarbage, "setpause", 1000)
  return 200, string.format("%s %s %s", tostring(ok), tostring(ok2), tostring(err))
end)

sluice.route("GET", "/gc/garbage", function()
  for _ = 1, 4 do local _ = string.rep("y", 1024 * 1024) .. "z" end -- 4 MiB of garbage
  return 200, string.format("%.0f", collectgarbage("count") * 1024)
end)

-- Precompiled chunks are refused (load, loadfile): crafted bytecode could
-- break the VM's invariants, the budget's among them.
sluice.route("GET", "/bytecode", function()
  local f, err = load(string.dump(function() return 1 end))
  local g, err2 = load("return 2", "=text", "bt")
  return 200, string.format("%s|%s|%s|%s", tostring(f), tostring(err), tostring(g and g()),
                            tostring(err2))
end)

sluice.route("GET", "/gc/finalizer", function(req)
  local ok = pcall(setmetatable, {}, { __gc = spin })
  local dbg = pcall(debug.getregistry)
  return 200, string.format("%s %s %s %s", tostring(ok), tostring(getmetatable(io.stdout)),
                            tostring(getmetatable(req)), tostring(dbg))
end)

-- Subscribe options behind an __index that raises: read raw, outside any
-- protected call (an abort of the process before).
sluice.route("GET", "/metaopts/:topic", function(req)
  return req:subscribe(req.params.topic,
                       setmetatable({}, { __index = function() error("boom") end }))
end)
