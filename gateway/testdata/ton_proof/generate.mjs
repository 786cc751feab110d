// Writes proofs.json: TON Connect `ton_proof` test vectors for gateway/src/dashboard/ton_proof.rs.
//
//   cd gateway/testdata && npm ci && node ton_proof/generate.mjs
//
// A real wallet v5r1 (and v4r2) key pair from a TON mnemonic (@ton/crypto
// `mnemonicToPrivateKey`), the wallet's state init and address from @ton/ton's
// WalletContractV5R1 / WalletContractV4 (@ton/core `storeStateInit`, `contractAddress`), and the
// proof signed exactly as the TON Connect spec says
// (ton-blockchain/ton-connect requests-responses.md, "Address proof signature (ton_proof)"):
//
//   message   = "ton-proof-item-v2/" ++ workchain (int32 BE) ++ address hash (32 bytes)
//               ++ domain length (uint32 LE) ++ domain ++ timestamp (uint64 LE) ++ payload
//   signature = Ed25519(sha256(0xffff ++ "ton-connect" ++ sha256(message)))
//
// Each vector is checked here the way the reference backend does it
// (ton-connect/demo-dapp-with-react-ui, src/server/services/ton-proof-service.ts): the state
// init must hash to the address and the signature must verify with its public key.

import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beginCell, contractAddress, storeStateInit } from '@ton/core';
import { mnemonicToPrivateKey, sign, signVerify } from '@ton/crypto';
import { WalletContractV4, WalletContractV5R1 } from '@ton/ton';

// A throwaway test wallet (no funds, never used on chain), so the vectors are reproducible.
const MNEMONIC = 'demise pet spatial corn rent fly vague deny federal pioneer mansion reveal world until nose frog shoot canal pizza seminar demise outside avoid mule'.split(' ');

const NOW = 1_750_000_000;
const DOMAIN = 'dashboard.cocoon.test';
const MAX_AGE = 900;

const sha256 = (b) => createHash('sha256').update(b).digest();

function proofMessage(address, domain, timestamp, payload) {
  const wc = Buffer.alloc(4);
  wc.writeInt32BE(address.workChain);
  const dl = Buffer.alloc(4);
  dl.writeUInt32LE(Buffer.byteLength(domain));
  const ts = Buffer.alloc(8);
  ts.writeBigUInt64LE(BigInt(timestamp));
  return Buffer.concat([Buffer.from('ton-proof-item-v2/'), wc, address.hash, dl, Buffer.from(domain), ts, Buffer.from(payload)]);
}

function signProof(secretKey, address, domain, timestamp, payload) {
  const full = Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.from('ton-connect'), sha256(proofMessage(address, domain, timestamp, payload))]);
  return sign(sha256(full), secretKey);
}

function stateInitBoc(init) {
  return beginCell().store(storeStateInit(init)).endCell().toBoc().toString('base64');
}

/** The request body the dashboard posts (TON Connect's ton_addr + ton_proof items). */
function request(wallet, keys, { domain = DOMAIN, timestamp = NOW - 10, payload, signWith = keys.secretKey, claimed = wallet.address, stateInit = wallet.init, lengthBytes }) {
  const signature = signProof(signWith, claimed, domain, timestamp, payload);
  return {
    address: claimed.toRawString(),
    network: '-239',
    public_key: keys.publicKey.toString('hex'),
    proof: {
      timestamp,
      domain: { lengthBytes: lengthBytes ?? Buffer.byteLength(domain), value: domain },
      payload,
      signature: signature.toString('base64'),
      state_init: stateInitBoc(stateInit),
    },
  };
}

/** The reference backend's checks (state init -> address, signature); true if they pass. */
function referenceCheck(req, publicKey) {
  const [wc, hex] = req.address.split(':');
  const claimed = { workChain: Number(wc), hash: Buffer.from(hex, 'hex') };
  const { loadStateInit, Cell } = coreForCheck;
  const init = loadStateInit(Cell.fromBase64(req.proof.state_init).beginParse());
  const computed = contractAddress(claimed.workChain, init);
  if (!computed.hash.equals(claimed.hash)) return false;
  const full = Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.from('ton-connect'), sha256(proofMessage(claimed, req.proof.domain.value, req.proof.timestamp, req.proof.payload))]);
  return signVerify(sha256(full), Buffer.from(req.proof.signature, 'base64'), publicKey);
}
const coreForCheck = await import('@ton/core');

const keys = await mnemonicToPrivateKey(MNEMONIC);
// A second key (the same words reversed: key derivation does not check the checksum).
const other = await mnemonicToPrivateKey(MNEMONIC.slice().reverse());
const v5 = WalletContractV5R1.create({ workchain: 0, publicKey: keys.publicKey });
const v4 = WalletContractV4.create({ workchain: 0, publicKey: keys.publicKey });
const otherV5 = WalletContractV5R1.create({ workchain: 0, publicKey: other.publicKey });
const payload = (n) => createHash('sha256').update(`cocoon-test-payload-${n}`).digest('hex');

const valid = [
  { name: 'wallet v5r1', wallet: v5, version: 'v5r1', req: request(v5, keys, { payload: payload(1) }) },
  { name: 'wallet v4r2', wallet: v4, version: 'v4r2', req: request(v4, keys, { payload: payload(2) }) },
  { name: 'v5r1, signed at the window edge', wallet: v5, version: 'v5r1', req: request(v5, keys, { payload: payload(3), timestamp: NOW - MAX_AGE }) },
];
for (const v of valid) {
  if (!referenceCheck(v.req, keys.publicKey)) throw new Error(`reference check refused valid "${v.name}"`);
}

const invalid = [
  { name: 'wrong domain', error: 'domain', req: request(v5, keys, { payload: payload(10), domain: 'evil.example' }) },
  { name: 'expired proof', error: 'expired', req: request(v5, keys, { payload: payload(11), timestamp: NOW - MAX_AGE - 1 }) },
  { name: 'proof from the future', error: 'future', req: request(v5, keys, { payload: payload(12), timestamp: NOW + 3600 }) },
  // The other wallet's state init (and its key's signature), claimed for our address.
  { name: 'state init for another address', error: 'state_init_mismatch', req: request(v5, other, { payload: payload(13), claimed: v5.address, stateInit: otherV5.init }) },
  { name: 'signed by another key', error: 'signature', req: request(v5, keys, { payload: payload(14), signWith: other.secretKey }) },
  { name: 'domain length lies', error: 'malformed', req: request(v5, keys, { payload: payload(15), lengthBytes: 3 }) },
];
// public_key that is not the state init's key.
const wrongKey = request(v5, keys, { payload: payload(16) });
wrongKey.public_key = other.publicKey.toString('hex');
invalid.push({ name: 'public_key is not the wallet key', error: 'public_key_mismatch', req: wrongKey });
// Same hash claimed on the masterchain: the state init's address is on workchain 0.
const mc = request(v5, keys, { payload: payload(17) });
mc.address = mc.address.replace(/^0:/, '-1:');
invalid.push({ name: 'workchain changed', error: 'signature', req: mc });
// A tampered signature.
const tampered = request(v5, keys, { payload: payload(18) });
const sig = Buffer.from(tampered.proof.signature, 'base64');
sig[0] ^= 1;
tampered.proof.signature = sig.toString('base64');
invalid.push({ name: 'tampered signature', error: 'signature', req: tampered });

for (const c of invalid) {
  const ref = referenceCheck(c.req, keys.publicKey) && c.req.proof.domain.value === DOMAIN && c.req.proof.timestamp >= NOW - MAX_AGE;
  if (ref && !['future', 'malformed', 'public_key_mismatch'].includes(c.error)) throw new Error(`reference check accepted invalid "${c.name}"`);
}

const out = {
  generator: 'gateway/testdata/ton_proof/generate.mjs with @ton/core 0.63.1, @ton/crypto 3.3.0, @ton/ton 16.3.0',
  now: NOW,
  allowed_domains: [DOMAIN],
  max_age_secs: MAX_AGE,
  public_key: keys.publicKey.toString('hex'),
  valid: valid.map((v) => ({ name: v.name, version: v.version, address: v.wallet.address.toRawString(), request: v.req })),
  invalid: invalid.map((c) => ({ name: c.name, error: c.error, request: c.req })),
};
writeFileSync(fileURLToPath(new URL('./proofs.json', import.meta.url)), JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${out.valid.length} valid and ${out.invalid.length} invalid proofs`);
