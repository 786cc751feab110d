// The policy registry (contracts/registry.tolk) for the node side: compiles it with
// @ton/tolk-js, builds items, Params, initial data and owner messages, and decodes the
// get-methods' cells, all as contracts/README.md lays them out (the same specification the
// Rust side, `ton::registry`, follows). Used by registry.test.js, make-registry-fixtures.js
// and compile-registry.js.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Address, Cell, Dictionary, beginCell, contractAddress } from '@ton/core';
import { runTolkCompiler } from '@ton/tolk-js';

const here = dirname(fileURLToPath(import.meta.url));
export const CONTRACTS = join(here, '..', '..', 'contracts');
export const BUILD = join(CONTRACTS, 'build');

export const OP = {
  addItem: 0x52470001,
  removeItem: 0x52470002,
  setParams: 0x52470003,
  setOwner: 0x52470004,
  policyChanged: 0x52470100,
};

export const KIND = { tdx: 1, snp: 2, model: 3, driver: 4, vbios: 5, golden: 6, endpoint: 7 };

export const ERR = {
  notOwner: 401,
  unknownKind: 402,
  malformed: 403,
  absent: 404,
  duplicate: 409,
  unknownOp: 0xffff,
};

const ROLES = ['gateway', 'router'];
// Params' bit masks (README: gpu_architectures bit 0 = Hopper; protection modes bit 0 = SPT,
// bit 1 = MPT, bit 2 = PPCIE); 0 = any.
const ARCHITECTURES = ['hopper'];
const PROTECTION_MODES = ['spt', 'mpt', 'ppcie'];

let compiled;

/** Compiles contracts/registry.tolk: { code: Cell, boc64, hashHex (lowercase) }. */
export async function compileRegistry() {
  if (!compiled) {
    const r = await runTolkCompiler({
      entrypointFileName: 'registry.tolk',
      fsReadCallback: (path) => readFileSync(join(CONTRACTS, path), 'utf8'),
    });
    if (r.status !== 'ok') throw new Error(`tolk: ${r.message}`);
    const code = Cell.fromBase64(r.codeBoc64);
    compiled = {
      code,
      // One line of base64 BOC, no index and no CRC (what the Rust side embeds).
      boc64: code.toBoc({ idx: false, crc32: false }).toString('base64'),
      hashHex: code.hash().toString('hex'),
      tolkVersion: r.tolkVersion,
    };
  }
  return compiled;
}

/** The committed build: { boc64, hashHex }. */
export function committedBuild() {
  return {
    boc64: readFileSync(join(BUILD, 'registry.code.boc.b64'), 'utf8').trim(),
    hashHex: readFileSync(join(BUILD, 'registry.code.hash'), 'utf8').trim(),
  };
}

const bytes = (b, n, what) => {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b, 'hex');
  if (n !== undefined && buf.length !== n) throw new Error(`${what}: ${buf.length} bytes, want ${n}`);
  return buf;
};

/** A length-prefixed byte string: len:uint8 bytes:bits(8*len). */
function storeShort(b, data) {
  return b.storeUint(data.length, 8).storeBuffer(data);
}

// ---- items ---------------------------------------------------------------------------

/**
 * Kind 1: mrtd:bits384 any:uint4 ^[rtmr0 rtmr1] ^[rtmr2 rtmr3]; an RTMR given as null is
 * "any" (its bit in `any`: bit 3 = RTMR0 .. bit 0 = RTMR3) and stored as zeroes.
 */
export function tdxItem({ mrtd, rtmr }) {
  if (rtmr.length !== 4) throw new Error('tdx: four RTMRs');
  let any = 0;
  const regs = rtmr.map((r, i) => {
    if (r === null || r === 'any') {
      any |= 8 >> i;
      return Buffer.alloc(48);
    }
    return bytes(r, 48, `rtmr${i}`);
  });
  const pair = (a, b) => beginCell().storeBuffer(a).storeBuffer(b).endCell();
  return beginCell()
    .storeBuffer(bytes(mrtd, 48, 'mrtd'))
    .storeUint(any, 4)
    .storeRef(pair(regs[0], regs[1]))
    .storeRef(pair(regs[2], regs[3]))
    .endCell();
}

/** Kind 2: measurement:bits384. */
export function snpItem(measurement) {
  return beginCell().storeBuffer(bytes(measurement, 48, 'snp')).endCell();
}

/** Kind 3: len:uint8 model_id:bits(8*len) sha256:bits256. */
export function modelItem(modelId, sha256) {
  return storeShort(beginCell(), Buffer.from(modelId, 'utf8')).storeBuffer(bytes(sha256, 32, 'sha256')).endCell();
}

/** Kinds 4 and 5 (driver / VBIOS version): len:uint8 text:bits(8*len). */
export function textItem(text) {
  return storeShort(beginCell(), Buffer.from(text, 'utf8')).endCell();
}

/** Kind 6: index:uint8 len:uint8 value:bits(8*len). */
export function goldenItem(index, value) {
  return storeShort(beginCell().storeUint(index, 8), bytes(value)).endCell();
}

/** Kind 7: role:uint8 tls_sha256:bits256 len:uint8 url:bits(8*len); role 0 gateway, 1 router. */
export function endpointItem(role, url, tlsSha256) {
  const r = typeof role === 'number' ? role : ROLES.indexOf(role);
  if (r < 0) throw new Error(`endpoint role ${role}`);
  return storeShort(beginCell().storeUint(r, 8).storeBuffer(bytes(tlsSha256, 32, 'tls_sha256')), Buffer.from(url, 'utf8')).endCell();
}

// ---- params, storage, messages ---------------------------------------------------------

export const DEFAULT_PARAMS = {
  prices: { prompt: 0n, cached_prompt: 0n, completion: 0n, reasoning: 0n },
  max_coefficient: 1000,
  fee_bps: 0,
  gpu_require: 0,
  architectures: 0,
  protection_modes: 0,
};

/** Params: four Coins, max_coefficient:uint32 fee_bps:uint16 gpu_require:uint1 uint8 uint8. */
export function paramsCell(p = DEFAULT_PARAMS) {
  const pr = p.prices;
  return beginCell()
    .storeCoins(BigInt(pr.prompt))
    .storeCoins(BigInt(pr.cached_prompt))
    .storeCoins(BigInt(pr.completion))
    .storeCoins(BigInt(pr.reasoning))
    .storeUint(p.max_coefficient, 32)
    .storeUint(p.fee_bps, 16)
    .storeUint(p.gpu_require, 1)
    .storeUint(p.architectures, 8)
    .storeUint(p.protection_modes, 8)
    .endCell();
}

/** Initial data: owner, version 0, params, lists empty. */
export function initialData(owner, params = paramsCell()) {
  return beginCell().storeAddress(owner).storeUint(0, 32).storeRef(params).storeBit(0).endCell();
}

/** { init: { code, data }, address } of a registry deployed in workchain 0. */
export async function registryInit(owner, params = paramsCell()) {
  const { code } = await compileRegistry();
  const init = { code, data: initialData(owner, params) };
  return { init, address: contractAddress(0, init) };
}

const head = (op, queryId) => beginCell().storeUint(op, 32).storeUint(queryId, 64);

export function addItemBody(kind, item, queryId = 0) {
  return head(OP.addItem, queryId).storeUint(kind, 8).storeRef(item).endCell();
}

export function removeItemBody(kind, key, queryId = 0) {
  const k = Buffer.isBuffer(key) ? BigInt('0x' + key.toString('hex')) : BigInt(key);
  return head(OP.removeItem, queryId).storeUint(kind, 8).storeUint(k, 256).endCell();
}

export function setParamsBody(params, queryId = 0) {
  return head(OP.setParams, queryId).storeRef(params).endCell();
}

export function setOwnerBody(owner, queryId = 0) {
  return head(OP.setOwner, queryId).storeAddress(owner).endCell();
}

/** An item's key in its list: the item cell's representation hash, as a bigint. */
export function itemKey(item) {
  return BigInt('0x' + item.hash().toString('hex'));
}

// ---- decoding -----------------------------------------------------------------------------

const ITEMS = Dictionary.Keys.BigUint(256);
const LISTS = Dictionary.Keys.Uint(8);

/** A ListRoot cell ((HashmapE 256 ^Item) as Maybe ^Cell) -> [{ key: bigint, item: Cell }]. */
export function listEntries(listRoot) {
  const s = listRoot.beginParse();
  const root = s.loadMaybeRef();
  if (s.remainingBits !== 0 || s.remainingRefs !== 0) throw new Error('ListRoot: trailing data');
  if (!root) return [];
  const d = Dictionary.loadDirect(ITEMS, Dictionary.Values.Cell(), root);
  return d.keys().map((key) => ({ key, item: d.get(key) }));
}

/** The policy cell (params:^Params lists:(HashmapE 8 ^ListRoot)) -> { params, lists: Map kind -> ListRoot }. */
export function parsePolicyCell(policy) {
  const s = policy.beginParse();
  const params = s.loadRef();
  const lists = s.loadDict(LISTS, Dictionary.Values.Cell());
  if (s.remainingBits !== 0 || s.remainingRefs !== 0) throw new Error('policy: trailing data');
  return { params, lists: new Map(lists.keys().map((k) => [k, lists.get(k)])) };
}

export function decodeParams(cell) {
  const s = cell.beginParse();
  const p = {
    prices: {
      prompt: s.loadCoins(),
      cached_prompt: s.loadCoins(),
      completion: s.loadCoins(),
      reasoning: s.loadCoins(),
    },
    max_coefficient: s.loadUint(32),
    fee_bps: s.loadUint(16),
    gpu_require: s.loadUint(1),
    architectures: s.loadUint(8),
    protection_modes: s.loadUint(8),
  };
  if (s.remainingBits !== 0 || s.remainingRefs !== 0) throw new Error('params: trailing data');
  return p;
}

const hex = (buf) => Buffer.from(buf).toString('hex');

function loadShort(s) {
  const len = s.loadUint(8);
  return s.loadBuffer(len);
}

function flags(mask, names, what) {
  if (mask >> names.length) throw new Error(`${what}: unknown bits in ${mask}`);
  return names.filter((_, i) => mask & (1 << i));
}

function safe(n) {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${n} does not fit a JSON number exactly`);
  return Number(n);
}

const byString = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** Decodes one item of `kind` into its JSON pieces. */
export function decodeItem(kind, item) {
  const s = item.beginParse();
  switch (kind) {
    case KIND.tdx: {
      const mrtd = hex(s.loadBuffer(48));
      const any = s.loadUint(4);
      const regs = [];
      for (const c of [s.loadRef(), s.loadRef()]) {
        const r = c.beginParse();
        regs.push(r.loadBuffer(48), r.loadBuffer(48));
      }
      const e = { mrtd };
      regs.forEach((r, i) => (e[`rtmr${i}`] = any & (8 >> i) ? 'any' : hex(r)));
      return e;
    }
    case KIND.snp:
      return hex(s.loadBuffer(48));
    case KIND.model: {
      const id = loadShort(s).toString('utf8');
      return { id, sha256: hex(s.loadBuffer(32)) };
    }
    case KIND.driver:
    case KIND.vbios:
      return loadShort(s).toString('utf8');
    case KIND.golden: {
      const index = s.loadUint(8);
      return { index, value: hex(loadShort(s)) };
    }
    case KIND.endpoint: {
      const role = ROLES[s.loadUint(8)];
      const tls = hex(s.loadBuffer(32));
      return { role, url: loadShort(s).toString('utf8'), tls_sha256: tls };
    }
    default:
      throw new Error(`unknown kind ${kind}`);
  }
}

/**
 * get_registry_policy's (version, cell) plus the owner -> the JSON the Rust reader is tested
 * against, in canonical order (contracts/README.md gives the layout; the order is the one
 * `ton::registry` sorts into).
 */
export function policyJson(version, policyCell, owner) {
  const { params, lists } = parsePolicyCell(policyCell);
  const p = decodeParams(params);
  const items = (kind) => (lists.has(kind) ? listEntries(lists.get(kind)).map((e) => decodeItem(kind, e.item)) : []);

  const tdx = items(KIND.tdx);
  const tdxKey = (e) => [e.mrtd, e.rtmr0, e.rtmr1, e.rtmr2, e.rtmr3].join('/');
  tdx.sort((a, b) => byString(tdxKey(a), tdxKey(b)));

  const models = {};
  for (const { id, sha256 } of items(KIND.model)) (models[id] ??= []).push(sha256);
  const sortedModels = {};
  for (const id of Object.keys(models).sort(byString)) sortedModels[id] = models[id].sort(byString);

  const golden = new Map();
  for (const { index, value } of items(KIND.golden)) {
    if (!golden.has(index)) golden.set(index, []);
    golden.get(index).push(value);
  }
  const measurements = [...golden.keys()]
    .sort((a, b) => a - b)
    .map((index) => ({ index, allowed: golden.get(index).sort(byString) }));

  const endpoints = items(KIND.endpoint).sort((a, b) => byString(a.role, b.role) || byString(a.url, b.url));

  return {
    version,
    owner: owner.toRawString(),
    prices: {
      prompt: safe(p.prices.prompt),
      cached_prompt: safe(p.prices.cached_prompt),
      completion: safe(p.prices.completion),
      reasoning: safe(p.prices.reasoning),
    },
    max_price_coefficient: p.max_coefficient,
    fee_bps: p.fee_bps,
    gpu: {
      require: p.gpu_require === 1,
      allowed_architectures: flags(p.architectures, ARCHITECTURES, 'gpu_architectures'),
      allowed_protection_modes: flags(p.protection_modes, PROTECTION_MODES, 'gpu_protection_modes'),
      allowed_driver_versions: items(KIND.driver).sort(byString),
      allowed_vbios_versions: items(KIND.vbios).sort(byString),
      measurements,
    },
    tdx,
    snp: items(KIND.snp).sort(byString),
    models: sortedModels,
    endpoints,
  };
}

/** Reads the whole policy from a deployed registry as policyJson. */
export async function readPolicy(blockchain, registry) {
  const r = await blockchain.runGetMethod(registry, 'get_registry_policy');
  const version = Number(r.stackReader.readBigNumber());
  const cell = r.stackReader.readCell();
  const o = await blockchain.runGetMethod(registry, 'get_registry_owner');
  const owner = o.stackReader.readAddress();
  return policyJson(version, cell, owner);
}

/** The external out-message `policy_changed#52470100 version:uint32 change:^Cell`. */
export function parsePolicyChanged(body) {
  const s = body.beginParse();
  const op = s.loadUint(32);
  if (op !== OP.policyChanged) throw new Error(`policy_changed: op ${op.toString(16)}`);
  const version = s.loadUint(32);
  const change = s.loadRef();
  if (s.remainingBits !== 0 || s.remainingRefs !== 0) throw new Error('policy_changed: trailing data');
  return { version, change };
}

/** A TVM stack as toncenter's v3 runGetMethod renders it (toncenter/ton-indexer DecodeStackEntry). */
export function toncenterStack(stack) {
  return stack.map((e) => {
    switch (e.type) {
      case 'int':
        // Go's %#x of a big.Int: 0x.., -0x.., lowercase.
        return { type: 'num', value: (e.value < 0n ? '-0x' + (-e.value).toString(16) : '0x' + e.value.toString(16)) };
      case 'cell':
      case 'slice':
        // BOC with CRC32C, as toncenter serves it (te6cck...).
        return { type: e.type, value: e.cell.toBoc({ idx: false, crc32: true }).toString('base64') };
      default:
        throw new Error(`toncenter cannot render a ${e.type} stack entry`);
    }
  });
}

export { Address };
