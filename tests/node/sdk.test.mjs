// Cocoon-rs with the official OpenAI Node SDK (node:test + node:assert).
// Environment: COCOON_BASE_URL, COCOON_API_KEY, COCOON_MODEL, COCOON_GATEWAY (see ../python/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = (process.env.COCOON_BASE_URL ?? 'http://127.0.0.1:18080/v1').replace(/\/+$/, '');
const apiKey = process.env.COCOON_API_KEY ?? 'sk-cocoon-unset';
const model = process.env.COCOON_MODEL ?? 'cocoon-test';
const gateway = process.env.COCOON_GATEWAY === '1';

const TIMEOUT_MS = 30_000;
const messages = [{ role: 'user', content: 'Say hello to the test engine' }];
const PROMPT_TOKENS = 6 + 3; // words + 3 per message, per the test engine's contract

// maxRetries: 0 so 429/5xx surface instead of being retried silently; every call times out.
const makeClient = (key = apiKey) => new OpenAI({ apiKey: key, baseURL, maxRetries: 0, timeout: TIMEOUT_MS });
const client = makeClient();

test('models.list contains the model', { timeout: TIMEOUT_MS }, async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, 'model');
    ids.push(m.id);
  }
  assert.ok(ids.includes(model), `models: ${ids.join(', ')}`);
});

test('chat completion (non-stream)', { timeout: TIMEOUT_MS }, async () => {
  const r = await client.chat.completions.create({ model, messages, seed: 7 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  const [choice] = r.choices;
  assert.equal(choice.index, 0);
  assert.equal(choice.message.role, 'assistant');
  assert.equal(typeof choice.message.content, 'string');
  assert.ok(choice.message.content.length > 0);
  assert.ok(['stop', 'length'].includes(choice.finish_reason));
  assert.equal(r.usage.prompt_tokens, PROMPT_TOKENS);
  assert.equal(r.usage.completion_tokens, choice.message.content.split(/\s+/).filter(Boolean).length);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat completion stream with include_usage', { timeout: TIMEOUT_MS }, async () => {
  const plain = await client.chat.completions.create({ model, messages, seed: 7 });

  const stream = await client.chat.completions.create({
    model, messages, seed: 7, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);

  assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
  const last = chunks.at(-1);
  const body = chunks.slice(0, -1);
  assert.deepEqual(last.choices, [], 'the final chunk carries only usage');
  assert.ok(last.usage, 'the final chunk carries usage');
  for (const c of body) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.usage ?? null, null, 'only the final chunk carries usage');
  }
  assert.equal(body[0].choices[0].delta.role, 'assistant');

  const text = body.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  const finish = body.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
  assert.equal(text, plain.choices[0].message.content, 'streamed text equals the non-stream text for the same seed');
  assert.deepEqual(finish, [plain.choices[0].finish_reason]);
  assert.equal(last.usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(last.usage.completion_tokens, plain.usage.completion_tokens);
  assert.equal(last.usage.total_tokens, plain.usage.total_tokens);
});

test('a bad API key raises AuthenticationError', { timeout: TIMEOUT_MS, skip: !gateway && 'gateway-only (COCOON_GATEWAY != 1)' }, async () => {
  const bad = makeClient('sk-cocoon-not-a-real-key');
  await assert.rejects(
    bad.chat.completions.create({ model, messages }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 401);
      assert.equal(err.code, 'invalid_api_key');
      assert.equal(err.type, 'invalid_request_error');
      assert.ok(err.requestID, 'x-request-id is exposed as err.requestID');
      return true;
    },
  );
});

// The Responses API: served by the gateway (the worker translates it to the engine's chat completions).
const gatewayOnly = !gateway && 'gateway-only (COCOON_GATEWAY != 1)';

test('responses.create', { timeout: TIMEOUT_MS, skip: gatewayOnly }, async () => {
  const r = await client.responses.create({ model, input: 'Say hello', instructions: 'Be brief.', max_output_tokens: 64 });
  assert.equal(r.object, 'response');
  assert.ok(r.id.startsWith('resp_'));
  assert.equal(r.status, 'completed');
  assert.ok(r.output_text.length > 0);
  assert.equal(r.usage.output_tokens, r.output_text.split(/\s+/).filter(Boolean).length);
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
});

test('responses.stream', { timeout: TIMEOUT_MS, skip: gatewayOnly }, async () => {
  const stream = client.responses.stream({ model, input: 'Tell me a story', max_output_tokens: 64 });
  const events = [];
  let text = '';
  for await (const e of stream) {
    events.push(e);
    if (e.type === 'response.output_text.delta') text += e.delta;
  }
  const final = await stream.finalResponse();
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  assert.equal(events[0].type, 'response.created');
  assert.equal(events.at(-1).type, 'response.completed');
  assert.equal(final.output_text, text);
  assert.ok(text.length > 0);
});
