// Builds the dashboard into dist/: src/main.ts (+ @tonconnect/sdk) bundled by esbuild into
// app.js, src/style.css into app.css, and public/ copied. No CDN: everything the page loads
// comes from the gateway. `node build.mjs --watch` rebuilds on change.
import { build, context } from 'esbuild';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const dist = `${here}dist`;
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
cpSync(`${here}public`, dist, { recursive: true });

const options = {
  entryPoints: { app: `${here}src/main.ts`, style: `${here}src/style.css` },
  outdir: dist,
  bundle: true,
  format: 'iife',
  target: 'es2020',
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  logLevel: 'info',
};
if (process.argv.includes('--watch')) {
  await (await context(options)).watch();
} else {
  await build(options);
}
