// size.mjs: the client minified (esbuild) and gzipped, in bytes; exits 1
// over the budget of 5 KB (5120 bytes).  `npm run size`.
import { buildSync } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const BUDGET = 5120;
const entry = fileURLToPath(new URL('./sluice.js', import.meta.url));
const out = buildSync({ entryPoints: [entry], bundle: true, minify: true, format: 'esm', write: false });
const min = out.outputFiles[0].contents;
const gz = gzipSync(min, { level: 9 }).length;
console.log(JSON.stringify({ minified: min.length, gzipped: gz, budget: BUDGET }));
process.exit(gz <= BUDGET ? 0 : 1);
