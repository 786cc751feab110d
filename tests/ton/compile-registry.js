// Compiles contracts/registry.tolk with @ton/tolk-js (the version pinned in package.json)
// and writes what the Rust side embeds (`include_str!`):
//   OUT_DIR/registry.code.boc.b64  the code cell as one line of base64 BOC (no index, no CRC)
//   OUT_DIR/registry.code.hash     the code cell's representation hash, lowercase hex
// (both without a trailing newline, so that `include_str!` gives exactly the value)
// Usage: node compile-registry.js OUT_DIR. The committed copies live in contracts/build/;
// scripts/ton-tests compiles into a temporary directory and diffs against them.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { compileRegistry } from './registry-lib.js';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node compile-registry.js OUT_DIR');
  process.exit(2);
}
const { boc64, hashHex, tolkVersion } = await compileRegistry();
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'registry.code.boc.b64'), boc64);
writeFileSync(join(dir, 'registry.code.hash'), hashHex);
console.error(`tolk ${tolkVersion}: registry code ${hashHex} (${boc64.length} base64 chars) -> ${dir}`);
