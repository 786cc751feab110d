// The dashboard in a real browser (scripts/browser-tests): Playwright's playwright-core drives
// the system's Chromium (Debian's `chromium`, COCOON_CHROMIUM to override) against a real
// `cocoon gateway` (TON settlement on, against the fake toncenter in fake-toncenter.mjs) and a
// real `cocoon worker` (built-in engine), with a TON Connect wallet injected into the page
// (mock-wallet.mjs). The flows, in order:
//   1. sign-in with a signed Telegram initData (@telegram-apps/init-data-node), theme colours;
//   2. sign-in with TON Connect (mocked wallet, real ton_proof), a replayed proof refused;
//   3. a deposit sent through TON Connect, seen by the watcher, shown as balance;
//   4. a key created in the page works with the OpenAI SDK; revoked in the page, it gets 401;
//   5. a GPU owner sets the payout address by ton_proof, sees the payout confirmed with an
//      explorer link, then sees the worker go down when its process dies.
// Screenshots of each page at phone and desktop width go to $SCREENSHOTS_DIR when set.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';
import OpenAI from 'openai';
import { sign as signInitData } from '@telegram-apps/init-data-node';
import { Address, Cell } from '@ton/core';
import { mnemonicNew, mnemonicToPrivateKey } from '@ton/crypto';
import { WalletContractV5R1 } from '@ton/ton';
import { FakeToncenter } from './fake-toncenter.mjs';
import { MockWallet } from './mock-wallet.mjs';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const BIN = process.env.COCOON_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'debug', 'cocoon');
const CHROMIUM = process.env.COCOON_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS_DIR ? resolve(process.env.SCREENSHOTS_DIR) : null;
const BOT_TOKEN = '7000000001:AAFakeBotTokenForTheBrowserTests';
const WORKER = 'gpu-box-1';
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 860 };
// Telegram's dark theme params as a client sends them (tgWebAppThemeParams).
const TG_THEME = {
  bg_color: '#212121', text_color: '#ffffff', hint_color: '#aaaaaa', link_color: '#8774e1',
  button_color: '#8774e1', button_text_color: '#ffffff', secondary_bg_color: '#181818', destructive_text_color: '#ff595a',
};

const freePort = () =>
  new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });

async function until(what, fn, timeoutMs = 20_000, everyMs = 100) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const env = {};
let dir, fake, fakeServer, gateway, worker, browser, base, operatorKey, serviceWallet, logs = {};

function cocoon(args, extraEnv = {}) {
  return execFileSync(BIN, args, { env: { ...process.env, ...env, ...extraEnv }, encoding: 'utf8', timeout: 60_000 }).trim();
}

function start(name, args, extraEnv) {
  const child = spawn(BIN, args, { env: { ...process.env, ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  logs[name] = '';
  child.stdout.on('data', (d) => (logs[name] += d));
  child.stderr.on('data', (d) => (logs[name] += d));
  return child;
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  for (const [label, size] of [['phone', PHONE], ['desktop', DESKTOP]]) {
    await page.setViewportSize(size);
    await page.waitForTimeout(150);
    await page.screenshot({ path: join(SHOTS, `${name}-${label}.png`), fullPage: true });
  }
  await page.setViewportSize(DESKTOP);
}

async function newPage(wallet) {
  const context = await browser.newContext({ viewport: DESKTOP, locale: 'en-US', timezoneId: 'UTC', colorScheme: 'light' });
  if (wallet) await wallet.install(context);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  // The SDK fetching the public wallets list fails offline and falls back to its built-in
  // list: expected here, not reported.
  page.on('console', (m) => m.type() === 'error' && !/Failed to fetch|ERR_NAME_NOT_RESOLVED|status of 401/.test(m.text()) && console.error('page console:', m.text()));
  return page;
}

describe('dashboard in Chromium', { concurrency: false }, () => {
  let tonWallet;
  let tonPage;

  before(async () => {
    assert.ok(existsSync(BIN), `${BIN} is missing: cargo build -p cocoon (or set COCOON_BIN)`);
    assert.ok(existsSync(join(root, 'dashboard/dist/index.html')), 'dashboard not built: scripts/build-dashboard');
    dir = mkdtempSync(join(tmpdir(), 'cocoon-browser-'));
    const [port, workerPort] = [await freePort(), await freePort()];
    base = `http://127.0.0.1:${port}`;

    // The service wallet (v5r1, testnet) from a fresh mnemonic, and the fake chain holding it.
    const mnemonic = await mnemonicNew(24);
    const keys = await mnemonicToPrivateKey(mnemonic);
    serviceWallet = WalletContractV5R1.create({ workchain: 0, publicKey: keys.publicKey, walletId: { networkGlobalId: -3 } }).address;
    fake = new FakeToncenter(serviceWallet.toRawString());
    fakeServer = await fake.listen();

    Object.assign(env, {
      // Commands other than `cocoon dev` default to production, which refuses simulated TEEs.
      COCOON__ENVIRONMENT: 'development',
      COCOON__GATEWAY__METRICS_LISTEN: '127.0.0.1:0',
      COCOON__DATA_DIR: join(dir, 'gateway'),
      COCOON__LOG: 'warn,ton=info',
      COCOON__GATEWAY__LISTEN: `127.0.0.1:${port}`,
      COCOON__ROUTER__WORKER_LISTEN: `127.0.0.1:${workerPort}`,
      COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE: 'true',
      COCOON__GATEWAY__DASHBOARD__ASSETS_DIR: join(root, 'dashboard/dist'),
      COCOON__GATEWAY__DASHBOARD__PUBLIC_URL: base,
      COCOON__GATEWAY__DASHBOARD__SESSION_SECRET: 'browser-tests-session-secret-32-bytes-long',
      COCOON__GATEWAY__DASHBOARD__TELEGRAM__BOT_TOKEN: BOT_TOKEN,
      COCOON__GATEWAY__DASHBOARD__TELEGRAM__BOT_USERNAME: 'cocoon_test_bot',
      COCOON__TON__ENABLED: 'true',
      COCOON__TON__NETWORK: 'testnet',
      COCOON__TON__API_URL: `http://127.0.0.1:${fakeServer.address().port}`,
      COCOON_TON_MNEMONIC: mnemonic.join(' '),
      COCOON__TON__DEPOSITS__CONFIRMATIONS: '0',
      COCOON__TON__DEPOSITS__POLL_INTERVAL_SECS: '1',
      COCOON__TON__PAYOUTS__POLL_INTERVAL_SECS: '1',
      COCOON__TON__PAYOUTS__THRESHOLD_NANOTON: '1000',
    });
    mkdirSync(env.COCOON__DATA_DIR, { recursive: true });
    // Before the gateway: a price for the test model, and the GPU owner's operator key.
    cocoon(['prices', 'set', 'cocoon-test', '--prompt', '100000000', '--completion', '100000000']);
    operatorKey = cocoon(['keys', 'create', '--name', 'operator', '--worker', WORKER]);

    gateway = start('gateway', ['gateway']);
    const pin = await until('the gateway to print its certificate pin', () => /router certificate SHA-256[^:]*: ([0-9a-f]{64})/.exec(logs.gateway)?.[1], 60_000);
    worker = start('worker', ['worker'], {
      COCOON__DATA_DIR: join(dir, 'worker'),
      COCOON__WORKER__WORKER_ID: WORKER,
      COCOON__WORKER__ROUTER_URL: `wss://127.0.0.1:${workerPort}/v1/worker`,
      COCOON__WORKER__ROUTER_CERT_SHA256: pin,
      COCOON__WORKER__SLOTS: '4',
      COCOON__ENGINE__KIND: 'builtin',
      COCOON__ENGINE__LISTEN: '127.0.0.1:0',
    });
    mkdirSync(join(dir, 'worker'), { recursive: true });
    await until('the worker to be routable', async () => (await (await fetch(`${base}/readyz`)).json()).workers === 1, 60_000);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  });

  after(async () => {
    await browser?.close();
    for (const c of [worker, gateway]) c?.kill('SIGKILL');
    fakeServer?.close();
    if (process.env.KEEP_LOGS) console.error(logs.gateway, logs.worker);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('sign-in with a signed Telegram initData, in Telegram theme colours', async () => {
    const page = await newPage(null);
    await page.goto(`${base}/dashboard/`);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await shot(page, 'sign-in');

    // A tampered initData is refused.
    const user = { id: 4242, first_name: 'Ada', username: 'ada_tg', language_code: 'en', allows_write_to_pm: true };
    const good = signInitData({ user, chat_type: 'private', chat_instance: '-1' }, BOT_TOKEN, new Date());
    const bad = good.replace('ada_tg', 'eve_tg');
    const launch = (initData) => `${base}/dashboard/#tgWebAppData=${encodeURIComponent(initData)}&tgWebAppVersion=8.0&tgWebAppPlatform=tdesktop&tgWebAppThemeParams=${encodeURIComponent(JSON.stringify(TG_THEME))}`;
    // A fresh document each time (a hash change alone would not reload the app).
    await page.goto('about:blank');
    await page.goto(launch(bad));
    await page.getByText('Telegram sign-in failed').waitFor();
    await page.evaluate(() => sessionStorage.clear());
    await page.goto('about:blank');
    await page.goto(launch(good));
    await page.locator('.who', { hasText: '@ada_tg' }).waitFor();
    assert.match(await page.locator('.who .tag').innerText(), /telegram/i);
    // The signed initData left the address bar; the theme's colours are in use.
    assert.ok(!page.url().includes('tgWebAppData'));
    assert.equal(await page.evaluate(() => getComputedStyle(document.body).backgroundColor), 'rgb(33, 33, 33)');
    await page.locator('[data-stat=available]').waitFor();
    await shot(page, 'telegram-balance');
    await page.context().close();
  });

  test('sign-in with TON Connect: mocked wallet, real ton_proof; a replayed proof is refused', async () => {
    tonWallet = await MockWallet.create(true);
    tonPage = await newPage(tonWallet);
    await tonPage.goto(`${base}/dashboard/`);
    await tonPage.locator('button.wallet.injected[data-wallet=tonkeeper]').click();
    const friendly = Address.parseRaw(tonWallet.address).toString({ bounceable: false, testOnly: true });
    await tonPage.locator('.who .tag', { hasText: 'ton' }).waitFor();
    assert.equal(await tonPage.locator('.who').getAttribute('title'), `${friendly} (ton:${tonWallet.address})`);
    assert.equal(tonWallet.proofs.length, 1);
    assert.equal(tonWallet.proofs[0].domain, new URL(base).host);
    // The same proof again (the payload is single use): 401.
    const replay = await fetch(`${base}/v1/dashboard/auth/ton`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ address: tonWallet.address, network: '-3', proof: { ...tonWallet.proofs[0].proof, state_init: tonWallet.stateInitBoc() } }),
    });
    assert.equal(replay.status, 401);
    assert.equal((await replay.json()).error.code, 'invalid_ton_proof');
  });

  test('a deposit sent with TON Connect and seen by the watcher shows up as balance', async () => {
    const page = tonPage;
    const code = (await page.locator('#deposit-code').innerText()).trim();
    const shown = (await page.locator('#deposit-address').innerText()).trim();
    // The gateway's Rust derivation of the service wallet agrees with @ton/ton's.
    assert.ok(Address.parse(shown).equals(serviceWallet), `${shown} vs ${serviceWallet.toRawString()}`);
    const sent = new Promise((res) => (tonWallet.onSend = res));
    await page.locator('input[aria-label="Amount in TON"]').fill('5');
    await page.locator('#pay').click();
    const tx = await sent;
    const m = tx.messages[0];
    assert.ok(Address.parse(m.address).equals(serviceWallet));
    assert.equal(m.amount, '5000000000');
    assert.equal(tx.network, '-3');
    const body = Cell.fromBase64(m.payload).beginParse();
    assert.equal(body.loadUint(32), 0, 'a text comment');
    assert.equal(body.loadStringTail(), code);
    // The chain: the transfer lands on the service wallet; the watcher polls every second.
    fake.deposit({ from: tonWallet.address, amount: m.amount, bodyBoc: m.payload });
    await page.locator('[data-stat=available] strong', { hasText: /^5 TON$/ }).waitFor({ timeout: 20_000 });
    await shot(page, 'balance');
  });

  test('a key created in the page works with the OpenAI SDK; revoked in the page, it gets 401', async () => {
    const page = tonPage;
    await page.goto(`${base}/dashboard/#/keys`);
    await page.locator('#new-key-name').fill('browser-key');
    await page.locator('#create-key').click();
    const key = (await page.locator('#new-key').innerText()).trim();
    assert.match(key, /^sk-cocoon-[A-Za-z0-9]{52}$/);
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
    const chat = await client.chat.completions.create({ model: 'cocoon-test', messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 });
    assert.ok(chat.choices[0].message.content.length > 0);
    await shot(page, 'keys');

    page.once('dialog', (d) => d.accept());
    await page.locator('tr', { hasText: 'browser-key' }).getByRole('button', { name: 'Revoke' }).click();
    await page.locator('tr.revoked', { hasText: 'browser-key' }).waitFor();
    const started = Date.now();
    await until('the SDK to get 401', async () => {
      try {
        await client.models.list();
        return false;
      } catch (e) {
        return e instanceof OpenAI.AuthenticationError && e.status === 401;
      }
    }, 2_000, 20);
    console.log(`revoked key refused after ${Date.now() - started} ms`);
    await page.goto(`${base}/dashboard/#/usage`);
    await page.locator('#usage-by-model td', { hasText: 'cocoon-test' }).waitFor();
    await shot(page, 'usage');
  });

  test('a GPU owner sets the payout address by ton_proof, sees the payout, then sees the worker go down', async () => {
    const owner = await MockWallet.create(true);
    const page = await newPage(owner);
    await page.goto(`${base}/dashboard/`);
    await page.locator('input[aria-label="API key"]').fill(operatorKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('link', { name: 'Workers' }).click();
    const card = page.locator(`[data-worker="${WORKER}"]`);
    await card.locator('[data-health=up]').waitFor().catch(async (e) => {
      throw new Error(`${e.message}\npage: ${await page.locator('#app').innerText()}`);
    });
    const text = await card.innerText();
    assert.match(text, /Attested\s*✓ yes/);
    assert.match(text, /simulated/);
    assert.match(text, /cocoon-test/);

    await card.locator('summary', { hasText: /payout address/ }).click();
    await card.locator('button.wallet.injected[data-wallet=tonkeeper]').click();
    await page.locator(`[data-worker="${WORKER}"] .payout-address`, { hasText: owner.address }).waitFor();
    // The worker earned from the SDK request above: over the 1000 nanoTON threshold, a payout
    // is sent from the service wallet and confirmed on the (fake) chain.
    const link = page.locator(`[data-worker="${WORKER}"] table.payouts a`);
    await link.first().waitFor({ timeout: 30_000 });
    assert.match(await link.first().getAttribute('href'), /^https:\/\/testnet\.tonviewer\.com\/transaction\/[0-9a-f]{64}$/);
    assert.ok(fake.posts.some((p) => p.ok), JSON.stringify(fake.posts));
    await shot(page, 'workers');

    // Signing in with the payout wallet shows the same worker.
    const r = await fetch(`${base}/v1/dashboard/auth/ton/payload`, { method: 'POST' });
    const { payload } = await r.json();
    const s = await (await fetch(`${base}/v1/dashboard/auth/ton`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ address: owner.address, network: '-3', public_key: owner.keys.publicKey.toString('hex'), proof: { ...owner.proof(new URL(base).host, payload), state_init: owner.stateInitBoc() } }),
    })).json();
    const me = await (await fetch(`${base}/v1/dashboard/me`, { headers: { authorization: `Bearer ${s.token}` } })).json();
    assert.deepEqual(me.workers, [WORKER]);

    worker.kill('SIGKILL');
    await card.locator('[data-health=down]').waitFor({ timeout: 20_000 });
    assert.match(await card.innerText(), /Last seen\s*(just now|\d+ s ago)/);
    await shot(page, 'workers-down');
    await page.context().close();
  });
});
