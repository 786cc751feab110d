// The Cocoon dashboard: sign in (Telegram Mini App, TON Connect or an API key), then the
// client's balance, deposits, usage and keys, and a GPU owner's workers, earnings and payouts.
// Views are plain functions that build DOM; `#/overview` style hashes pick the view.

import { ApiError, call, setToken, token, type Balance, type Config, type Key, type Me, type Session, type Usage, type Worker } from './api';
import { usageChart } from './chart';
import { ago, copy, date, h, ton, toNano, type Child } from './dom';
import * as tg from './telegram';
import * as wallet from './wallet';
import type { WalletInfo } from '@tonconnect/sdk';

const app = document.getElementById('app') as HTMLElement;
let config: Config;
let me: Me | null = null;
let refreshTimer: number | undefined;

type View = 'overview' | 'usage' | 'keys' | 'workers';
const VIEWS: { id: View; label: string }[] = [
  { id: 'overview', label: 'Balance' },
  { id: 'usage', label: 'Usage' },
  { id: 'keys', label: 'API keys' },
  { id: 'workers', label: 'Workers' },
];

/** A long wallet address shortened for the header: first and last 6 characters. */
function short(label: string): string {
  return label.length > 24 ? `${label.slice(0, 6)}…${label.slice(-6)}` : label;
}

function currentView(): View {
  const v = location.hash.replace(/^#\/?/, '') as View;
  return VIEWS.some((x) => x.id === v) ? v : 'overview';
}

function message(text: string, kind: 'error' | 'info' = 'error'): HTMLElement {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  return e instanceof Error ? e.message : String(e);
}

function render(...children: Child[]): void {
  app.replaceChildren(...(children.flat(Infinity as 1).filter(Boolean) as Node[]));
}

// ---------------------------------------------------------------------------------------
// Sign-in

async function signedIn(s: Session): Promise<void> {
  setToken(s.token);
  await loadMe();
}

async function loadMe(): Promise<void> {
  try {
    me = await call<Me>('GET', '/me');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      setToken(null);
      me = null;
      return signInView(e.code === 'session_expired' ? 'Your session has expired; sign in again.' : null);
    }
    throw e;
  }
  show();
}

/** A list of wallets; picking one runs `then` with it. */
function walletPicker(title: string, then: (w: WalletInfo, link: (url: string) => void) => Promise<void>): HTMLElement {
  const box = h('div', { class: 'wallets' }, h('p', { class: 'muted' }, 'Looking for wallets…'));
  const status = h('div', { class: 'wallet-status' });
  const link = (url: string) =>
    status.replaceChildren(
      h('p', {}, 'Open your wallet to approve: '),
      h('a', { href: url, target: '_blank', rel: 'noopener', class: 'button', onclick: (e: Event) => (e.preventDefault(), tg.openLink(url)) }, 'Open wallet'),
      h('p', { class: 'muted small' }, 'Waiting for the wallet…'),
    );
  wallet
    .wallets()
    .then((list) => {
      box.replaceChildren(
        h('p', { class: 'muted' }, title),
        ...list.slice(0, 8).map((w) =>
          h(
            'button',
            {
              class: wallet.isWalletInfoCurrentlyInjected(w) ? 'wallet injected' : 'wallet',
              'data-wallet': w.appName,
              onclick: async () => {
                status.replaceChildren(h('p', { class: 'muted' }, `Connecting ${w.name}…`));
                try {
                  await then(w, link);
                } catch (e) {
                  status.replaceChildren(message(errorText(e)));
                }
              },
            },
            w.name,
            wallet.isWalletInfoCurrentlyInjected(w) ? h('span', { class: 'tag' }, 'in this browser') : null,
          ),
        ),
      );
    })
    .catch((e) => box.replaceChildren(message(`No wallet list: ${errorText(e)}`)));
  return h('div', {}, box, status);
}

function signInView(notice: string | null = null): void {
  clearInterval(refreshTimer);
  const keyInput = h('input', { type: 'password', placeholder: 'sk-cocoon-…', autocomplete: 'off', 'aria-label': 'API key' });
  const keyError = h('div');
  const parts: Child[] = [
    h('header', { class: 'top' }, h('h1', {}, config.app_name), h('span', { class: 'muted' }, 'dashboard')),
    notice ? message(notice, 'info') : null,
    h('section', { class: 'card signin' }, h('h2', {}, 'Sign in'), h('p', { class: 'muted' }, 'Clients see their balance, usage and API keys; GPU owners see their workers and payouts.')),
  ];
  if (config.ton_sign_in) {
    parts.push(
      h(
        'section',
        { class: 'card' },
        h('h3', {}, 'With a TON wallet'),
        walletPicker('Choose your wallet; it signs a one-time proof that you own it (no transaction).', async (w, link) => {
          const proof = await wallet.connectWithProof(w, link);
          await signedIn(await call<Session>('POST', '/auth/ton', proof, false));
        }),
      ),
    );
  }
  if (config.telegram_sign_in && config.telegram_bot_username) {
    parts.push(
      h(
        'section',
        { class: 'card' },
        h('h3', {}, 'In Telegram'),
        h('p', {}, 'Open ', h('a', { href: `https://t.me/${config.telegram_bot_username}`, target: '_blank', rel: 'noopener' }, `@${config.telegram_bot_username}`), ' and tap its dashboard button: you are signed in as your Telegram account.'),
      ),
    );
  }
  parts.push(
    h(
      'section',
      { class: 'card' },
      h('h3', {}, 'With an API key'),
      h(
        'form',
        {
          class: 'row',
          onsubmit: async (e: Event) => {
            e.preventDefault();
            setToken(keyInput.value.trim());
            try {
              await loadMe();
            } catch (err) {
              keyError.replaceChildren(message(errorText(err)));
            }
          },
        },
        keyInput,
        h('button', { type: 'submit' }, 'Sign in'),
      ),
      keyError,
      h('p', { class: 'muted small' }, 'GPU owners: the key of your worker\'s account (cocoon keys create --account <worker id>) shows that worker.'),
    ),
  );
  render(parts);
}

async function signInWithTelegram(l: tg.Launch): Promise<void> {
  render(h('p', { class: 'boot' }, 'Signing in with Telegram…'));
  try {
    await signedIn(await call<Session>('POST', '/auth/telegram', { init_data: l.initData }, false));
  } catch (e) {
    signInView(`Telegram sign-in failed: ${errorText(e)}`);
  }
}

// ---------------------------------------------------------------------------------------
// Layout

function show(): void {
  if (!me) return signInView();
  const view = currentView();
  const nav = h(
    'nav',
    { class: 'tabs' },
    VIEWS.filter((v) => v.id !== 'workers' || me!.workers.length > 0 || me!.via === 'ton').map((v) =>
      h('a', { href: `#/${v.id}`, class: v.id === view ? 'active' : '', 'aria-current': v.id === view ? 'page' : undefined }, v.label),
    ),
  );
  const body = h('main', {}, h('p', { class: 'muted' }, 'Loading…'));
  render(
    h(
      'header',
      { class: 'top' },
      h('h1', {}, config.app_name),
      h('span', { class: 'who', title: `${me.label} (${me.account})` }, h('span', { class: 'name' }, short(me.label || me.account)), h('span', { class: 'tag' }, me.via.replace('_', ' '))),
      h(
        'button',
        {
          class: 'link',
          onclick: async () => {
            setToken(null);
            me = null;
            await wallet.disconnect().catch(() => {});
            signInView();
          },
        },
        'Sign out',
      ),
    ),
    nav,
    body,
  );
  clearInterval(refreshTimer);
  const load = () => VIEW_LOADERS[view](body).catch((e) => body.replaceChildren(message(errorText(e))));
  load();
  // Live views refresh themselves.
  if (view === 'workers' || view === 'overview') refreshTimer = window.setInterval(() => VIEW_LOADERS[view](body, true).catch(() => {}), 3000);
}

const VIEW_LOADERS: Record<View, (body: HTMLElement, quiet?: boolean) => Promise<void>> = {
  overview: overviewView,
  usage: usageView,
  keys: keysView,
  workers: workersView,
};

// ---------------------------------------------------------------------------------------
// Balance and deposit

let depositWallet: WalletInfo | null = null;

async function overviewView(body: HTMLElement, quiet = false): Promise<void> {
  if (!config.billing_enabled) {
    body.replaceChildren(message('Billing is off on this gateway: there is no balance to show.', 'info'));
    return;
  }
  const b = await call<Balance>('GET', '/balance');
  const stat = (label: string, value: string, id: string) => h('div', { class: 'stat', 'data-stat': id }, h('span', { class: 'muted' }, label), h('strong', {}, value, h('small', {}, ' TON')));
  const balance = h(
    'section',
    { class: 'card', id: 'balance' },
    h('h2', {}, 'Balance'),
    h('div', { class: 'stats' }, stat('Available', b.balance.available_ton, 'available'), stat('Held by requests in flight', b.balance.held_ton, 'held'), stat('Total', b.balance.total_ton, 'total')),
  );
  if (quiet) {
    body.querySelector('#balance')?.replaceWith(balance);
    return;
  }
  const amount = h('input', { inputmode: 'decimal', placeholder: '10', value: '10', 'aria-label': 'Amount in TON' });
  const status = h('div');
  const d = b.deposit;
  const addr = d.address;
  const transferLink = (nano: string) => `ton://transfer/${addr}?amount=${nano}&text=${encodeURIComponent(d.code)}`;
  const copyButton = (text: string) => {
    const btn: HTMLButtonElement = h('button', { class: 'small', onclick: () => copy(text, btn) }, 'Copy');
    return btn;
  };
  const pay = async () => {
    const nano = toNano(amount.value);
    if (!nano || !addr) return status.replaceChildren(message('Enter an amount in TON, e.g. 10 or 0.5'));
    if (!depositWallet && !wallet.connectedName()) {
      body.querySelector<HTMLDetailsElement>('#deposit details')?.setAttribute('open', '');
      return status.replaceChildren(message('Choose the wallet to pay from.', 'info'));
    }
    try {
      status.replaceChildren(h('p', { class: 'muted' }, 'Confirm the transfer in your wallet…'));
      await wallet.ensureConnected(depositWallet, (url) => tg.openLink(url));
      await wallet.deposit(addr, nano, d.payload_boc, d.network === 'testnet');
      status.replaceChildren(message(`Sent ${ton(nano)} TON. It shows here once the transfer is confirmed on chain.`, 'info'));
    } catch (e) {
      status.replaceChildren(message(`Not sent: ${errorText(e)}`));
    }
  };
  const deposit = h(
    'section',
    { class: 'card', id: 'deposit' },
    h('h2', {}, 'Top up with TON'),
    addr
      ? [
          h('div', { class: 'row' }, amount, h('span', {}, 'TON'), h('button', { onclick: pay, id: 'pay' }, 'Pay with TON Connect')),
          wallet.connectedName()
            ? h('p', { class: 'muted small' }, `Pays from your connected wallet (${wallet.connectedName()}).`)
            : h(
                'details',
                {},
                h('summary', {}, 'Choose the wallet to pay from'),
                walletPicker('The transfer carries your deposit code as its comment.', async (w) => {
                  depositWallet = w;
                  await pay();
                }),
              ),
          status,
          h('h3', {}, 'Or transfer by hand'),
          h('p', {}, 'Send TON to the address below with your code as the comment; it is credited once the transfer is confirmed.'),
          h('dl', { class: 'kv' }, h('dt', {}, 'Address'), h('dd', {}, h('code', { id: 'deposit-address' }, addr), copyButton(addr)), h('dt', {}, 'Comment'), h('dd', {}, h('code', { id: 'deposit-code' }, d.code), copyButton(d.code))),
          h('p', { class: 'small' }, h('a', { href: transferLink(toNano(amount.value) ?? '0') }, 'Open in a wallet app (ton:// link)')),
        ]
      : [h('p', {}, 'TON deposits are not enabled on this gateway. Your deposit code: ', h('code', { id: 'deposit-code' }, d.code))],
  );
  body.replaceChildren(balance, deposit);
}

// ---------------------------------------------------------------------------------------
// Usage

async function usageView(body: HTMLElement): Promise<void> {
  if (!config.billing_enabled) {
    body.replaceChildren(message('Billing is off on this gateway: usage is not recorded.', 'info'));
    return;
  }
  const u = await call<Usage>('GET', '/usage?days=30');
  const byModel = new Map<string, { requests: number; prompt: number; completion: number; charge: number }>();
  for (const r of u.daily) {
    const m = byModel.get(r.model) ?? { requests: 0, prompt: 0, completion: 0, charge: 0 };
    m.requests += r.requests;
    m.prompt += r.prompt_tokens;
    m.completion += r.completion_tokens;
    m.charge += r.charge;
    byModel.set(r.model, m);
  }
  const hasReceipts = u.recent.some((r) => r.receipt !== undefined);
  body.replaceChildren(
    h('section', { class: 'card' }, h('h2', {}, 'Usage, last 30 days'), usageChart(u)),
    h(
      'section',
      { class: 'card' },
      h('h3', {}, 'By model'),
      h(
        'table',
        { class: 'table', id: 'usage-by-model' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Model'), h('th', {}, 'Requests'), h('th', {}, 'Prompt tokens'), h('th', {}, 'Completion tokens'), h('th', {}, 'Cost, TON'))),
        h(
          'tbody',
          {},
          [...byModel.entries()].map(([m, v]) => h('tr', {}, h('td', {}, m), h('td', {}, v.requests), h('td', {}, v.prompt), h('td', {}, v.completion), h('td', {}, ton(v.charge)))),
        ),
      ),
    ),
    h(
      'section',
      { class: 'card' },
      h('h3', {}, 'Latest requests and receipts'),
      hasReceipts ? null : h('p', { class: 'muted small', id: 'receipts-note' }, 'Each request will come with a receipt signed by the worker that served it; they appear here once the gateway returns them.'),
      h(
        'table',
        { class: 'table', id: 'recent' },
        h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Model'), h('th', {}, 'Tokens'), h('th', {}, 'Cost, TON'), h('th', {}, 'Receipt'))),
        h(
          'tbody',
          {},
          u.recent.map((r) =>
            h(
              'tr',
              {},
              h('td', {}, date(r.created_at)),
              h('td', {}, r.model),
              h('td', {}, `${r.usage.prompt_tokens} + ${r.usage.completion_tokens}`),
              h('td', {}, r.charge_ton),
              h('td', {}, r.receipt === undefined ? '—' : h('details', {}, h('summary', {}, 'signed'), h('pre', {}, JSON.stringify(r.receipt, null, 2)))),
            ),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------
// Keys

async function keysView(body: HTMLElement): Promise<void> {
  const { data } = await call<{ data: Key[] }>('GET', '/keys');
  const name = h('input', { placeholder: 'Key name, e.g. my-bot', maxlength: 100, 'aria-label': 'Key name', id: 'new-key-name' });
  const created = h('div', { id: 'created-key' });
  const rows = data.map((k) => {
    const rename = async () => {
      const n = window.prompt('New name', k.name);
      if (n === null) return;
      try {
        await call('PATCH', `/keys/${k.id}`, { name: n });
        await keysView(body);
      } catch (e) {
        alert(errorText(e));
      }
    };
    const revoke = async () => {
      if (!window.confirm(`Revoke "${k.name}" (${k.prefix})? Requests with it fail at once, on every gateway.`)) return;
      await call('POST', `/keys/${k.id}/revoke`);
      await keysView(body);
    };
    return h(
      'tr',
      { 'data-key': k.id, class: k.revoked ? 'revoked' : '' },
      h('td', {}, k.name),
      h('td', {}, h('code', {}, k.prefix)),
      h('td', {}, date(k.created_at), h('span', { class: 'muted small' }, ` (${k.created_by})`)),
      h('td', {}, k.revoked ? h('span', { class: 'badge down' }, 'revoked') : h('span', { class: 'badge up' }, 'active')),
      h('td', { class: 'actions' }, k.revoked ? null : [h('button', { class: 'small', onclick: rename }, 'Rename'), h('button', { class: 'small danger', onclick: revoke }, 'Revoke')]),
    );
  });
  body.replaceChildren(
    h(
      'section',
      { class: 'card' },
      h('h2', {}, 'API keys'),
      h('p', { class: 'muted' }, 'Keys work with any OpenAI SDK: set the base URL to ', h('code', {}, `${location.origin}/v1`), '.'),
      h(
        'form',
        {
          class: 'row',
          onsubmit: async (e: Event) => {
            e.preventDefault();
            try {
              const c = await call<{ key: string }>('POST', '/keys', { name: name.value });
              await keysView(body);
              const btn: HTMLButtonElement = h('button', { class: 'small', onclick: () => copy(c.key, btn) }, 'Copy');
              body.querySelector('#created-key')?.replaceChildren(
                h('div', { class: 'notice info' }, h('p', {}, 'Your new key. It is shown this once; store it now:'), h('code', { class: 'secret', id: 'new-key' }, c.key), btn),
              );
            } catch (err) {
              created.replaceChildren(message(errorText(err)));
            }
          },
        },
        name,
        h('button', { type: 'submit', id: 'create-key' }, 'Create key'),
      ),
      created,
      h(
        'table',
        { class: 'table', id: 'keys' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Key'), h('th', {}, 'Created'), h('th', {}, 'State'), h('th', {}, ''))),
        h('tbody', {}, rows),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------
// Workers (GPU owners)

function explorer(hash: string): string {
  return config.explorer_tx_url.replace('{hash}', encodeURIComponent(hash));
}

function workerCard(w: Worker): HTMLElement {
  const s = w.status;
  const e = w.earnings;
  const status = h('div', { class: 'wallet-status' });
  const setAddress = walletPicker('Connect the wallet payouts should go to; it signs a proof that it is yours.', async (info, link) => {
    const proof = await wallet.connectWithProof(info, link);
    await call('POST', `/workers/${encodeURIComponent(s.worker_id)}/payout-address`, proof);
    status.replaceChildren(message('Payout address set.', 'info'));
    await workersView(document.querySelector('main') as HTMLElement);
  });
  const load = s.slots ? Math.min(100, s.load_percent) : 0;
  return h(
    'section',
    { class: `card worker ${s.health}`, 'data-worker': s.worker_id },
    h('div', { class: 'worker-head' }, h('h3', {}, s.worker_id), h('span', { class: `badge ${s.health}`, 'data-health': s.health }, s.health)),
    h(
      'dl',
      { class: 'kv' },
      h('dt', {}, 'Attested'),
      h('dd', {}, s.attested ? '✓ yes' : '✗ no', s.insecure_simulated ? h('span', { class: 'badge degraded' }, 'simulated TEE (dev only)') : null),
      h('dt', {}, 'TEE'),
      h('dd', {}, s.tee ?? '—'),
      h('dt', {}, 'Measurement'),
      h('dd', {}, s.measurement ? h('code', { title: s.measurement }, `${s.measurement.slice(0, 16)}…`) : '—'),
      h('dt', {}, 'Models'),
      h('dd', {}, s.models.join(', ') || '—'),
      h('dt', {}, 'Load'),
      h('dd', {}, h('span', { class: 'bar' }, h('i', { style: `width:${load}%` })), ` ${s.running} / ${s.slots} slots`, s.queued ? `, ${s.queued} queued` : '', s.kv_cache_permille !== null ? `, KV cache ${(s.kv_cache_permille / 10).toFixed(1)}%` : ''),
      h('dt', {}, 'Health'),
      h('dd', {}, s.health === 'up' ? 'serving' : s.health === 'down' ? 'not connected' : s.circuit_open ? 'paused after failures' : s.health === 'unknown' ? 'never seen by this gateway' : 'not taking jobs', s.ttft_ms !== null ? `, first token ≈ ${s.ttft_ms} ms` : ''),
      h('dt', {}, 'Last seen'),
      h('dd', { 'data-last-seen': s.last_seen_ms ?? '' }, ago(s.last_seen_ms)),
    ),
    e
      ? [
          h('div', { class: 'stats' }, h('div', { class: 'stat' }, h('span', { class: 'muted' }, 'Owed now'), h('strong', {}, e.balance_ton, h('small', {}, ' TON'))), h('div', { class: 'stat' }, h('span', { class: 'muted' }, 'Earned'), h('strong', {}, e.earned_ton, h('small', {}, ' TON'))), h('div', { class: 'stat' }, h('span', { class: 'muted' }, 'Jobs'), h('strong', {}, e.jobs))),
          h('p', {}, 'Payout address: ', e.payout_address ? h('code', { class: 'payout-address' }, e.payout_address) : h('span', { class: 'muted' }, 'not set')),
          h('details', {}, h('summary', {}, e.payout_address ? 'Change payout address' : 'Set payout address'), setAddress, status),
          e.payouts.length
            ? h(
                'table',
                { class: 'table payouts' },
                h('thead', {}, h('tr', {}, h('th', {}, 'Payout'), h('th', {}, 'TON'), h('th', {}, 'State'), h('th', {}, 'Transaction'))),
                h(
                  'tbody',
                  {},
                  e.payouts.map((p) => h('tr', {}, h('td', {}, `#${p.id} ${ago(p.created_at_ms)}`), h('td', {}, p.amount_ton), h('td', {}, p.status), h('td', {}, p.tx_hash ? h('a', { href: explorer(p.tx_hash), target: '_blank', rel: 'noopener' }, `${p.tx_hash.slice(0, 10)}…`) : '—'))),
                ),
              )
            : h('p', { class: 'muted small' }, 'No payouts yet.'),
        ]
      : null,
  );
}

async function workersView(body: HTMLElement, quiet = false): Promise<void> {
  const { data } = await call<{ data: Worker[] }>('GET', '/workers');
  if (quiet && body.querySelector('details[open]')) return; // do not close what the user opened
  body.replaceChildren(
    ...(data.length
      ? data.map(workerCard)
      : [h('section', { class: 'card' }, h('h2', {}, 'Workers'), h('p', {}, me?.via === 'ton' ? 'No worker pays out to this wallet yet. Sign in with your worker\'s API key and set this wallet as its payout address.' : 'This account operates no worker.'))]),
  );
}

// ---------------------------------------------------------------------------------------
// Start

async function main(): Promise<void> {
  const launch = tg.launch();
  if (launch) tg.start(launch);
  window.addEventListener('hashchange', () => me && show());
  try {
    config = await call<Config>('GET', '/config', undefined, false);
  } catch (e) {
    render(message(`The dashboard API is not reachable: ${errorText(e)}`));
    return;
  }
  document.title = `${config.app_name} dashboard`;
  if (token()) {
    await loadMe();
  } else if (launch && config.telegram_sign_in) {
    await signInWithTelegram(launch);
  } else {
    signInView();
  }
}

main().catch((e) => render(message(errorText(e))));
