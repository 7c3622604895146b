// nginx.mjs: a real nginx (Debian's nginx-light) in front of sluice, on a
// kernel-picked loopback port, with a config generated per test.  Modes:
//   'readme'          the configuration README.md gives ("Behind nginx"),
//                     read from README.md itself, ports filled in
//   'recommended'     the same location block, for other tests
//   'no-upgrade'      a proxy that refuses the WebSocket Upgrade (403)
//   'buffer-sse'      no Upgrade either, and it buffers responses whatever
//                     the upstream says (X-Accel-Buffering ignored): an
//                     SSE stream never reaches the client in time
// Every process started here is killed in cleanup.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SOURCE_DIR, tmpdir, waitFor } from './lib.mjs';

export const NGINX = process.env.SLUICE_NGINX || '/usr/sbin/nginx';

export function haveNginx() {
  return fs.existsSync(NGINX);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// The location block of README.md's "Behind nginx", with the upstream port.
export function recommendedLocation(upstream) {
  return `
    location / {
        proxy_pass http://127.0.0.1:${upstream};
        proxy_http_version 1.1;
        # WebSocket: pass the Upgrade on.
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        # SSE and long-polls: no buffering, long reads.
        proxy_buffering off;
        proxy_cache off;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
    }`;
}

// README.md's nginx block (map and server), with our ports.
export function readmeBlock(port, upstream) {
  const readme = fs.readFileSync(path.join(SOURCE_DIR, 'README.md'), 'utf8');
  const m = /```nginx\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error('README.md has no nginx block');
  return m[1].replace('listen 80;', `listen 127.0.0.1:${port};`)
    .replace('http://127.0.0.1:8080', `http://127.0.0.1:${upstream}`);
}

function config(dir, port, upstream, mode) {
  let loc;
  if (mode === 'recommended' || mode === 'readme') {
    loc = recommendedLocation(upstream);
  } else {
    const buffer = mode === 'buffer-sse';
    loc = `
    location / {
        if ($http_upgrade != "") { return 403; }
        proxy_pass http://127.0.0.1:${upstream};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering ${buffer ? 'on' : 'off'};
        ${buffer ? 'proxy_ignore_headers X-Accel-Buffering; proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;' : ''}
        proxy_read_timeout 1h;
    }`;
  }
  return `
worker_processes 1;
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
${process.getuid && process.getuid() === 0 ? 'user root;' : ''}
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    ${mode === 'readme' ? readmeBlock(port, upstream) : `
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }
    server {
        listen 127.0.0.1:${port};
        ${loc}
    }`}
}
`;
}

export class Nginx {
  static async start(t, upstream, mode = 'recommended') {
    const n = new Nginx();
    n.dir = tmpdir(t);
    n.port = await freePort();
    n.conf = path.join(n.dir, 'nginx.conf');
    fs.writeFileSync(n.conf, config(n.dir, n.port, upstream, mode));
    const check = spawnSync(NGINX, ['-t', '-p', n.dir, '-c', n.conf], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`nginx -t failed:\n${check.stderr}`);
    n.proc = spawn(NGINX, ['-p', n.dir, '-c', n.conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    n.stderr = '';
    n.proc.stderr.on('data', (d) => { n.stderr += d; });
    n.exited = new Promise((resolve) => n.proc.on('exit', resolve));
    t.after(() => n.stop());
    await waitFor(() => new Promise((resolve) => {
      const s = net.connect(n.port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    }), 10000, 'nginx to listen');
    return n;
  }

  url(p = '/') {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}
