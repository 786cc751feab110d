// A TON Connect wallet injected into the page, as wallet browsers and extensions inject theirs:
// `window[jsBridgeKey].tonconnect` with deviceInfo, walletInfo, protocolVersion, isWalletBrowser,
// connect(), restoreConnection(), send(), listen() and disconnect(), the "JS bridge" of the
// TON Connect spec (ton-blockchain/ton-connect, bridge.md) and what @tonconnect/sdk's
// InjectedProvider calls (lib/esm/index.mjs, InjectedProvider / isJSBridgeWithMetadata).
//
// The page side only forwards to functions the test exposes (Playwright `exposeFunction`):
// the Node side holds the key pair (a real wallet v5r1 from @ton/crypto + @ton/ton) and signs
// the ton_proof exactly as the spec says; sendTransaction requests are recorded for the test.

import { createHash } from 'node:crypto';
import { beginCell, storeStateInit } from '@ton/core';
import { mnemonicNew, mnemonicToPrivateKey, sign } from '@ton/crypto';
import { WalletContractV5R1 } from '@ton/ton';

// @tonconnect/sdk 3.x offers an injected wallet only if the wallets list names its bridge key
// (outside its QA mode), so the mock takes the key of a listed wallet: Tonkeeper's browser
// extension injects `window.tonkeeper` (wallets-v2.json and the SDK's fallback list:
// `bridge: [{type: 'js', key: 'tonkeeper'}]`).
export const BRIDGE_KEY = 'tonkeeper';

/** Runs in the page before any of its scripts (Playwright addInitScript). */
export function injectedBridge(bridgeKey) {
  const deviceInfo = {
    platform: 'linux',
    appName: 'cocoon-mock-wallet',
    appVersion: '1.0.0',
    maxProtocolVersion: 2,
    features: ['SendTransaction', { name: 'SendTransaction', maxMessages: 4 }],
  };
  window[bridgeKey] = {
    tonconnect: {
      deviceInfo,
      walletInfo: {
        name: 'Tonkeeper',
        app_name: 'tonkeeper',
        image: 'data:image/png;base64,iVBORw0KGgo=',
        about_url: 'https://example.invalid/mock-wallet',
        platforms: ['chrome', 'firefox', 'safari'],
      },
      protocolVersion: 2,
      isWalletBrowser: false,
      connect: async (protocolVersion, message) => JSON.parse(await window.__mockWalletConnect(protocolVersion, JSON.stringify(message))),
      restoreConnection: async () => ({ event: 'connect_error', id: 0, payload: { code: 0, message: 'no stored session' } }),
      send: async (request) => JSON.parse(await window.__mockWalletSend(JSON.stringify(request))),
      listen: () => () => {},
      disconnect: () => {},
    },
  };
}

const sha256 = (b) => createHash('sha256').update(b).digest();

/** The Node side of one mock wallet (its keys, and what the page asked of it). */
export class MockWallet {
  static async create(testnet = true) {
    const w = new MockWallet();
    w.mnemonic = await mnemonicNew(24);
    w.keys = await mnemonicToPrivateKey(w.mnemonic);
    w.contract = WalletContractV5R1.create({ workchain: 0, publicKey: w.keys.publicKey, walletId: { networkGlobalId: testnet ? -3 : -239 } });
    w.chain = testnet ? '-3' : '-239';
    w.sent = [];
    w.proofs = [];
    return w;
  }

  get address() {
    return this.contract.address.toRawString();
  }

  stateInitBoc() {
    return beginCell().store(storeStateInit(this.contract.init)).endCell().toBoc().toString('base64');
  }

  /** ton_proof over `payload` for `domain` (TON Connect spec; see the file header). */
  proof(domain, payload, timestamp = Math.floor(Date.now() / 1000)) {
    const a = this.contract.address;
    const wc = Buffer.alloc(4);
    wc.writeInt32BE(a.workChain);
    const dl = Buffer.alloc(4);
    dl.writeUInt32LE(Buffer.byteLength(domain));
    const ts = Buffer.alloc(8);
    ts.writeBigUInt64LE(BigInt(timestamp));
    const message = Buffer.concat([Buffer.from('ton-proof-item-v2/'), wc, a.hash, dl, Buffer.from(domain), ts, Buffer.from(payload)]);
    const signature = sign(sha256(Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.from('ton-connect'), sha256(message)])), this.keys.secretKey);
    return { timestamp, domain: { lengthBytes: Buffer.byteLength(domain), value: domain }, payload, signature: signature.toString('base64') };
  }

  /** Answers the SDK's connect request like a wallet: it reads the app's manifest and signs
   *  the proof for the manifest url's host. */
  async connect(protocolVersion, messageJson) {
    const message = JSON.parse(messageJson);
    const manifest = await (await fetch(message.manifestUrl)).json();
    const domain = new URL(manifest.url).host;
    const items = [];
    for (const item of message.items) {
      if (item.name === 'ton_addr') {
        items.push({ name: 'ton_addr', address: this.address, network: this.chain, walletStateInit: this.stateInitBoc(), publicKey: this.keys.publicKey.toString('hex') });
      } else if (item.name === 'ton_proof') {
        const proof = this.proof(domain, item.payload);
        this.proofs.push({ domain, proof });
        items.push({ name: 'ton_proof', proof });
      }
    }
    return JSON.stringify({
      event: 'connect',
      id: Date.now(),
      payload: {
        items,
        device: { platform: 'linux', appName: 'cocoon-mock-wallet', appVersion: '1.0.0', maxProtocolVersion: 2, features: ['SendTransaction', { name: 'SendTransaction', maxMessages: 4 }] },
      },
    });
  }

  /** sendTransaction: recorded; answered with a BoC as a wallet would. */
  async send(requestJson) {
    const request = JSON.parse(requestJson);
    if (request.method !== 'sendTransaction') {
      return JSON.stringify({ id: request.id, error: { code: 400, message: `mock wallet: ${request.method} not supported` } });
    }
    const tx = JSON.parse(request.params[0]);
    this.sent.push(tx);
    this.onSend?.(tx);
    return JSON.stringify({ id: request.id, result: beginCell().storeUint(this.sent.length, 32).endCell().toBoc().toString('base64') });
  }

  /** Wires this wallet into a Playwright browser context. */
  async install(context) {
    await context.exposeFunction('__mockWalletConnect', (v, m) => this.connect(v, m));
    await context.exposeFunction('__mockWalletSend', (r) => this.send(r));
    await context.addInitScript(injectedBridge, BRIDGE_KEY);
  }
}
