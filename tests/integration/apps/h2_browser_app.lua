-- Test app for test_h2_browser.mjs: the default app plus GET /many, a page
-- whose script opens ?n= EventSources (topics T.0 .. T.n-1, T from ?topic=)
-- and one WebSocket (topic T.ws) to its own origin, and records in
-- window.received which of them opened and what each got.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

local page = [[<!doctype html>
<html><head><meta charset="utf-8"><title>many streams</title></head>
<body><p id="status">starting</p>
<script>
"use strict";
const q = new URLSearchParams(location.search);
const topic = q.get("topic"), n = Number(q.get("n"));
const r = window.received = { opened: [], got: [], wsOpen: false, ws: [],
  protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol };
for (let i = 0; i < n; i++) {
  r.got.push([]);
  const es = new EventSource("/topics/" + topic + "." + i);
  es.onopen = () => { if (!r.opened.includes(i)) r.opened.push(i); };
  es.onmessage = (e) => { r.got[i].push(e.data); };
}
const ws = new WebSocket((location.protocol === "https:" ? "wss:" : "ws:") + "//" +
  location.host + "/topics/" + topic + ".ws");
ws.onopen = () => { r.wsOpen = true; };
ws.onmessage = (e) => { r.ws.push(e.data); };
document.getElementById("status").textContent = "running";
</script></body></html>
]]

sluice.route("GET", "/many", function(req)
    return 200, page, { ["Content-Type"] = "text/html; charset=utf-8" }
end)
