// dashboard.js: the admin dashboard's script.  It follows the admin
// listener's stats stream (/api/events, Server-Sent Events) through the JS
// client (clients/js, served as /sluice.js), computes rates from
// consecutive snapshots, and draws them on two canvases: no library.
import { Sluice } from './sluice.js';

const WINDOW = 300; // seconds shown
const $ = (id) => document.getElementById(id);
const fmt = (n) => (n == null ? '–' : n >= 1e6 ? (n / 1e6).toFixed(1) + 'M' : n >= 1e4 ? (n / 1e3).toFixed(1) + 'k' : String(Math.round(n * 10) / 10));
const bytes = (n) => (n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + ' GiB' : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB' : (n / 1024).toFixed(0) + ' KiB');

// Points: {t, pub, del, ws, sse, lp} with rates per second.
const points = [];
let last = null;      // the previous snapshot
let lastTopics = {};  // topic -> messages at the previous snapshot

function set(id, v) {
  const el = $(id);
  if (el && el.textContent !== String(v)) el.textContent = v;
}

function addPoint(t, published, delivered, c) {
  if (last && t > last.t) {
    const dt = t - last.t;
    points.push({ t, pub: Math.max(0, (published - last.published) / dt), del: Math.max(0, (delivered - last.delivered) / dt),
      ws: c.websocket, sse: c.sse, lp: c.longpoll });
    while (points.length && points[0].t < t - WINDOW) points.shift();
  }
  last = { t, published, delivered };
}

function row(tbody, cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.append(c); else td.textContent = c;
    tr.append(td);
  }
  tbody.append(tr);
}

function onStats(s) {
  const prev = last;
  addPoint(s.time, s.published, s.delivered, s.connections);
  const p = points[points.length - 1];
  const c = s.connections;
  set('conn-total', c.total);
  set('conn-websocket', c.websocket);
  set('conn-sse', c.sse);
  set('conn-longpoll', c.longpoll);
  set('conn-http', c.http);
  set('published', fmt(s.published));
  set('delivered', fmt(s.delivered));
  set('publish-failures', s.publish_failures);
  set('subscriptions', s.subscriptions);
  set('pub-rate', p ? fmt(p.pub) : '–');
  set('del-rate', p ? fmt(p.del) : '–');
  const k = s.cutoffs;
  set('cutoffs', k.slow_websocket + k.slow_sse + k.publish_refused);
  set('cut-ws', k.slow_websocket);
  set('cut-sse', k.slow_sse);
  set('cut-refused', k.publish_refused);
  set('updated', 'updated ' + new Date(s.time * 1000).toLocaleTimeString());

  const dt = prev ? s.time - prev.t : 0;
  const tb = $('topics').tBodies[0];
  tb.replaceChildren();
  const seen = {};
  for (const t of s.busiest) {
    const before = lastTopics[t.topic];
    const rate = dt > 0 && before != null ? Math.max(0, (t.messages - before) / dt) : null;
    row(tb, [t.topic, t.subscribers, fmt(rate), fmt(t.messages)]);
    seen[t.topic] = t.messages;
  }
  lastTopics = seen;

  const st = s.storage, sb = $('storage').tBodies[0];
  sb.replaceChildren();
  for (const [name, v] of [['mode', st.relaxed ? 'relaxed' : 'durable'], ['data file', bytes(st.file_bytes)],
    ['messages retained', fmt(st.messages)], ['topics stored', fmt(st.topics)], ['awaiting checkpoint', fmt(st.log_messages)],
    ['commits', fmt(st.commits)], ['checkpoint failures', st.checkpoint_failures], ['damaged', st.damaged]]) row(sb, [name, v]);
  if (s.cluster) {
    row(sb, ['cluster (NATS)', s.cluster.connected ? 'connected' : 'NOT CONNECTED']);
    const js = s.cluster.stream;
    row(sb, ['stream', js ? `${fmt(js.messages)} messages, ${bytes(js.bytes)}, ${fmt(js.topics)} topics` : 'no answer']);
    if (s.cluster.diverged) row(sb, ['copy of the stream', 'DISAGREES with the leader: restart this node']);
    row(sb, ['awaiting PubAck', fmt(s.cluster.inflight)]);
    row(sb, ['reconnects', s.cluster.reconnects]);
  }
  const wb = $('workers').tBodies[0];
  wb.replaceChildren();
  for (const w of s.workers) row(wb, [w.id + (w.answered ? '' : ' (no answer)'), w.connections, fmt(w.published), fmt(w.delivered)]);
  draw();
}

function chart(canvas, series) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, pad = 28;
  ctx.clearRect(0, 0, W, H);
  const now = points.length ? points[points.length - 1].t : 0;
  let max = 1;
  for (const p of points) for (const [key] of series) max = Math.max(max, p[key]);
  ctx.strokeStyle = '#263241';
  ctx.fillStyle = '#7b8794';
  ctx.font = '11px system-ui';
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (H - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(W, y); ctx.stroke();
    ctx.fillText(fmt(max * (4 - i) / 4), 0, y + 4);
  }
  for (const [key, color] of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = pad + (W - pad) * (1 - (now - p.t) / WINDOW);
      const y = pad / 2 + (H - pad) * (1 - p[key] / max);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
}

function draw() {
  const css = getComputedStyle(document.documentElement);
  const v = (n) => css.getPropertyValue(n).trim();
  chart($('rates'), [['pub', v('--pub')], ['del', v('--del')]]);
  chart($('conns'), [['ws', v('--ws')], ['sse', v('--sse')], ['lp', v('--lp')]]);
}

async function loadConnections() {
  const tb = $('connections').tBodies[0];
  const res = await fetch('api/connections?limit=100', { cache: 'no-store' });
  if (!res.ok) return;
  const { connections } = await res.json();
  tb.replaceChildren();
  for (const c of connections) {
    const b = document.createElement('button');
    b.textContent = 'close';
    b.onclick = async () => {
      await fetch('api/connections/' + encodeURIComponent(c.id) + '/close', { method: 'POST' });
      loadConnections();
    };
    row(tb, [c.id, c.transport, c.address, c.topics.join(' '), c.age, b]);
  }
}

const client = new Sluice(location.origin);
const sub = client.subscribe('stats', { url: '/api/events', transports: ['sse'], backoff: { min: 500, max: 5000 } });
sub.on('open', () => { set('link', 'live'); $('link').className = 'state on'; });
sub.on('error', () => { set('link', 'reconnecting'); $('link').className = 'state off'; });
sub.on('message', (m) => {
  let o;
  try { o = JSON.parse(m.data); } catch { return; }
  if (m.event === 'history') {
    points.length = 0;
    last = null;
    for (const [t, pub, del, conns] of o.history) addPoint(t, pub, del, { websocket: 0, sse: 0, longpoll: 0, total: conns });
    draw();
  } else if (m.event === 'stats') {
    onStats(o);
  }
});
$('refresh').onclick = loadConnections;
loadConnections();
setInterval(loadConnections, 5000);
