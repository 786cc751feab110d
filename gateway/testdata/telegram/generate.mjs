// Writes init_data.json: Telegram Mini App initData test vectors for gateway/src/dashboard/telegram.rs.
//
//   cd gateway/testdata && npm ci && node telegram/generate.mjs
//
// Signed with @telegram-apps/init-data-node (the version pinned in ../package.json) using a
// made-up test bot token; every valid case is checked with the library's own `validate`, every
// invalid one must fail it. The third-party (Ed25519) case is a real initData signed by
// Telegram's production key, copied from that library's test suite
// (Telegram-Mini-Apps/telegram-apps, packages/init-data-node/src/entries/shared.test.ts) and
// checked here with the library's `validate3rd`.

import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sign, validate, validate3rd } from '@telegram-apps/init-data-node';

const BOT_TOKEN = '7000000001:AAFakeTestTokenForCocoonDashboardVectors';
// A fixed "now" so the vectors do not age; the Rust test verifies at this time.
const NOW = 1_750_000_000;
const at = (secs) => new Date(secs * 1000);

const user = {
  id: 123456789,
  first_name: 'Ada',
  last_name: 'Lovelace',
  username: 'ada_test',
  language_code: 'en',
  allows_write_to_pm: true,
};

const valid = [
  { name: 'private chat', data: { user, chat_instance: '-8134722200314281151', chat_type: 'private', query_id: 'AAHdF6IQAAAAAN0XohDhrOrc' }, authDate: NOW - 30 },
  // Characters that need URL encoding, in the user's name and in start_param.
  { name: 'escaped fields', data: { user: { ...user, id: 42, first_name: 'Vlad + - ? \\/ &=', username: undefined }, chat_type: 'sender', start_param: 'ref_a-b' }, authDate: NOW - 3599 },
  { name: 'signed a bit ahead of our clock', data: { user: { ...user, id: 7 } }, authDate: NOW + 30 },
];

const signed = valid.map(({ name, data, authDate }) => {
  const init_data = sign(data, BOT_TOKEN, at(authDate));
  // The library's own check, at our fixed time.
  validate(init_data, BOT_TOKEN, { expiresIn: 0 });
  return { name, init_data, user_id: data.user.id };
});

const base = signed[0].init_data;
const replace = (q, key, value) => {
  const p = new URLSearchParams(q);
  p.set(key, value);
  return p.toString();
};
const drop = (q, key) => {
  const p = new URLSearchParams(q);
  p.delete(key);
  return p.toString();
};
const tamperedUser = replace(base, 'user', JSON.stringify({ ...user, id: 1 }));
const invalid = [
  { name: 'edited user', init_data: tamperedUser, error: 'bad_hash' },
  { name: 'other bot token', init_data: sign(valid[0].data, '7000000002:AAOtherBot', at(NOW - 30)), error: 'bad_hash' },
  { name: 'no hash', init_data: drop(base, 'hash'), error: 'missing_hash' },
  { name: 'hash not hex', init_data: replace(base, 'hash', 'zz'), error: 'bad_hash' },
  { name: 'expired', init_data: sign(valid[0].data, BOT_TOKEN, at(NOW - 3601)), error: 'expired' },
  { name: 'from the future', init_data: sign(valid[0].data, BOT_TOKEN, at(NOW + 3600)), error: 'future' },
  { name: 'no user', init_data: sign({ chat_type: 'private' }, BOT_TOKEN, at(NOW - 5)), error: 'no_user' },
];
for (const c of invalid) {
  let failed = false;
  try {
    // expiresIn 0: the library skips freshness, so the time cases pass here; our check is stricter.
    validate(c.init_data, BOT_TOKEN, { expiresIn: 0 });
  } catch {
    failed = true;
  }
  const timeOnly = c.error === 'expired' || c.error === 'future' || c.error === 'no_user';
  if (failed === timeOnly) throw new Error(`unexpected library verdict for "${c.name}"`);
}

// Real initData signed by Telegram (production key) for bot 7342037359; see the header.
const thirdParty = {
  bot_id: 7342037359,
  init_data:
    'user=%7B%22id%22%3A279058397%2C%22first_name%22%3A%22Vladislav%20%2B%20-%20%3F%20%5C%2F%22%2C%22last_name%22%3A%22Kibenko%22%2C%22username%22%3A%22vdkfrost%22%2C%22language_code%22%3A%22ru%22%2C%22is_premium%22%3Atrue%2C%22allows_write_to_pm%22%3Atrue%2C%22photo_url%22%3A%22https%3A%5C%2F%5C%2Ft.me%5C%2Fi%5C%2Fuserpic%5C%2F320%5C%2F4FPEE4tmP3ATHa57u6MqTDih13LTOiMoKoLDRG4PnSA.svg%22%7D&chat_instance=8134722200314281151&chat_type=private&auth_date=1733584787&signature=zL-ucjNyREiHDE8aihFwpfR9aggP2xiAo3NSpfe-p7IbCisNlDKlo7Kb6G4D0Ao2mBrSgEk4maLSdv6MLIlADQ&hash=2174df5b000556d044f3f020384e879c8efcab55ddea2ced4eb752e93e7080d6',
  auth_date: 1733584787,
  user_id: 279058397,
};
await validate3rd(thirdParty.init_data, thirdParty.bot_id, { expiresIn: 0 });
let otherBot = false;
try {
  await validate3rd(thirdParty.init_data, thirdParty.bot_id + 1, { expiresIn: 0 });
} catch {
  otherBot = true;
}
if (!otherBot) throw new Error('validate3rd accepted the wrong bot id');

const out = {
  generator: 'gateway/testdata/telegram/generate.mjs with @telegram-apps/init-data-node 2.0.10',
  bot_token: BOT_TOKEN,
  now: NOW,
  valid: signed,
  invalid,
  third_party: thirdParty,
};
writeFileSync(fileURLToPath(new URL('./init_data.json', import.meta.url)), JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${signed.length} valid, ${invalid.length} invalid, 1 third-party vector`);
