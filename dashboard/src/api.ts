// The gateway's /v1/dashboard API (openapi/openapi.json, tag "dashboard"). The session token
// (or a pasted API key) lives in sessionStorage only: gone when the tab closes.

const TOKEN = 'cocoon.dashboard.token';

export class ApiError extends Error {
  constructor(public status: number, public code: string | null, message: string) {
    super(message);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(t: string | null): void {
  if (t) sessionStorage.setItem(TOKEN, t);
  else sessionStorage.removeItem(TOKEN);
}

export async function call<T>(method: string, path: string, body?: unknown, auth = true): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  const t = token();
  if (auth && t) headers.authorization = `Bearer ${t}`;
  const r = await fetch(`/v1/dashboard${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  if (!r.ok) {
    const e = json?.error;
    throw new ApiError(r.status, e?.code ?? null, e?.message ?? `${r.status} ${r.statusText}`);
  }
  return json as T;
}

export interface Config {
  app_name: string;
  telegram_sign_in: boolean;
  telegram_bot_username: string | null;
  ton_sign_in: boolean;
  ton_network: 'mainnet' | 'testnet';
  deposit_address: string | null;
  explorer_tx_url: string;
  billing_enabled: boolean;
}
export interface Session { token: string; expires_at: number; account: string; via: string; label: string }
export interface Me {
  account: string;
  via: 'telegram' | 'ton' | 'api_key';
  label: string;
  ton_address: string | null;
  telegram_user_id: number | null;
  identities: { provider: string; subject: string; label: string }[];
  workers: string[];
}
export interface Key {
  id: string;
  prefix: string;
  name: string;
  created_by: string;
  created_at: number;
  revoked: boolean;
  revoked_at: number | null;
}
export interface Balance {
  balance: { total: number; held: number; available: number; total_ton: string; held_ton: string; available_ton: string };
  deposit: { code: string; address: string | null; payload_boc: string; network: string };
}
export interface UsageRecord {
  job_id: string;
  model: string;
  usage: { prompt_tokens: number; completion_tokens: number; cached_prompt_tokens: number; reasoning_tokens: number };
  charge: number;
  charge_ton: string;
  created_at: number;
  /** Worker-signed receipt, once the usage API returns one. */
  receipt?: unknown;
}
export interface Usage {
  days: number;
  daily: { date: string; model: string; requests: number; prompt_tokens: number; completion_tokens: number; charge: number; charge_ton: string }[];
  recent: UsageRecord[];
}
export interface WorkerStatus {
  worker_id: string;
  health: 'up' | 'degraded' | 'down' | 'unknown';
  attested: boolean;
  tee: string | null;
  insecure_simulated: boolean;
  measurement: string | null;
  attestation_expires_at: number | null;
  models: string[];
  slots: number;
  running: number;
  queued: number;
  load_percent: number;
  engine_slots_busy: number | null;
  engine_slots_total: number | null;
  kv_cache_permille: number | null;
  circuit_open: boolean;
  ttft_ms: number | null;
  last_seen_ms: number | null;
}
export interface Payout {
  id: number;
  amount_ton: string;
  status: string;
  address: string;
  tx_hash: string | null;
  created_at_ms: number;
}
export interface Worker {
  status: WorkerStatus;
  earnings: { balance_ton: string; earned_ton: string; jobs: number; payout_address: string | null; payouts: Payout[] } | null;
}
export interface TonProofBody {
  address: string;
  network: string;
  public_key?: string;
  proof: { timestamp: number; domain: { lengthBytes: number; value: string }; payload: string; signature: string; state_init: string };
}
