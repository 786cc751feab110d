// Records the policy registry's get-methods (contracts/registry.tolk) in the shape of
// toncenter's v3 `runGetMethod` answer, so that the Rust reader (`ton::registry`) is tested
// on what the contract really returns:
//
//   {"gas_used": N, "exit_code": 0, "stack": [{"type": "num", "value": "0x10"},
//                                             {"type": "cell", "value": "<base64 BOC>"}]}
//
// Stack entries as toncenter/ton-indexer's `DecodeStackEntry` renders them: numbers with
// Go's `%#x` (0x.., -0x.., lowercase), cells and slices as base64 BOC with CRC32C.
//
// The registry is deployed in @ton/sandbox, owned by the service wallet of tonlib-core's test
// mnemonic (the one ton/tests/sandbox_fixtures.rs and make-fixtures.js use; its messages are
// sent straight from that address), and gets a fixed, varied set of updates: 2 TDX images
// (one with RTMR3 = any), 3 SNP measurements, 3 model digests under 2 model ids, a driver
// and a VBIOS version, golden measurements at indices 2 and 3 of different lengths, a
// gateway and a router endpoint, non-default Params, then the removal of one SNP
// measurement (so the version, 16, is not just the number of items).
//
// Usage: node make-registry-fixtures.js OUT_DIR  (writes OUT_DIR/policy.json). The output is
// deterministic; scripts/ton-tests regenerates it and compares it with
// ton/tests/fixtures/registry/policy.json.

import { mkdirSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';

import { Blockchain, internal } from '@ton/sandbox';
import { toNano } from '@ton/core';
import { mnemonicToPrivateKey } from '@ton/crypto';
import { WalletContractV5R1 } from '@ton/ton';

import {
  KIND,
  addItemBody,
  endpointItem,
  goldenItem,
  itemKey,
  modelItem,
  paramsCell,
  policyJson,
  registryInit,
  removeItemBody,
  setParamsBody,
  snpItem,
  tdxItem,
  textItem,
  toncenterStack,
} from './registry-lib.js';

// tonlib-core's test mnemonic (as in make-fixtures.js and ton/tests/sandbox_fixtures.rs).
const WORDS =
  'section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug';
const NOW = 1_700_000_000;

/** n deterministic bytes named by `tag`. */
function fake(tag, n) {
  let out = Buffer.alloc(0);
  for (let i = 0; out.length < n; i++) out = Buffer.concat([out, createHash('sha256').update(`registry/${tag}/${i}`).digest()]);
  return out.subarray(0, n);
}

export const PARAMS = {
  prices: { prompt: 100_000_000n, cached_prompt: 25_000_000n, completion: 400_000_000n, reasoning: 500_000_000n },
  max_coefficient: 4000,
  fee_bps: 500,
  gpu_require: 1,
  architectures: 0b1, // hopper
  protection_modes: 0b101, // spt + ppcie
};

const removed = snpItem(fake('snp-c', 48));

export const UPDATES = [
  addItemBody(KIND.tdx, tdxItem({ mrtd: fake('mrtd-a', 48), rtmr: [fake('a0', 48), fake('a1', 48), fake('a2', 48), fake('a3', 48)] }), 1),
  addItemBody(KIND.tdx, tdxItem({ mrtd: fake('mrtd-b', 48), rtmr: [fake('b0', 48), fake('b1', 48), fake('b2', 48), null] }), 2),
  addItemBody(KIND.snp, snpItem(fake('snp-a', 48)), 3),
  addItemBody(KIND.snp, snpItem(fake('snp-b', 48)), 4),
  addItemBody(KIND.snp, removed, 5),
  addItemBody(KIND.model, modelItem('Qwen/Qwen3-8B', fake('qwen-1', 32)), 6),
  addItemBody(KIND.model, modelItem('Qwen/Qwen3-8B', fake('qwen-2', 32)), 7),
  addItemBody(KIND.model, modelItem('meta-llama/Llama-3.1-8B-Instruct', fake('llama', 32)), 8),
  addItemBody(KIND.driver, textItem('570.133.20'), 9),
  addItemBody(KIND.vbios, textItem('96.00.9F.00.04'), 10),
  addItemBody(KIND.golden, goldenItem(2, fake('golden-2', 48)), 11),
  addItemBody(KIND.golden, goldenItem(3, fake('golden-3', 32)), 12),
  addItemBody(KIND.endpoint, endpointItem('gateway', 'https://gateway.cocoon.example:8443', fake('tls-gateway', 32)), 13),
  addItemBody(KIND.endpoint, endpointItem('router', 'https://router.cocoon.example:9443', fake('tls-router', 32)), 14),
  setParamsBody(paramsCell(PARAMS), 15),
  removeItemBody(KIND.snp, itemKey(removed), 16),
];

/** A get-method's answer as toncenter's v3 runGetMethod gives it. */
async function response(blockchain, address, method, args = []) {
  const r = await blockchain.runGetMethod(address, method, args);
  return { gas_used: Number(r.gasUsed), exit_code: r.exitCode, stack: toncenterStack(r.stack) };
}

export async function makePolicy() {
  const blockchain = await Blockchain.create();
  blockchain.now = NOW;
  const kp = await mnemonicToPrivateKey(WORDS.split(' '));
  const owner = WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey }).address;
  const { init, address } = await registryInit(owner);
  const funder = await blockchain.treasury('funder');
  await funder.send({ to: address, value: toNano('10'), init, bounce: false });
  for (const body of UPDATES) {
    const res = await blockchain.sendMessage(internal({ from: owner, to: address, value: toNano('0.1'), body }));
    const c = res.transactions[0].description.computePhase;
    if (c.type !== 'vm' || c.exitCode !== 0) throw new Error(`update ${body.hash().toString('hex')} failed: ${c.exitCode}`);
  }

  const responses = {
    get_registry_policy: await response(blockchain, address, 'get_registry_policy'),
    get_registry_version: await response(blockchain, address, 'get_registry_version'),
    get_registry_owner: await response(blockchain, address, 'get_registry_owner'),
    get_registry_params: await response(blockchain, address, 'get_registry_params'),
    get_registry_list: {},
  };
  for (let kind = 1; kind <= 7; kind++) {
    responses.get_registry_list[kind] = await response(blockchain, address, 'get_registry_list', [{ type: 'int', value: BigInt(kind) }]);
  }
  const r = await blockchain.runGetMethod(address, 'get_registry_policy');
  const version = Number(r.stackReader.readBigNumber());
  if (version !== UPDATES.length) throw new Error(`version ${version}`);
  return {
    address: `${address.workChain}:${address.hash.toString('hex').toUpperCase()}`,
    note:
      'made by tests/ton/make-registry-fixtures.js: contracts/registry.tolk (contracts/build) deployed in @ton/sandbox, ' +
      "owned by the v5r1 wallet of tonlib-core's test mnemonic, after 16 updates (15 adds or set_params, then one remove); " +
      "responses in toncenter v3 runGetMethod's shape",
    responses,
    expected_policy: policyJson(version, r.stackReader.readCell(), owner),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node make-registry-fixtures.js OUT_DIR');
    process.exit(2);
  }
  const policy = await makePolicy();
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'policy.json'), JSON.stringify(policy, null, 2) + '\n');
  console.error(`wrote ${join(dir, 'policy.json')} (version ${policy.expected_policy.version})`);
}
