// Makes real transactions on the service wallet (wallet v5r1) in @ton/sandbox and writes
// them in the shape of toncenter's `GET /api/v3/transactions` (field names, encodings and
// types as toncenter/ton-indexer's `ton-index-go/index/models/blockchain.go` serialises
// them), so that the Rust deposit watcher is tested on what the chain really does:
//
//   1. non-bounceable 2 TON + comment to the undeployed (nonexist) wallet: aborted, compute
//      skipped (no_state), the value stays on the (now uninit) account;
//   2. bounceable 1 TON + comment to the still undeployed (uninit) wallet: aborted, compute
//      skipped, bounce phase ok: the value goes back;
//   3. the wallet deploys itself (external message with state init and a zero-value
//      self-transfer) and receives that self-transfer (compute skipped: no_gas, aborted);
//   4. bounceable 3 TON + comment to the deployed wallet: compute and action succeed;
//   5. bounceable 1 TON carrying a signed-internal request with a used seqno: compute fails
//      (wallet v5r1 exit code 133, invalid seqno), aborted, bounced back.
//
// Usage: node make-fixtures.js OUT_DIR  (writes OUT_DIR/transactions.json). The output is
// deterministic (fixed keys, fixed chain time); scripts/ton-tests regenerates it and
// compares it with ton/tests/fixtures/sandbox/transactions.json.
//
// What sandbox cannot give (no masterchain): `mc_block_seqno`, `block_ref` and `trace_id`
// are synthetic (one masterchain block per transaction, starting at MC_BASE). Everything
// else comes from the executed transaction. Sandbox starts a never-used address as
// `uninit` with balance 0 where the real chain says `nonexist`
// (ton/tests/fixtures/real/ has the real chain's spelling).

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Blockchain } from '@ton/sandbox';
import { beginCell, internal, storeMessage, toNano, SendMode } from '@ton/core';
import { mnemonicToPrivateKey } from '@ton/crypto';
import { WalletContractV5R1 } from '@ton/ton';

// tonlib-core's test mnemonic, as ton/tests/sandbox_fixtures.rs uses for the service wallet.
const WORDS =
  'section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug';
const NOW = 1_700_000_000;
const MC_BASE = 1000;
export const CODE_A = 'AAAA1111';
export const CODE_B = 'BBBB2222';

const b64 = (buf) => Buffer.from(buf).toString('base64');
const str = (v) => (v === undefined || v === null ? null : v.toString());
const hash256 = (n) => b64(typeof n === 'bigint' ? Buffer.from(n.toString(16).padStart(64, '0'), 'hex') : n);
const raw = (a) => (a ? `${a.workChain}:${a.hash.toString('hex').toUpperCase()}` : null);

function comment(text) {
  return beginCell().storeUint(0, 32).storeStringTail(text).endCell();
}

/** toncenter's `account_status` spelling of a sandbox account status. */
function status(s) {
  return { uninitialized: 'uninit', active: 'active', frozen: 'frozen', 'non-existing': 'nonexist' }[s];
}

/** `message_content`: BOC with CRC32C (as toncenter serves it), opcode, decoded comment. */
function content(body) {
  let opcode = null;
  let decoded = null;
  const s = body.beginParse();
  if (s.remainingBits >= 32) {
    const op = s.loadUint(32);
    opcode = '0x' + op.toString(16).padStart(8, '0');
    if (op === 0) {
      try {
        decoded = { type: 'text_comment', comment: s.loadStringTail() };
      } catch {
        decoded = null;
      }
    }
  }
  return {
    opcode,
    message_content: { hash: b64(body.hash()), body: body.toBoc().toString('base64'), decoded },
  };
}

function message(m) {
  const hash = b64(beginCell().store(storeMessage(m)).endCell().hash());
  const { opcode, message_content } = content(m.body);
  const i = m.info;
  const init = m.init
    ? (() => {
        const c = beginCell()
          .storeBit(0).storeBit(0).storeBit(1).storeRef(m.init.code).storeBit(1).storeRef(m.init.data).storeBit(0)
          .endCell();
        return { hash: b64(c.hash()), body: c.toBoc().toString('base64'), decoded: null };
      })()
    : null;
  if (i.type === 'internal') {
    return {
      hash,
      source: raw(i.src),
      destination: raw(i.dest),
      value: str(i.value.coins),
      value_extra_currencies: {},
      fwd_fee: str(i.forwardFee),
      ihr_fee: str(i.ihrFee),
      created_lt: str(i.createdLt),
      created_at: str(i.createdAt),
      opcode,
      ihr_disabled: i.ihrDisabled,
      bounce: i.bounce,
      bounced: i.bounced,
      import_fee: null,
      message_content,
      init_state: init,
    };
  }
  // external-in: toncenter also lists the normalised hash (TEP-467) for these.
  return {
    hash,
    source: null,
    destination: raw(i.dest),
    value: null,
    value_extra_currencies: null,
    fwd_fee: null,
    ihr_fee: null,
    created_lt: null,
    created_at: null,
    opcode,
    ihr_disabled: null,
    bounce: null,
    bounced: null,
    import_fee: str(i.importFee),
    message_content,
    init_state: init,
  };
}

function description(d) {
  const out = { type: 'ord', aborted: d.aborted, destroyed: d.destroyed, credit_first: d.creditFirst };
  if (d.storagePhase) {
    out.storage_ph = {
      storage_fees_collected: str(d.storagePhase.storageFeesCollected),
      ...(d.storagePhase.storageFeesDue != null ? { storage_fees_due: str(d.storagePhase.storageFeesDue) } : {}),
      status_change: d.storagePhase.statusChange,
    };
  }
  if (d.creditPhase) {
    const due = d.creditPhase.dueFeesColelcted ?? d.creditPhase.dueFeesCollected;
    out.credit_ph = {
      ...(due != null ? { due_fees_collected: str(due) } : {}),
      credit: str(d.creditPhase.credit.coins),
    };
  }
  const c = d.computePhase;
  out.compute_ph =
    c.type === 'skipped'
      ? { skipped: true, reason: c.reason.replace('-', '_') }
      : {
          skipped: false,
          success: c.success,
          msg_state_used: c.messageStateUsed,
          account_activated: c.accountActivated,
          gas_fees: str(c.gasFees),
          gas_used: str(c.gasUsed),
          gas_limit: str(c.gasLimit),
          ...(c.gasCredit != null ? { gas_credit: str(c.gasCredit) } : {}),
          mode: c.mode,
          exit_code: c.exitCode,
          ...(c.exitArg != null ? { exit_arg: c.exitArg } : {}),
          vm_steps: c.vmSteps,
          vm_init_state_hash: hash256(c.vmInitStateHash),
          vm_final_state_hash: hash256(c.vmFinalStateHash),
        };
  if (d.actionPhase) {
    const a = d.actionPhase;
    out.action = {
      success: a.success,
      valid: a.valid,
      no_funds: a.noFunds,
      status_change: a.statusChange,
      ...(a.totalFwdFees != null ? { total_fwd_fees: str(a.totalFwdFees) } : {}),
      ...(a.totalActionFees != null ? { total_action_fees: str(a.totalActionFees) } : {}),
      result_code: a.resultCode,
      ...(a.resultArg != null ? { result_arg: a.resultArg } : {}),
      tot_actions: a.totalActions,
      spec_actions: a.specActions,
      skipped_actions: a.skippedActions,
      msgs_created: a.messagesCreated,
      action_list_hash: hash256(a.actionListHash),
      tot_msg_size: { cells: str(a.totalMessageSize.cells), bits: str(a.totalMessageSize.bits) },
    };
  }
  if (d.bouncePhase) {
    const b = d.bouncePhase;
    out.bounce =
      b.type === 'ok'
        ? {
            type: 'ok',
            msg_size: { cells: str(b.messageSize.cells), bits: str(b.messageSize.bits) },
            msg_fees: str(b.messageFees),
            fwd_fees: str(b.forwardFees),
          }
        : b.type === 'no-funds'
          ? {
              type: 'nofunds',
              msg_size: { cells: str(b.messageSize.cells), bits: str(b.messageSize.bits) },
              req_fwd_fees: str(b.requiredForwardFees),
            }
          : { type: 'negfunds' };
  }
  return out;
}

/** The account's state as `account_state_before/after` lists it. */
async function snapshot(blockchain, addr) {
  const c = await blockchain.getContract(addr);
  const st = c.accountState;
  const active = st?.type === 'active';
  return {
    balance: st ? c.balance.toString() : null,
    account_status: st ? status(st.type === 'uninit' ? 'uninitialized' : st.type) : null,
    frozen_hash: st?.type === 'frozen' ? b64(Buffer.from(st.stateHash)) : null,
    code_hash: active && st.state.code ? b64(st.state.code.hash()) : null,
    data_hash: active && st.state.data ? b64(st.state.data.hash()) : null,
  };
}

/** Runs `send` and returns the service wallet's transactions it caused, toncenter-shaped. */
async function record(blockchain, service, send, out) {
  const before = await snapshot(blockchain, service);
  const res = await send();
  const after = await snapshot(blockchain, service);
  const mine = res.transactions.filter((t) => t.inMessage && t.inMessage.info.dest?.equals?.(service));
  for (const [k, t] of mine.entries()) {
    const seq = MC_BASE + out.length;
    const hash = b64(t.hash());
    out.push({
      account: raw(service),
      hash,
      lt: t.lt.toString(),
      now: t.now,
      mc_block_seqno: seq,
      trace_id: b64(res.transactions[0].hash()),
      prev_trans_hash: hash256(t.prevTransactionHash),
      prev_trans_lt: t.prevTransactionLt.toString(),
      orig_status: status(t.oldStatus),
      end_status: status(t.endStatus),
      total_fees: t.totalFees.coins.toString(),
      total_fees_extra_currencies: {},
      description: description(t.description),
      block_ref: { workchain: 0, shard: '8000000000000000', seqno: 40_000 + seq },
      in_msg: message(t.inMessage),
      out_msgs: [...t.outMessages.values()].map(message),
      // Exact before the first and after the last of this send's transactions on the wallet.
      account_state_before: k === 0 ? { hash: hash256(t.stateUpdate.oldHash), ...before } : null,
      account_state_after: k === mine.length - 1 ? { hash: hash256(t.stateUpdate.newHash), ...after } : null,
      emulated: false,
    });
  }
  return res;
}

export async function makeTransactions() {
  const blockchain = await Blockchain.create();
  blockchain.now = NOW;
  const treasury = await blockchain.treasury('depositor');
  const kp = await mnemonicToPrivateKey(WORDS.split(' '));
  const wallet = blockchain.openContract(WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey }));
  const service = wallet.address;
  const txs = [];
  const step = (fn) => record(blockchain, service, fn, txs);

  // 1. non-bounceable deposit into the nonexist wallet
  await step(() => treasury.send({ to: service, value: toNano('2'), bounce: false, body: comment(CODE_A) }));
  // 2. bounceable deposit into the uninit wallet: bounces
  await step(() => treasury.send({ to: service, value: toNano('1'), bounce: true, body: comment(CODE_B) }));
  // 3. deploy: state init + zero-value self-transfer
  blockchain.now = NOW + 60;
  await step(() =>
    wallet.sendTransfer({
      seqno: 0,
      secretKey: kp.secretKey,
      timeout: NOW + 600, // valid_until; @ton/ton's default depends on the wall clock
      sendMode: SendMode.PAY_GAS_SEPARATELY + SendMode.IGNORE_ERRORS,
      messages: [internal({ to: service, value: 0n, bounce: false })],
    }),
  );
  // 4. bounceable deposit into the deployed wallet
  await step(() => treasury.send({ to: service, value: toNano('3'), bounce: true, body: comment(CODE_A) }));
  // 5. a failing transaction: a signed internal request with a used seqno (exit 133), bounceable
  const request = await wallet.createTransfer({
    seqno: 0,
    secretKey: kp.secretKey,
    authType: 'internal',
    timeout: NOW + 600,
    sendMode: SendMode.PAY_GAS_SEPARATELY,
    messages: [internal({ to: treasury.address, value: toNano('0.5'), bounce: false })],
  });
  await step(() => treasury.send({ to: service, value: toNano('1'), bounce: true, body: request }));
  return { service, txs, wallet: await wallet.getSeqno() };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node make-fixtures.js OUT_DIR');
    process.exit(2);
  }
  const { txs } = await makeTransactions();
  mkdirSync(dir, { recursive: true });
  const body = { transactions: txs, address_book: {} };
  writeFileSync(join(dir, 'transactions.json'), JSON.stringify(body, null, 2) + '\n');
  console.error(`wrote ${txs.length} transactions to ${join(dir, 'transactions.json')}`);
}
