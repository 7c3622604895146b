-- Test app for the browser test: the default app's routes (loaded from
-- scripts/default.lua) plus GET /page, an HTML page served by sluice itself
-- (so the page, its WebSocket and its EventSource share one origin) whose
-- script opens `new WebSocket(...)` and `new EventSource(...)` on the topic
-- named in ?topic= and records everything it receives in window.received
-- for the test to read.  ?resume=ID resumes the EventSource (browsers
-- cannot set Last-Event-ID on a first connection: ?last_event_id=);
-- ?format=json asks the WebSocket for JSON envelopes.
local sluice = require "sluice"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../../../scripts/default.lua")

local page = [[<!doctype html>
<html><head><meta charset="utf-8"><title>sluice browser test</title></head>
<body><p id="status">starting</p>
<script>
"use strict";
const q = new URLSearchParams(location.search);
const topic = q.get("topic");
const r = window.received = {
  wsOpen: false, wsClose: null, ws: [], wsBinary: [],
  sseOpens: 0, sseErrors: 0, sse: [], named: [], base64: [], gaps: []
};
const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
const wsUrl = wsScheme + "//" + location.host + "/topics/" + topic +
  (q.get("format") ? "?format=" + q.get("format") : "");
const ws = new WebSocket(wsUrl);
ws.binaryType = "arraybuffer";
ws.onopen = () => { r.wsOpen = true; };
ws.onclose = (e) => { r.wsClose = { code: e.code, reason: e.reason }; };
ws.onmessage = (e) => {
  if (typeof e.data === "string") r.ws.push(e.data);
  else r.wsBinary.push(Array.from(new Uint8Array(e.data)));
};
window.wsSend = (s) => ws.send(s);
window.wsSendBytes = (a) => ws.send(new Uint8Array(a));

const esUrl = "/topics/" + topic +
  (q.get("resume") ? "?last_event_id=" + encodeURIComponent(q.get("resume")) : "");
const es = new EventSource(esUrl);
es.onopen = () => { r.sseOpens++; };
es.onerror = () => { r.sseErrors++; };
es.onmessage = (e) => { r.sse.push({ data: e.data, id: e.lastEventId }); };
es.addEventListener("news", (e) => { r.named.push({ data: e.data, id: e.lastEventId }); });
es.addEventListener("message.base64", (e) => {
  r.base64.push(Array.from(atob(e.data), (c) => c.charCodeAt(0)));
});
es.addEventListener("sluice.gap", (e) => { r.gaps.push(JSON.parse(e.data)); });
document.getElementById("status").textContent = "running";
</script></body></html>
]]

sluice.route("GET", "/page", function(req)
  return 200, page, { ["content-type"] = "text/html; charset=utf-8" }
end)
