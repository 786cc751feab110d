// A fake TON chain behind the toncenter v3 endpoints the gateway's deposit watcher and payout
// sender call (ton/src/api.rs): /api/v3/transactions, /walletInformation, /accountStates,
// /masterchainInfo and POST /api/v3/message. It holds the service wallet (v5r1).
//
// Shapes follow ton/tests/fixtures/deposits.json (recorded toncenter v3 transactions) and the
// Rust fake in ton/tests/common/fake_chain.rs, which this follows for payouts: an external
// message is parsed as a wallet v5r1 signed request (@ton/core `loadMessage`, `loadOutList`),
// its seqno must be the wallet's, and its transfers become the out_msgs of one transaction.
// It does not verify signatures (scripts/ton-tests runs the real contract in @ton/sandbox).

import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { Address, Cell, loadMessage, loadOutList } from '@ton/core';

const V5_SIGNED_EXTERNAL = 0x7369676e; // "sign"

export class FakeToncenter {
  constructor(walletRaw) {
    this.wallet = Address.parseRaw(walletRaw);
    this.seqno = 0;
    this.deployed = true;
    this.balance = 1_000_000_000_000n;
    this.now = Math.floor(Date.now() / 1000);
    this.mcSeqno = 40_000;
    this.nextLt = 50_000_000n;
    this.txs = [];
    this.posts = [];
  }

  raw(a) {
    return a.toRawString().toUpperCase();
  }

  pushTx(tx) {
    const lt = this.nextLt;
    this.nextLt += 10n;
    const hash = createHash('sha256').update(`tx-${lt}`).digest('base64');
    this.txs.push({
      account: this.raw(this.wallet),
      hash,
      lt: lt.toString(),
      now: Math.floor(Date.now() / 1000),
      mc_block_seqno: this.mcSeqno,
      ...tx,
    });
    this.mcSeqno += 1;
    return { hash, lt };
  }

  /**
   * An incoming non-bounceable transfer to the service wallet (a client's deposit), with the
   * phases the real chain gives it (ton/tests/fixtures/sandbox, made in @ton/sandbox): on an
   * undeployed wallet the compute phase is skipped (no_state) and the transaction aborted,
   * but the value is credited first and stays.
   */
  deposit({ from, amount, bodyBoc }) {
    const orig = this.deployed ? 'active' : this.balance > 0n ? 'uninit' : 'nonexist';
    this.balance += BigInt(amount);
    const credit = { credit: String(amount) };
    const description = this.deployed
      ? { type: 'ord', aborted: false, credit_first: true, credit_ph: credit, compute_ph: { skipped: false, success: true, exit_code: 0 }, action: { success: true, msgs_created: 0, tot_actions: 0 } }
      : { type: 'ord', aborted: true, credit_first: true, credit_ph: credit, compute_ph: { skipped: true, reason: 'no_state' } };
    return this.pushTx({
      orig_status: orig,
      end_status: this.deployed ? 'active' : 'uninit',
      in_msg: {
        source: this.raw(Address.parseRaw(from)),
        destination: this.raw(this.wallet),
        value: String(amount),
        bounce: false,
        bounced: false,
        message_content: { body: bodyBoc, decoded: null },
      },
      out_msgs: [],
      description,
    });
  }

  /** What the wallet contract does with an external message (see the header). */
  submit(boc) {
    const root = Cell.fromBase64(boc);
    const msg = loadMessage(root.beginParse());
    if (msg.info.type !== 'external-in') throw new Error('not an external inbound message');
    if (!msg.info.dest.equals(this.wallet)) throw new Error('message to another account');
    const body = msg.body.beginParse();
    if (body.loadUint(32) !== V5_SIGNED_EXTERNAL) throw new Error('not a v5r1 signed request');
    body.loadInt(32); // wallet_id
    const validUntil = body.loadUint(32);
    const seqno = body.loadUint(32);
    if (validUntil <= Math.floor(Date.now() / 1000)) throw new Error('expired (exit 36)');
    if (seqno !== this.seqno) throw new Error(`seqno ${seqno} != ${this.seqno} (exit 33)`);
    const actions = body.loadMaybeRef();
    const out = actions ? loadOutList(actions.beginParse()) : [];
    this.seqno += 1;
    const outMsgs = out
      .filter((a) => a.type === 'sendMsg')
      .map((a) => {
        const info = a.outMsg.info;
        this.balance -= info.value.coins;
        return {
          source: this.raw(this.wallet),
          destination: this.raw(info.dest),
          value: info.value.coins.toString(),
          bounce: info.bounce,
          bounced: false,
          message_content: { body: a.outMsg.body.toBoc().toString('base64'), decoded: null },
        };
      });
    this.pushTx({
      in_msg: { hash: root.hash().toString('base64'), source: null, destination: this.raw(this.wallet), value: null, message_content: { body: msg.body.toBoc().toString('base64') } },
      out_msgs: outMsgs,
      description: { aborted: false, compute_ph: { skipped: false, success: true, exit_code: 0 }, action: { success: true, msgs_created: outMsgs.length, tot_actions: outMsgs.length } },
    });
    return root.hash().toString('base64');
  }

  listen() {
    const server = createServer((req, res) => {
      const url = new URL(req.url, 'http://x');
      const send = (status, body) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.method === 'POST' && url.pathname === '/api/v3/message') {
        let data = '';
        req.on('data', (c) => (data += c));
        req.on('end', () => {
          try {
            const hash = this.submit(JSON.parse(data).boc);
            this.posts.push({ ok: true, hash });
            send(200, { message_hash: hash });
          } catch (e) {
            this.posts.push({ ok: false, error: String(e) });
            send(500, { error: String(e) });
          }
        });
        return;
      }
      if (url.pathname === '/api/v3/masterchainInfo') {
        return send(200, { last: { seqno: this.mcSeqno, gen_utime: Math.floor(Date.now() / 1000) } });
      }
      if (url.pathname === '/api/v3/walletInformation') {
        const last = this.txs[this.txs.length - 1];
        return send(200, {
          balance: this.balance.toString(),
          seqno: this.seqno,
          status: this.deployed ? 'active' : 'uninit',
          last_transaction_lt: last ? last.lt : '0',
          last_transaction_hash: last ? last.hash : null,
        });
      }
      if (url.pathname === '/api/v3/accountStates') {
        return send(200, { accounts: url.searchParams.getAll('address').map((a) => ({ address: a.toUpperCase(), status: 'active' })) });
      }
      if (url.pathname === '/api/v3/transactions') {
        const account = url.searchParams.get('account') ?? '';
        const start = BigInt(url.searchParams.get('start_lt') ?? '0');
        const end = url.searchParams.has('end_lt') ? BigInt(url.searchParams.get('end_lt')) : null;
        const limit = Number(url.searchParams.get('limit') ?? '100');
        const offset = Number(url.searchParams.get('offset') ?? '0');
        let list = this.txs.filter((t) => t.account === account.toUpperCase() && BigInt(t.lt) >= start && (end === null || BigInt(t.lt) <= end));
        if (url.searchParams.get('sort') === 'desc') list = [...list].reverse();
        return send(200, { transactions: list.slice(offset, offset + limit), address_book: {} });
      }
      send(404, { error: `not faked: ${url.pathname}` });
    });
    return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
  }
}
