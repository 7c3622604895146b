// clients/js stays small: minified by esbuild and gzipped it must fit in
// 5 KB (issue 30), and it must load as an ES module with no dependency.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { buildSync } from 'esbuild';
import { SOURCE_DIR } from './lib.mjs';

const entry = path.join(SOURCE_DIR, 'clients', 'js', 'sluice.js');

test('clients/js: at most 5 KB minified and gzipped', () => {
  const out = buildSync({ entryPoints: [entry], bundle: true, minify: true, format: 'esm', write: false });
  const min = out.outputFiles[0].contents;
  const gz = gzipSync(min, { level: 9 }).length;
  console.log(`clients/js/sluice.js: ${min.length} bytes minified, ${gz} gzipped`);
  assert.ok(gz <= 5120, `${gz} bytes gzipped`);
});

test('clients/js: no imports, declarations for every export', async () => {
  const src = fs.readFileSync(entry, 'utf8');
  assert.doesNotMatch(src, /^\s*import\s/m);
  const mod = await import(entry);
  const dts = fs.readFileSync(path.join(SOURCE_DIR, 'clients', 'js', 'index.d.ts'), 'utf8');
  for (const name of Object.keys(mod)) {
    if (name === 'default') continue;
    assert.match(dts, new RegExp(`export (declare )?class ${name}\\b`), `index.d.ts declares ${name}`);
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(SOURCE_DIR, 'clients', 'js', 'package.json'), 'utf8'));
  assert.equal(pkg.type, 'module');
  assert.deepEqual(Object.keys(pkg.dependencies || {}), []);
});
