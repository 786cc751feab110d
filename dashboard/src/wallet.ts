// TON Connect (@tonconnect/sdk): connect a wallet with a ton_proof of the server's payload,
// and send a deposit. Wallets injected into the page (wallet browsers, extensions) connect
// directly; others through their HTTP bridge by a universal link the user opens.

import { CHAIN, TonConnect, isWalletInfoCurrentlyInjected, isWalletInfoRemote, type Wallet, type WalletInfo } from '@tonconnect/sdk';
import { call, type TonProofBody } from './api';

let connector: TonConnect | null = null;
let pending: ((w: Wallet) => void) | null = null;
let pendingError: ((e: Error) => void) | null = null;

export function tonConnect(): TonConnect {
  if (!connector) {
    connector = new TonConnect({
      manifestUrl: new URL('/dashboard/tonconnect-manifest.json', location.href).toString(),
      // No third-party telemetry from this page.
      analytics: { mode: 'off' },
    });
    connector.onStatusChange(
      (w) => {
        if (w && pending) {
          const done = pending;
          pending = null;
          pendingError = null;
          done(w);
        }
      },
      (e) => {
        pendingError?.(e);
        pending = null;
        pendingError = null;
      },
    );
  }
  return connector;
}

export async function wallets(): Promise<WalletInfo[]> {
  const all = await tonConnect().getWallets();
  // Injected ones first: they connect without leaving the page.
  return [...all.filter(isWalletInfoCurrentlyInjected), ...all.filter((w) => !isWalletInfoCurrentlyInjected(w))];
}

export { isWalletInfoCurrentlyInjected, isWalletInfoRemote };

/**
 * Connects `info` asking for a ton_proof of a fresh server payload. Resolves with the body
 * the gateway's sign-in and payout-address endpoints take. `onLink` gets the universal link
 * for wallets that are not in the page.
 */
export async function connectWithProof(info: WalletInfo, onLink: (url: string) => void): Promise<TonProofBody> {
  const c = tonConnect();
  if (c.connected) await c.disconnect();
  const { payload } = await call<{ payload: string }>('POST', '/auth/ton/payload', undefined, false);
  const connected = new Promise<Wallet>((resolve, reject) => {
    pending = resolve;
    pendingError = reject;
  });
  const request = { request: { tonProof: payload } };
  if (isWalletInfoCurrentlyInjected(info)) {
    c.connect({ jsBridgeKey: info.jsBridgeKey }, request);
  } else if (isWalletInfoRemote(info)) {
    onLink(c.connect({ universalLink: info.universalLink, bridgeUrl: info.bridgeUrl }, request));
  } else {
    throw new Error(`${info.name} cannot be connected from this page`);
  }
  const w = await connected;
  const reply = w.connectItems?.tonProof;
  if (!reply || !('proof' in reply)) throw new Error('The wallet did not return a ton_proof');
  return {
    address: w.account.address,
    network: w.account.chain,
    public_key: w.account.publicKey,
    proof: { ...reply.proof, state_init: w.account.walletStateInit },
  };
}

/** Connects `info` without a proof (for paying), unless a wallet is connected already. */
export async function ensureConnected(info: WalletInfo | null, onLink: (url: string) => void): Promise<Wallet> {
  const c = tonConnect();
  if (c.connected && c.wallet) return c.wallet;
  if (!info) throw new Error('Choose a wallet first');
  const connected = new Promise<Wallet>((resolve, reject) => {
    pending = resolve;
    pendingError = reject;
  });
  if (isWalletInfoCurrentlyInjected(info)) c.connect({ jsBridgeKey: info.jsBridgeKey });
  else if (isWalletInfoRemote(info)) onLink(c.connect({ universalLink: info.universalLink, bridgeUrl: info.bridgeUrl }));
  return connected;
}

/** Asks the connected wallet to send `nano` to the service wallet with the deposit comment. */
export async function deposit(address: string, nano: string, payloadBoc: string, testnet: boolean): Promise<string> {
  const r = await tonConnect().sendTransaction({
    validUntil: Math.floor(Date.now() / 1000) + 300,
    network: testnet ? CHAIN.TESTNET : CHAIN.MAINNET,
    messages: [{ address, amount: nano, payload: payloadBoc }],
  });
  return r.boc;
}

/** The connected wallet's name, if one is connected. */
export function connectedName(): string | null {
  const w = tonConnect().wallet as (Wallet & { name?: string }) | null;
  return w ? (w.name ?? w.device.appName) : null;
}

export async function disconnect(): Promise<void> {
  const c = tonConnect();
  if (c.connected) await c.disconnect();
}
