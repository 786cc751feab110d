// The policy registry (contracts/registry.tolk) on @ton/sandbox, against contracts/README.md:
// the owner's updates and what the get-methods return, refusals with their exit codes (and
// that a refused update changes nothing), one `policy_changed` per accepted update, the
// owner hand-over, gas and storage with 100 TDX images + 100 SNP measurements + 100 models
// (printed as `GAS ...` lines), the committed build and get-method fixture
// (contracts/build/, ton/tests/fixtures/registry/policy.json), and the owner messages the
// Rust side builds ($TON_SANDBOX_OUT/registry.json, written by
// `cargo test -p ton --test sandbox_fixtures`; skipped when absent).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Blockchain, internal } from '@ton/sandbox';
import { Address, Cell, Dictionary, beginCell, loadMessage, toNano } from '@ton/core';
import { mnemonicToPrivateKey } from '@ton/crypto';
import { WalletContractV5R1 } from '@ton/ton';

import { makePolicy } from './make-registry-fixtures.js';
import {
  ERR,
  KIND,
  OP,
  addItemBody,
  committedBuild,
  compileRegistry,
  decodeItem,
  endpointItem,
  goldenItem,
  itemKey,
  listEntries,
  modelItem,
  paramsCell,
  parsePolicyCell,
  policyJson,
  parsePolicyChanged,
  readPolicy,
  registryInit,
  removeItemBody,
  setOwnerBody,
  setParamsBody,
  snpItem,
  tdxItem,
  textItem,
} from './registry-lib.js';

const NOW = 1_700_000_000;
const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ton', 'tests', 'fixtures', 'registry');

/** n deterministic bytes named by `tag`. */
function fake(tag, n) {
  let out = Buffer.alloc(0);
  for (let i = 0; out.length < n; i++) out = Buffer.concat([out, createHash('sha256').update(`${tag}/${i}`).digest()]);
  return out.subarray(0, n);
}

const PARAMS = {
  prices: { prompt: 1_000_000n, cached_prompt: 250_000n, completion: 3_000_000n, reasoning: 4_000_000n },
  max_coefficient: 4000,
  fee_bps: 500,
  gpu_require: 1,
  architectures: 1,
  protection_modes: 0b101,
};

/** A fresh chain with a deployed registry owned by the `owner` treasury's address. */
async function setup(params = paramsCell()) {
  const blockchain = await Blockchain.create();
  blockchain.now = NOW;
  const owner = (await blockchain.treasury('owner')).address;
  const stranger = (await blockchain.treasury('stranger')).address;
  const { init, address } = await registryInit(owner, params);
  const funder = await blockchain.treasury('funder');
  await funder.send({ to: address, value: toNano('100'), init, bounce: false });
  const acc = await blockchain.getContract(address);
  assert.equal(acc.accountState?.type, 'active');
  // ctx.version: the version the accepted updates so far must have brought it to.
  return { blockchain, owner, stranger, registry: address, version: 0 };
}

async function get(ctx, method, args = []) {
  const r = await ctx.blockchain.runGetMethod(ctx.registry, method, args);
  assert.equal(r.exitCode, 0, `${method} exit code`);
  return r;
}

const version = async (ctx) => Number((await get(ctx, 'get_registry_version')).stackReader.readBigNumber());

async function dataHash(ctx) {
  const st = (await ctx.blockchain.getContract(ctx.registry)).accountState;
  return st.state.data.hash().toString('hex');
}

/** Sends `body` from `from` to the registry; returns the registry's transaction. */
async function send(ctx, from, body, opts = {}) {
  const res = await ctx.blockchain.sendMessage(
    internal({ from, to: ctx.registry, value: toNano('1'), body, bounce: true, ...opts }),
  );
  const tx = res.transactions.find((t) => t.inMessage?.info.type === 'internal' && t.inMessage.info.dest.equals(ctx.registry));
  assert.ok(tx, 'the registry ran a transaction');
  assert.equal(tx.description.type, 'generic');
  assert.equal(tx.description.computePhase.type, 'vm');
  return tx;
}

const externals = (tx) => [...tx.outMessages.values()].filter((m) => m.info.type === 'external-out');

/** An accepted update: exit 0, version + 1, exactly one policy_changed carrying `body`. */
async function accept(ctx, body, from = ctx.owner, { readBack = true } = {}) {
  const before = ctx.version;
  const tx = await send(ctx, from, body);
  assert.equal(tx.description.computePhase.exitCode, 0, 'accepted');
  assert.equal(tx.description.aborted, false);
  assert.equal(tx.description.actionPhase.success, true);
  assert.equal(tx.outMessagesCount, 1, 'one out-message, the event');
  const [event] = externals(tx);
  assert.ok(event, 'an external out-message');
  assert.equal(event.info.dest, null, 'to addr_none');
  const { version: v, change } = parsePolicyChanged(event.body);
  assert.equal(v, before + 1, 'the event carries the new version');
  assert.equal(change.hash().toString('hex'), body.hash().toString('hex'), 'the event carries the update');
  ctx.version = before + 1;
  if (readBack) assert.equal(await version(ctx), ctx.version, 'version + 1');
  return tx;
}

/** A refused update: the exit code, no event, storage (and so the version) unchanged. */
async function refuse(ctx, body, code, from = ctx.owner, what = '') {
  const before = await dataHash(ctx);
  const tx = await send(ctx, from, body);
  assert.equal(tx.description.computePhase.exitCode, code, `exit code ${what}`);
  assert.equal(tx.description.aborted, true, what);
  assert.equal(externals(tx).length, 0, `no event ${what}`);
  assert.equal(await dataHash(ctx), before, `storage unchanged ${what}`);
  assert.equal(await version(ctx), ctx.version, `version unchanged ${what}`);
  return tx;
}

/** get_registry_list(kind) as [{ key, item }]. */
async function list(ctx, kind) {
  const r = await get(ctx, 'get_registry_list', [{ type: 'int', value: BigInt(kind) }]);
  return listEntries(r.stackReader.readCell());
}

const hashes = (cells) => cells.map((c) => c.hash().toString('hex')).sort();

function samples() {
  return {
    [KIND.tdx]: [
      tdxItem({ mrtd: fake('mrtd-a', 48), rtmr: [fake('r0a', 48), fake('r1a', 48), fake('r2a', 48), fake('r3a', 48)] }),
      tdxItem({ mrtd: fake('mrtd-b', 48), rtmr: [null, fake('r1b', 48), null, null] }),
    ],
    [KIND.snp]: [snpItem(fake('snp-a', 48)), snpItem(fake('snp-b', 48))],
    [KIND.model]: [
      modelItem('Qwen/Qwen3-8B', fake('w1', 32)),
      modelItem('Qwen/Qwen3-8B', fake('w2', 32)),
      modelItem('m'.repeat(94), fake('w3', 32)),
    ],
    [KIND.driver]: [textItem('570.133.20'), textItem('d'.repeat(64))],
    [KIND.vbios]: [textItem('96.00.9F.00.04')],
    [KIND.golden]: [goldenItem(2, fake('g2', 48)), goldenItem(3, fake('g3', 32)), goldenItem(3, fake('g3b', 64))],
    [KIND.endpoint]: [
      endpointItem('gateway', 'https://gateway.example:8443', fake('tls-g', 32)),
      endpointItem('router', 'h'.repeat(93), fake('tls-r', 32)),
    ],
  };
}

test('the committed build is what @ton/tolk-js compiles from contracts/registry.tolk', async () => {
  const { boc64, hashHex } = await compileRegistry();
  const built = committedBuild();
  assert.equal(built.boc64, boc64, 'regenerate: (cd tests/ton && node compile-registry.js ../../contracts/build)');
  assert.equal(built.hashHex, hashHex);
  assert.equal(Cell.fromBase64(built.boc64).hash().toString('hex'), built.hashHex);
});

test('the owner adds and removes items of every kind and sets params; the get-methods return them', async () => {
  const ctx = await setup();
  assert.equal(await version(ctx), 0);
  const owner = (await get(ctx, 'get_registry_owner')).stackReader.readAddress();
  assert.ok(owner.equals(ctx.owner));
  // Nothing yet: every list is one bit 0 (an empty Maybe ^Cell), never null.
  for (const kind of [0, 1, 7, 8, 255, 256, -1]) {
    const cell = (await get(ctx, 'get_registry_list', [{ type: 'int', value: BigInt(kind) }])).stackReader.readCell();
    assert.equal(cell.bits.length, 1, `kind ${kind}`);
    assert.equal(cell.beginParse().loadBit(), false);
    assert.equal(cell.refs.length, 0);
  }

  const items = samples();
  let n = 0;
  for (const [kind, cells] of Object.entries(items)) {
    for (const item of cells) {
      await accept(ctx, addItemBody(Number(kind), item, ++n));
    }
  }
  assert.equal(await version(ctx), n);
  for (const [kind, cells] of Object.entries(items)) {
    const got = await list(ctx, Number(kind));
    assert.deepEqual(hashes(got.map((e) => e.item)), hashes(cells), `kind ${kind}`);
    for (const e of got) assert.equal(e.key, itemKey(e.item), 'key = the item cell hash');
    assert.deepEqual(
      got.map((e) => JSON.stringify(decodeItem(Number(kind), e.item))).sort(),
      cells.map((c) => JSON.stringify(decodeItem(Number(kind), c))).sort(),
    );
  }

  // Params.
  const params = paramsCell(PARAMS);
  await accept(ctx, setParamsBody(params, 77));
  const gotParams = (await get(ctx, 'get_registry_params')).stackReader.readCell();
  assert.equal(gotParams.hash().toString('hex'), params.hash().toString('hex'));

  // The whole policy, read at once, is the same lists and params.
  const pol = await get(ctx, 'get_registry_policy');
  assert.equal(Number(pol.stackReader.readBigNumber()), n + 1);
  const { params: pp, lists } = parsePolicyCell(pol.stackReader.readCell());
  assert.equal(pp.hash().toString('hex'), params.hash().toString('hex'));
  assert.deepEqual([...lists.keys()].sort(), [1, 2, 3, 4, 5, 6, 7]);
  const json = await readPolicy(ctx.blockchain, ctx.registry);
  assert.deepEqual(json, {
    version: n + 1,
    owner: ctx.owner.toRawString(),
    prices: { prompt: 1_000_000, cached_prompt: 250_000, completion: 3_000_000, reasoning: 4_000_000 },
    max_price_coefficient: 4000,
    fee_bps: 500,
    gpu: {
      require: true,
      allowed_architectures: ['hopper'],
      allowed_protection_modes: ['spt', 'ppcie'],
      allowed_driver_versions: ['570.133.20', 'd'.repeat(64)].sort(),
      allowed_vbios_versions: ['96.00.9F.00.04'],
      measurements: [
        { index: 2, allowed: [fake('g2', 48).toString('hex')] },
        { index: 3, allowed: [fake('g3', 32).toString('hex'), fake('g3b', 64).toString('hex')].sort() },
      ],
    },
    tdx: [
      {
        mrtd: fake('mrtd-a', 48).toString('hex'),
        rtmr0: fake('r0a', 48).toString('hex'),
        rtmr1: fake('r1a', 48).toString('hex'),
        rtmr2: fake('r2a', 48).toString('hex'),
        rtmr3: fake('r3a', 48).toString('hex'),
      },
      { mrtd: fake('mrtd-b', 48).toString('hex'), rtmr0: 'any', rtmr1: fake('r1b', 48).toString('hex'), rtmr2: 'any', rtmr3: 'any' },
    ].sort((a, b) => (a.mrtd < b.mrtd ? -1 : 1)),
    snp: [fake('snp-a', 48).toString('hex'), fake('snp-b', 48).toString('hex')].sort(),
    models: {
      'Qwen/Qwen3-8B': [fake('w1', 32).toString('hex'), fake('w2', 32).toString('hex')].sort(),
      ['m'.repeat(94)]: [fake('w3', 32).toString('hex')],
    },
    endpoints: [
      { role: 'gateway', url: 'https://gateway.example:8443', tls_sha256: fake('tls-g', 32).toString('hex') },
      { role: 'router', url: 'h'.repeat(93), tls_sha256: fake('tls-r', 32).toString('hex') },
    ],
  });

  // Remove everything, kind by kind: an emptied kind leaves `lists` and reads as one bit 0.
  for (const [kind, cells] of Object.entries(items)) {
    for (const [i, item] of cells.entries()) {
      await accept(ctx, removeItemBody(Number(kind), itemKey(item)));
      const left = await list(ctx, Number(kind));
      assert.deepEqual(hashes(left.map((e) => e.item)), hashes(cells.slice(i + 1)));
    }
    const polNow = (await get(ctx, 'get_registry_policy')).stackReader;
    polNow.readBigNumber();
    const { lists: now } = parsePolicyCell(polNow.readCell());
    assert.equal(now.has(Number(kind)), false, `kind ${kind} is absent once empty`);
  }
  const end = await get(ctx, 'get_registry_policy');
  assert.equal(Number(end.stackReader.readBigNumber()), 2 * n + 1);
  const last = parsePolicyCell(end.stackReader.readCell());
  assert.equal(last.lists.size, 0);
  assert.equal(last.params.hash().toString('hex'), params.hash().toString('hex'));
  // And a removed item can come back.
  await accept(ctx, addItemBody(KIND.snp, items[KIND.snp][0]));
});

test("a stranger's update is refused with 401 and changes nothing", async () => {
  const ctx = await setup();
  const item = snpItem(fake('snp', 48));
  await accept(ctx, addItemBody(KIND.snp, item));
  const bodies = {
    add_item: addItemBody(KIND.snp, snpItem(fake('other', 48))),
    remove_item: removeItemBody(KIND.snp, itemKey(item)),
    set_params: setParamsBody(paramsCell(PARAMS)),
    set_owner: setOwnerBody(ctx.stranger),
    'unknown op': beginCell().storeUint(0x52470099, 32).storeUint(0, 64).endCell(),
    'truncated body': beginCell().storeUint(1, 5).endCell(),
  };
  for (const [what, body] of Object.entries(bodies)) {
    await refuse(ctx, body, ERR.notOwner, ctx.stranger, what);
  }
  assert.equal(await version(ctx), 1);
  // The same add from the owner is fine.
  await accept(ctx, bodies.add_item);
});

/** A raw cell: `bits` from a builder callback, then refs. */
function cell(fill, refs = []) {
  const b = beginCell();
  fill(b);
  for (const r of refs) b.storeRef(r);
  return b.endCell();
}
const zeros = (n) => (b) => b.storeUint(0, n);
const pair = (a = fake('p', 96)) => beginCell().storeBuffer(a).endCell();

test('malformed updates are refused with their exit codes; top-ups and bounces change nothing', async () => {
  const ctx = await setup();
  const mrtd = fake('mrtd', 48);
  const tdxRoot = (bits, refs) => cell((b) => b.storeBuffer(mrtd).storeUint(0, 4).storeUint(0, bits), refs);
  const tdxAny = (any, regs) =>
    cell((b) => b.storeBuffer(mrtd).storeUint(any, 4), [
      pair(Buffer.concat([regs[0], regs[1]])),
      pair(Buffer.concat([regs[2], regs[3]])),
    ]);
  const z48 = Buffer.alloc(48);
  const lastBit = Buffer.alloc(48);
  lastBit[47] = 1;
  const short = (len, data, tail = 0) => cell((b) => b.storeUint(len, 8).storeBuffer(data).storeUint(0, tail));

  const malformed = {
    [KIND.tdx]: {
      'mrtd one bit short': cell((b) => b.storeUint(0, 383 + 4), [pair(), pair()]),
      'extra bit': tdxRoot(1, [pair(), pair()]),
      'extra ref': tdxRoot(0, [pair(), pair(), pair()]),
      'missing ref': tdxRoot(0, [pair()]),
      'rtmr pair 767 bits': tdxRoot(0, [pair(), cell(zeros(767))]),
      'rtmr pair 769 bits': tdxRoot(0, [cell(zeros(769)), pair()]),
      'rtmr pair with a ref': tdxRoot(0, [pair(), cell(zeros(768), [cell(zeros(1))])]),
      'any rtmr0 non-zero': tdxAny(0b1000, [fake('x', 48), z48, z48, z48]),
      'any rtmr1 non-zero': tdxAny(0b0100, [z48, lastBit, z48, z48]),
      'any rtmr2 non-zero': tdxAny(0b0010, [z48, z48, fake('y', 48), z48]),
      'any rtmr3 last bit set': tdxAny(0b0001, [z48, z48, z48, lastBit]),
      'empty cell': cell(() => {}),
    },
    [KIND.snp]: {
      'one bit short': cell(zeros(383)),
      'extra bit': cell(zeros(385)),
      'extra ref': cell(zeros(384), [cell(zeros(1))]),
      'empty cell': cell(() => {}),
    },
    [KIND.model]: {
      'len 0': short(0, Buffer.alloc(0), 256),
      'len 95': short(95, Buffer.alloc(94, 0x61), 256), // 95 bytes + a digest cannot fit a cell
      'len says 5, 6 bytes follow': short(5, Buffer.from('abcdef'), 256),
      'digest missing': short(3, Buffer.from('abc')),
      'extra bit': short(3, Buffer.from('abc'), 257),
      'extra ref': cell((b) => b.storeUint(1, 8).storeUint(0x61, 8).storeUint(0, 256), [cell(zeros(1))]),
      'empty cell': cell(() => {}),
    },
    [KIND.driver]: {
      'len 0': short(0, Buffer.alloc(0)),
      'len 65': short(65, Buffer.alloc(65, 0x31)),
      'len says 5, 4 bytes follow': short(5, Buffer.from('1.23')),
      'extra bit': short(3, Buffer.from('1.2'), 1),
      'extra ref': cell((b) => b.storeUint(1, 8).storeUint(0x31, 8), [cell(zeros(1))]),
      'empty cell': cell(() => {}),
    },
    [KIND.vbios]: {
      'len 0': short(0, Buffer.alloc(0)),
      'len 65': short(65, Buffer.alloc(65, 0x31)),
      'extra bit': short(3, Buffer.from('1.2'), 1),
      'extra ref': cell((b) => b.storeUint(1, 8).storeUint(0x31, 8), [cell(zeros(1))]),
    },
    [KIND.golden]: {
      'len 0': cell((b) => b.storeUint(2, 8).storeUint(0, 8)),
      'len 65': cell((b) => b.storeUint(2, 8).storeUint(65, 8).storeBuffer(Buffer.alloc(65, 1))),
      'len says 48, 47 bytes follow': cell((b) => b.storeUint(2, 8).storeUint(48, 8).storeBuffer(Buffer.alloc(47, 1))),
      'extra bit': cell((b) => b.storeUint(2, 8).storeUint(1, 8).storeUint(1, 9)),
      'extra ref': cell((b) => b.storeUint(2, 8).storeUint(1, 8).storeUint(1, 8), [cell(zeros(1))]),
      'index only': cell((b) => b.storeUint(2, 8)),
      'empty cell': cell(() => {}),
    },
    [KIND.endpoint]: {
      'role 2': cell((b) => b.storeUint(2, 8).storeBuffer(fake('t', 32)).storeUint(1, 8).storeUint(0x61, 8)),
      'len 0': cell((b) => b.storeUint(0, 8).storeBuffer(fake('t', 32)).storeUint(0, 8)),
      'len 94': cell((b) => b.storeUint(0, 8).storeBuffer(fake('t', 32)).storeUint(94, 8).storeBuffer(Buffer.alloc(93, 0x61))),
      'extra bit': cell((b) => b.storeUint(0, 8).storeBuffer(fake('t', 32)).storeUint(1, 8).storeUint(0x61, 9)),
      'extra ref': cell((b) => b.storeUint(0, 8).storeBuffer(fake('t', 32)).storeUint(1, 8).storeUint(0x61, 8), [cell(zeros(1))]),
      'fingerprint cut short': cell((b) => b.storeUint(0, 8).storeBuffer(fake('t', 20))),
      'empty cell': cell(() => {}),
    },
  };
  for (const [kind, cases] of Object.entries(malformed)) {
    for (const [what, item] of Object.entries(cases)) {
      await refuse(ctx, addItemBody(Number(kind), item), ERR.malformed, ctx.owner, `kind ${kind}: ${what}`);
    }
  }
  // An exotic cell (a library reference) is no item.
  const lib = new Cell({ exotic: true, bits: cell((b) => b.storeUint(2, 8).storeBuffer(fake('lib', 32))).bits });
  await refuse(ctx, addItemBody(KIND.snp, lib), ERR.malformed, ctx.owner, 'exotic item');

  // The limits themselves are fine.
  await accept(ctx, addItemBody(KIND.model, modelItem('m'.repeat(94), fake('w', 32))));
  await accept(ctx, addItemBody(KIND.driver, textItem('x'.repeat(64))));
  await accept(ctx, addItemBody(KIND.golden, goldenItem(255, fake('g', 64))));
  await accept(ctx, addItemBody(KIND.endpoint, endpointItem(1, 'u'.repeat(93), fake('t', 32))));
  await accept(ctx, addItemBody(KIND.tdx, tdxItem({ mrtd, rtmr: [null, null, null, null] })));

  // Params.
  const p = (over) => paramsCell({ ...PARAMS, ...over });
  const badParams = {
    'fee_bps 10001': p({ fee_bps: 10001 }),
    'max_coefficient 999': p({ max_coefficient: 999 }),
    'extra bit': cell((b) => b.storeSlice(p({}).beginParse()).storeBit(0)),
    'one bit short': cell((b) => b.storeBits(p({}).bits.substring(0, p({}).bits.length - 1))),
    'cut inside a price': cell((b) => b.storeUint(15, 4).storeUint(0, 16)),
    'extra ref': cell((b) => b.storeSlice(p({}).beginParse()), [cell(zeros(1))]),
    empty: cell(() => {}),
  };
  for (const [what, params] of Object.entries(badParams)) {
    await refuse(ctx, setParamsBody(params), ERR.malformed, ctx.owner, `params: ${what}`);
  }
  await accept(ctx, setParamsBody(p({ fee_bps: 10000, max_coefficient: 1000 })));

  // Bodies cut short or too long.
  const item = snpItem(fake('s', 48));
  const head = (op) => beginCell().storeUint(op, 32).storeUint(5, 64);
  const badBodies = {
    'a few bits': cell((b) => b.storeUint(3, 5)),
    'a ref and no bits': cell(() => {}, [item]),
    'op only': cell((b) => b.storeUint(OP.addItem, 32)),
    'add_item: no kind': head(OP.addItem).storeRef(item).endCell(),
    'add_item: no item': head(OP.addItem).storeUint(KIND.snp, 8).endCell(),
    'add_item: two refs': head(OP.addItem).storeUint(KIND.snp, 8).storeRef(item).storeRef(item).endCell(),
    'add_item: extra bits': head(OP.addItem).storeUint(KIND.snp, 8).storeRef(item).storeUint(0, 1).endCell(),
    'remove_item: key cut short': head(OP.removeItem).storeUint(KIND.snp, 8).storeUint(0, 255).endCell(),
    'remove_item: extra bits': head(OP.removeItem).storeUint(KIND.snp, 8).storeUint(0, 257).endCell(),
    'remove_item: extra ref': head(OP.removeItem).storeUint(KIND.snp, 8).storeUint(0, 256).storeRef(item).endCell(),
    'set_params: no params': head(OP.setParams).endCell(),
    'set_params: extra bits': head(OP.setParams).storeUint(0, 8).storeRef(paramsCell(PARAMS)).endCell(),
    'set_owner: address cut short': head(OP.setOwner).storeBits(cell((b) => b.storeAddress(ctx.stranger)).bits.substring(0, 266)).endCell(),
    'set_owner: extra bits': head(OP.setOwner).storeAddress(ctx.stranger).storeUint(0, 1).endCell(),
    'set_owner: addr_none': head(OP.setOwner).storeUint(0, 2).storeUint(0, 265).endCell(),
    'set_owner: addr_extern': head(OP.setOwner).storeUint(1, 2).storeUint(256, 9).storeUint(0, 256).endCell(),
    'set_owner: anycast': head(OP.setOwner).storeUint(0b101, 3).storeUint(0, 5).storeUint(0, 8).storeUint(0, 256).endCell(),
  };
  for (const [what, body] of Object.entries(badBodies)) {
    await refuse(ctx, body, ERR.malformed, ctx.owner, what);
  }

  // Unknown kinds.
  for (const kind of [0, 8, 255]) {
    await refuse(ctx, addItemBody(kind, item), ERR.unknownKind, ctx.owner, `add kind ${kind}`);
    await refuse(ctx, removeItemBody(kind, itemKey(item)), ERR.unknownKind, ctx.owner, `remove kind ${kind}`);
  }
  // Absent and duplicate.
  await refuse(ctx, removeItemBody(KIND.snp, itemKey(item)), ERR.absent, ctx.owner, 'remove from an empty kind');
  await accept(ctx, addItemBody(KIND.snp, item));
  await refuse(ctx, addItemBody(KIND.snp, item, 99), ERR.duplicate, ctx.owner, 'add twice');
  await refuse(ctx, removeItemBody(KIND.snp, itemKey(snpItem(fake('t', 48)))), ERR.absent, ctx.owner, 'remove absent');
  await refuse(ctx, removeItemBody(KIND.model, itemKey(item)), ERR.absent, ctx.owner, 'remove from another kind');
  // Unknown ops, even short ones (a text comment) and the event's own op.
  for (const op of [0, 0x52470000, 0x52470005, OP.policyChanged, 0xffffffff]) {
    await refuse(ctx, head(op).endCell(), ERR.unknownOp, ctx.owner, `op ${op.toString(16)}`);
  }
  await refuse(ctx, beginCell().storeUint(0, 32).storeStringTail('hi').endCell(), ERR.unknownOp, ctx.owner, 'comment');

  // An empty body from anyone and a bounced message: accepted, nothing changes, no event.
  for (const [what, from, opts] of [
    ['owner top-up', ctx.owner, {}],
    ['stranger top-up', ctx.stranger, {}],
    ['bounced', ctx.owner, { bounced: true, bounce: false, body: addItemBody(KIND.snp, snpItem(fake('b', 48))) }],
  ]) {
    const before = await dataHash(ctx);
    const balance = (await ctx.blockchain.getContract(ctx.registry)).balance;
    const tx = await send(ctx, from, opts.body ?? beginCell().endCell(), opts);
    assert.equal(tx.description.computePhase.exitCode, 0, what);
    assert.equal(tx.description.aborted, false, what);
    assert.equal(tx.outMessagesCount, 0, what);
    assert.equal(await dataHash(ctx), before, what);
    assert.ok((await ctx.blockchain.getContract(ctx.registry)).balance > balance, `${what} keeps the value`);
  }
});

test('set_owner hands the registry over: the old owner is refused afterwards, the new one accepted', async () => {
  const ctx = await setup();
  const next = (await ctx.blockchain.treasury('next owner')).address;
  await accept(ctx, setOwnerBody(next, 1));
  const owner = (await get(ctx, 'get_registry_owner')).stackReader.readAddress();
  assert.ok(owner.equals(next));
  const item = snpItem(fake('x', 48));
  await refuse(ctx, addItemBody(KIND.snp, item), ERR.notOwner, ctx.owner, 'old owner');
  await refuse(ctx, setOwnerBody(ctx.owner), ERR.notOwner, ctx.owner, 'old owner takes it back');
  await accept(ctx, addItemBody(KIND.snp, item), next);
  // A masterchain owner is a valid owner too.
  const master = new Address(-1, fake('master', 32));
  await accept(ctx, setOwnerBody(master, 2), next);
  await refuse(ctx, setParamsBody(paramsCell()), ERR.notOwner, next, 'previous owner');
  await accept(ctx, setParamsBody(paramsCell(PARAMS)), master);
  assert.equal(await version(ctx), 4);
});

// The account's size limits: ConfigParam 43 (size_limits_config_v2, crypto/block/block.tlb),
// whose values on mainnet are the node's defaults in ton-blockchain/ton
// crypto/block/mc-config.h `SizeLimitsConfig`: 2^16 cells and 2^16 * 1023 bits. (The
// sandbox's config has no parameter 43, so its emulator runs with those defaults too.)
const MAX_ACC_STATE_CELLS = 1n << 16n;
const MAX_ACC_STATE_BITS = (1n << 16n) * 1023n;

test('gas and storage with 100 TDX images, 100 SNP measurements and 100 models', async () => {
  const ctx = await setup();
  // Bounds with headroom over what this contract uses (the report below prints the numbers);
  // an owner's update sent with 0.1 TON may use 250,000 gas at the sandbox config's basechain
  // price (400 nanoTON a unit).
  const UPDATE_GAS = 30_000n;
  const gas = (tx) => tx.description.computePhase.gasUsed;
  const report = [];
  const fill = [
    ['add_item tdx', KIND.tdx, (i) => tdxItem({ mrtd: fake(`m${i}`, 48), rtmr: [fake(`a${i}`, 48), fake(`b${i}`, 48), fake(`c${i}`, 48), i % 2 ? null : fake(`d${i}`, 48)] })],
    ['add_item snp', KIND.snp, (i) => snpItem(fake(`s${i}`, 48))],
    ['add_item model', KIND.model, (i) => modelItem(`org/model-${i % 10}`, fake(`w${i}`, 32))],
  ];
  const added = {};
  for (const [name, kind, make] of fill) {
    added[kind] = [];
    for (let i = 0; i < 100; i++) {
      const item = make(i);
      added[kind].push(item);
      const tx = await accept(ctx, addItemBody(kind, item, i), ctx.owner, { readBack: false });
      assert.ok(gas(tx) < UPDATE_GAS, `${name} #${i + 1}: ${gas(tx)} gas`);
      if (i === 0) report.push(`GAS ${name} (1st item): ${gas(tx)}`);
      if (i === 99) report.push(`GAS ${name} (100th item): ${gas(tx)}`);
    }
  }
  assert.equal(await version(ctx), 300);
  for (const kind of [KIND.tdx, KIND.snp, KIND.model]) assert.equal((await list(ctx, kind)).length, 100);

  const acc = await ctx.blockchain.getContract(ctx.registry);
  const used = acc.account.account.storageStats.used;
  report.push(
    `STORAGE 100 tdx + 100 snp + 100 model items: ${used.cells} cells, ${used.bits} bits ` +
      `(account limits ${MAX_ACC_STATE_CELLS} cells, ${MAX_ACC_STATE_BITS} bits)`,
  );
  // Well within the limits: a tenth of them leaves room for ten times as many items.
  assert.ok(used.cells < MAX_ACC_STATE_CELLS / 10n, `${used.cells} cells`);
  assert.ok(used.bits < MAX_ACC_STATE_BITS / 10n, `${used.bits} bits`);

  // Get-methods on the full registry.
  const getGas = async (name, method, args = []) => {
    const r = await get(ctx, method, args);
    report.push(`GAS get ${name}: ${r.gasUsed}`);
    return r;
  };
  await getGas('get_registry_version', 'get_registry_version');
  await getGas('get_registry_owner', 'get_registry_owner');
  await getGas('get_registry_params', 'get_registry_params');
  await getGas('get_registry_list(1) with 100 items', 'get_registry_list', [{ type: 'int', value: 1n }]);
  await getGas('get_registry_policy with 300 items', 'get_registry_policy');

  // Removes and params on the full registry.
  for (const [name, kind] of [['tdx', KIND.tdx], ['snp', KIND.snp], ['model', KIND.model]]) {
    const tx = await accept(ctx, removeItemBody(kind, itemKey(added[kind][50])));
    assert.ok(gas(tx) < UPDATE_GAS);
    report.push(`GAS remove_item ${name} (of 100): ${gas(tx)}`);
  }
  let tx = await accept(ctx, setParamsBody(paramsCell(PARAMS)));
  assert.ok(gas(tx) < UPDATE_GAS);
  report.push(`GAS set_params: ${gas(tx)}`);
  tx = await accept(ctx, setOwnerBody(ctx.owner));
  report.push(`GAS set_owner: ${gas(tx)}`);
  tx = await send(ctx, ctx.stranger, addItemBody(KIND.snp, added[KIND.snp][0]));
  report.push(`GAS refused (401): ${gas(tx)}`);
  tx = await send(ctx, ctx.stranger, beginCell().endCell());
  report.push(`GAS top-up: ${gas(tx)}`);
  for (const line of report) console.log(line);
});

test('the committed get-method fixture is what the contract answers, and decodes to its expected_policy', async () => {
  const committed = JSON.parse(readFileSync(join(FIXTURES, 'policy.json'), 'utf8'));
  assert.deepEqual(
    JSON.parse(JSON.stringify(await makePolicy())),
    committed,
    'regenerate: (cd tests/ton && node make-registry-fixtures.js ../../ton/tests/fixtures/registry)',
  );
  // What a reader of the toncenter-shaped stack gets back is expected_policy.
  const [v, c] = committed.responses.get_registry_policy.stack;
  assert.equal(v.type, 'num');
  assert.equal(c.type, 'cell');
  const [owner] = committed.responses.get_registry_owner.stack;
  assert.equal(owner.type, 'slice');
  const ownerAddr = Cell.fromBase64(owner.value).beginParse().loadAddress();
  assert.deepEqual(policyJson(Number(BigInt(v.value)), Cell.fromBase64(c.value), ownerAddr), committed.expected_policy);
  for (const [kind, r] of Object.entries(committed.responses.get_registry_list)) {
    assert.equal(r.exit_code, 0);
    assert.ok(listEntries(Cell.fromBase64(r.stack[0].value)).length > 0, `kind ${kind}`);
  }
});

// ---- the owner messages the Rust side builds --------------------------------------------------

const outDir = process.env.TON_SANDBOX_OUT;
const registryJson = outDir && join(outDir, 'registry.json');

/** Deploys a v5r1 wallet (from `words`) via a treasury's internal message with its state init. */
async function deployWallet(blockchain, treasury, words, raw) {
  const kp = await mnemonicToPrivateKey(words.split(' '));
  const wallet = WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey });
  assert.equal(wallet.address.toRawString(), raw, 'the wallet address Rust wrote');
  await treasury.send({ to: wallet.address, value: toNano('1000'), init: wallet.init, bounce: false });
  assert.equal((await blockchain.getContract(wallet.address)).accountState?.type, 'active');
}

test('owner messages built in Rust run on the registry', async (t) => {
  if (!registryJson || !existsSync(registryJson)) {
    t.skip('no $TON_SANDBOX_OUT/registry.json (written by cargo test -p ton --test sandbox_fixtures)');
    return;
  }
  const rx = JSON.parse(readFileSync(registryJson, 'utf8'));
  // The wallets' mnemonics: fixtures.json, which the same Rust test writes.
  const fxPath = join(outDir, 'fixtures.json');
  assert.ok(existsSync(fxPath), `${fxPath} (the wallets' mnemonics) is missing beside registry.json`);
  const fx = JSON.parse(readFileSync(fxPath, 'utf8'));
  const blockchain = await Blockchain.create();
  blockchain.now = rx.now;
  const treasury = await blockchain.treasury('funder');
  // Both wallets are deployed by a treasury (no seqno used), so a list that starts with the
  // wallet's own deploy (seqno 0, with state init) runs just as well.
  await deployWallet(blockchain, treasury, fx.mnemonic, rx.wallet_address);
  await deployWallet(blockchain, treasury, fx.second_mnemonic, rx.stranger.wallet_address);
  const registry = Address.parseRaw(rx.registry_address);

  const run = async (what, boc, exitCode) => {
    const msg = Cell.fromBase64(boc);
    assert.equal(loadMessage(msg.beginParse()).info.type, 'external-in', what);
    const res = await blockchain.sendMessage(msg);
    const ext = res.transactions[0];
    assert.equal(ext.description.computePhase.type, 'vm', what);
    assert.equal(ext.description.computePhase.success, true, `${what}: the wallet accepted it`);
    const tx = res.transactions.find((x) => x.inMessage?.info.type === 'internal' && x.inMessage.info.dest.equals(registry));
    assert.ok(tx, `${what}: reached the registry`);
    assert.equal(tx.description.computePhase.type, 'vm', `${what}: the registry ran`);
    assert.equal(tx.description.computePhase.exitCode, exitCode, `${what}: registry exit code`);
    if (exitCode === 0) {
      assert.equal(tx.description.aborted, false, what);
    }
  };
  // Each wallet's own deploy message (seqno 0, `cocoon ton deploy-wallet`) goes first: the
  // registry messages Rust signed count on seqno 1 onwards.
  for (const [what, boc] of [['wallet deploy', rx.wallet_deploy], ['stranger wallet deploy', rx.stranger.wallet_deploy]]) {
    if (!boc) continue;
    const res = await blockchain.sendMessage(Cell.fromBase64(boc));
    assert.equal(res.transactions[0].description.computePhase.success, true, `${what}: accepted by the wallet`);
  }
  for (const m of rx.messages) await run(m.name, m.boc, m.registry_exit_code);
  await run('stranger', rx.stranger.boc, rx.stranger.registry_exit_code);

  const st = (await blockchain.getContract(registry)).accountState;
  assert.equal(st?.type, 'active');
  const codeHash = st.state.code.hash().toString('hex');
  assert.equal(codeHash, rx.registry_code_hash.toLowerCase(), 'the code Rust deployed');
  assert.equal(codeHash, committedBuild().hashHex, 'the committed build');
  assert.deepEqual(await readPolicy(blockchain, registry), rx.expected_policy);
});
