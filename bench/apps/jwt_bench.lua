-- bench/apps/jwt_bench.lua: POST /bench?n=N with {token =, keys =} verifies
-- the token N times with sluice.jwt.verify and answers verifications per
-- second (bench/jwt_verify.sh).  The keys are parsed once (sluice.jwt.keys),
-- as an app that verifies on every request would keep them.
local sluice = require "sluice"

sluice.config{ limits = { instruction_budget = 1e12, script_timeout = 60 } }

local clock = os.clock

sluice.route("POST", "/bench", function(req)
  local a = sluice.json.decode(req.body)
  local n = tonumber(req.query.n) or 10000
  local keys = assert(sluice.jwt.keys(a.keys))
  local verify, token, opts = sluice.jwt.verify, a.token, { leeway = 0 }
  assert(verify(token, keys, opts))
  local t0 = clock()
  for _ = 1, n do verify(token, keys, opts) end
  local secs = clock() - t0
  return sluice.json(200, { n = n, seconds = secs, per_second = n / secs })
end)

sluice.route("GET", "/ready", function() return 200, "ok" end)
