// Executes the wallet messages Cocoon-rs built in Rust on the real wallet contracts in
// @ton/sandbox: each outgoing transfer's destination, amount, bounce flag and comment must
// be what the ledger's payouts say, and a replayed message must be refused. Also checks
// that the addresses Rust derives from the key are the ones @ton/ton derives.
// The fixtures come from `cargo test -p ton --test sandbox_fixtures` with TON_SANDBOX_OUT
// set (scripts/ton-tests does both).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Blockchain } from '@ton/sandbox';
import { Address, Cell, beginCell, storeMessage, toNano } from '@ton/core';
import { mnemonicToPrivateKey } from '@ton/crypto';
import { WalletContractV4, WalletContractV5R1 } from '@ton/ton';

const dir = process.env.TON_SANDBOX_OUT;
assert.ok(dir, 'TON_SANDBOX_OUT must name the directory the Rust side wrote fixtures.json to');
const fx = JSON.parse(readFileSync(join(dir, 'fixtures.json'), 'utf8'));

/** The text comment of a message body (op 0 + snake string), or null. */
function comment(body) {
  const s = body.beginParse();
  if (s.remainingBits < 32 || s.loadUint(32) !== 0) return null;
  return s.loadStringTail();
}

function isInternal(tx) {
  return tx.inMessage?.info.type === 'internal';
}

/** A sandbox with the service wallet funded (not deployed) and the second wallet deployed. */
async function setup() {
  const blockchain = await Blockchain.create();
  blockchain.now = fx.now;
  const treasury = await blockchain.treasury('funder');
  const service = Address.parseRaw(fx.v5r1_mainnet.raw);
  await treasury.send({ to: service, value: toNano('20000'), bounce: false });
  const kp2 = await mnemonicToPrivateKey(fx.second_mnemonic.split(' '));
  const second = blockchain.openContract(WalletContractV5R1.create({ workchain: 0, publicKey: kp2.publicKey }));
  assert.equal(second.address.toRawString(), fx.second_wallet);
  await treasury.send({ to: second.address, value: toNano('1'), init: second.init, bounce: false });
  assert.equal((await blockchain.getContract(second.address)).accountState?.type, 'active');
  return { blockchain, service, second };
}

/** Sends `batch.boc` and checks every transfer it must make; returns the transactions. */
async function execute(blockchain, service, batch, deployed) {
  const res = await blockchain.sendMessage(Cell.fromBase64(batch.boc));
  const ext = res.transactions[0];
  assert.equal(ext.inMessage.info.type, 'external-in');
  const executed = beginCell().store(storeMessage(ext.inMessage)).endCell();
  assert.equal(executed.hash().toString('hex'), batch.hash, 'the message hash Rust recorded');
  assert.ok(ext.inMessage.info.dest.equals(service));
  assert.equal(ext.description.computePhase.type, 'vm');
  assert.equal(ext.description.computePhase.success, true);
  assert.equal(ext.description.actionPhase.success, true);
  assert.equal(ext.outMessagesCount, batch.transfers.length, 'one internal message per transfer');

  const outgoing = [...ext.outMessages.values()];
  for (const t of batch.transfers) {
    const to = Address.parseRaw(t.to);
    const msg = outgoing.find((m) => m.info.dest.equals(to) && comment(m.body) === t.comment);
    assert.ok(msg, `transfer "${t.comment}" to ${t.to} was sent`);
    assert.equal(msg.info.type, 'internal');
    assert.ok(msg.info.src.equals(service));
    assert.equal(msg.info.value.coins, BigInt(t.amount), t.comment);
    assert.equal(msg.info.bounce, t.bounce, `bounce flag of "${t.comment}"`);
    // And it arrived.
    const arrived = res.transactions.find(
      (tx) => isInternal(tx) && tx.inMessage.info.dest.equals(to) && comment(tx.inMessage.body) === t.comment,
    );
    assert.ok(arrived, `"${t.comment}" executed at ${t.to}`);
    if (deployed.has(t.to)) {
      assert.equal(arrived.description.computePhase.type, 'vm');
      assert.equal(arrived.description.aborted, false);
    } else if (t.bounce) {
      // A bounceable transfer to an account that does not exist comes back.
      assert.equal(arrived.description.aborted, true);
      const back = res.transactions.find(
        (tx) => isInternal(tx) && tx.inMessage.info.bounced && tx.inMessage.info.src.equals(to),
      );
      assert.ok(back && back.inMessage.info.dest.equals(service), 'bounced back to the service wallet');
    } else {
      // Non-bounceable: the money stays at the (now uninitialised) account.
      const bounced = res.transactions.some((tx) => isInternal(tx) && tx.inMessage.info.bounced && tx.inMessage.info.src.equals(to));
      assert.equal(bounced, false);
      const acc = await blockchain.getContract(to);
      assert.ok(acc.balance > 0n);
    }
  }
  return res;
}

test('addresses derived in Rust equal the ones @ton/ton derives', async () => {
  const kp = await mnemonicToPrivateKey(fx.mnemonic.split(' '));
  assert.equal(Buffer.from(kp.publicKey).toString('hex'), fx.public_key);

  const v5 = WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey });
  assert.equal(v5.address.toRawString(), fx.v5r1_mainnet.raw);
  assert.equal(v5.address.toString({ bounceable: false, testOnly: false }), fx.v5r1_mainnet.friendly);

  const v5t = WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey, walletId: { networkGlobalId: -3 } });
  assert.equal(v5t.address.toRawString(), fx.v5r1_testnet.raw);
  assert.equal(v5t.address.toString({ bounceable: false, testOnly: true }), fx.v5r1_testnet.friendly);
  assert.notEqual(fx.v5r1_mainnet.raw, fx.v5r1_testnet.raw);
  assert.equal(fx.v5r1_mainnet.wallet_id, 0x7fffff11);
  assert.equal(fx.v5r1_testnet.wallet_id, 0x7ffffffd);

  const v4 = WalletContractV4.create({ workchain: 0, publicKey: kp.publicKey });
  assert.equal(v4.address.toRawString(), fx.v4r2_mainnet.raw);
  assert.equal(v4.address.toString({ bounceable: true, testOnly: false }), fx.v4r2_mainnet.friendly);
  assert.equal(fx.v4r2_mainnet.wallet_id, v4.walletId);
});

test('payout batches built in Rust run on the real wallet v5r1, once', async () => {
  const { blockchain, service, second } = await setup();
  const deployed = new Set([second.address.toRawString()]);
  const kp = await mnemonicToPrivateKey(fx.mnemonic.split(' '));
  const wallet = blockchain.openContract(WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey }));
  assert.ok(wallet.address.equals(service));

  for (const [i, batch] of fx.batches.entries()) {
    assert.equal(batch.seqno, i);
    await execute(blockchain, service, batch, deployed);
    assert.equal(await wallet.getSeqno(), i + 1);
    // A replay of the same message is refused (seqno already used).
    await assert.rejects(blockchain.sendMessage(Cell.fromBase64(batch.boc)));
    assert.equal(await wallet.getSeqno(), i + 1);
  }
  // The long comment spans several cells and decodes to the same text.
  const long = fx.batches[3].transfers[0].comment;
  assert.ok(Buffer.byteLength(long) > 127);

  // A message past its valid_until is refused even with the right seqno.
  assert.equal(fx.expired.seqno, fx.batches.length);
  await assert.rejects(blockchain.sendMessage(Cell.fromBase64(fx.expired.boc)));
  assert.equal(await wallet.getSeqno(), fx.batches.length);
});

test('a wallet v4r2 message built in Rust runs on the real wallet v4r2', async () => {
  const blockchain = await Blockchain.create();
  blockchain.now = fx.now;
  const treasury = await blockchain.treasury('funder');
  const v4 = Address.parseRaw(fx.v4r2_mainnet.raw);
  await treasury.send({ to: v4, value: toNano('10'), bounce: false });
  await execute(blockchain, v4, fx.v4r2_batch, new Set());
  await assert.rejects(blockchain.sendMessage(Cell.fromBase64(fx.v4r2_batch.boc)));
});

test('the deploy message built in Rust (cocoon ton deploy-wallet) deploys the real wallet v5r1, once', async () => {
  const blockchain = await Blockchain.create();
  blockchain.now = fx.now;
  const treasury = await blockchain.treasury('funder');
  const service = Address.parseRaw(fx.v5r1_mainnet.raw);
  await treasury.send({ to: service, value: toNano('1'), bounce: false });
  assert.equal((await blockchain.getContract(service)).accountState?.type, 'uninit');

  const res = await blockchain.sendMessage(Cell.fromBase64(fx.deploy.boc));
  const ext = res.transactions[0];
  const executed = beginCell().store(storeMessage(ext.inMessage)).endCell();
  assert.equal(executed.hash().toString('hex'), fx.deploy.hash);
  assert.equal(ext.oldStatus, 'uninitialized');
  assert.equal(ext.endStatus, 'active');
  assert.equal(ext.description.computePhase.type, 'vm');
  assert.equal(ext.description.computePhase.success, true);
  assert.equal(ext.description.actionPhase.success, true);
  // One zero-value, non-bounceable transfer to itself with the deploy comment.
  assert.equal(ext.outMessagesCount, 1);
  const self = ext.outMessages.get(0);
  assert.ok(self.info.dest.equals(service));
  assert.equal(self.info.value.coins, 0n);
  assert.equal(self.info.bounce, false);
  assert.equal(comment(self.body), fx.deploy.comment);

  const kp = await mnemonicToPrivateKey(fx.mnemonic.split(' '));
  const wallet = blockchain.openContract(WalletContractV5R1.create({ workchain: 0, publicKey: kp.publicKey }));
  assert.equal(await wallet.getSeqno(), 1);
  const acc = await blockchain.getContract(service);
  assert.ok(acc.balance > toNano('0.99'), `only fees were spent: ${acc.balance}`);
  // Sent again (e.g. by a second run), it is refused: seqno 0 is used.
  await assert.rejects(blockchain.sendMessage(Cell.fromBase64(fx.deploy.boc)));
  assert.equal(await wallet.getSeqno(), 1);
});
