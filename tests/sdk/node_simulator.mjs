#!/usr/bin/env node
// Build an app against `keyless serve --simulate` with the official OpenAI Node SDK.
//
//     node node_simulator.mjs BASE_URL
//
// What agents and frameworks rely on, end to end through keyless and the simulator: the
// tool-calling loop (by hand and with the SDK's runTools), structured output with
// `.parse()` and a plain json_schema (zod is an optional peer of the SDK and is not
// installed), n, legacy completions, models, images, files, batches, audio, the Responses
// lifecycle and the fault-injection headers. Each check prints `ok   NAME` or
// `FAIL NAME: why`; the exit status is 1 when any failed. Driven by tests/sdk.rs.

import OpenAI, { AzureOpenAI, BadRequestError, NotFoundError, InternalServerError, toFile } from 'openai';
import { VERSION } from 'openai/version';

const REPLY = 'Keyless relayed this answer from the simulated Azure deployment intact.';
const TIMEOUT_MS = 30_000;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const WEATHER_PARAMETERS = {
  type: 'object',
  properties: {
    city: { type: 'string' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  },
  required: ['city', 'unit'],
  additionalProperties: false,
};
const WEATHER_TOOL = { type: 'function', function: { name: 'get_weather', parameters: WEATHER_PARAMETERS } };

class Mismatch extends Error {}

function expect(condition, message) {
  if (!condition) throw new Mismatch(message);
}

function expectEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Mismatch(`${what}: expected ${e}, got ${a}`);
}

async function expectError(promise, kind, what) {
  try {
    await promise;
  } catch (e) {
    if (e instanceof kind) return e;
    throw e;
  }
  throw new Mismatch(`${what}: expected ${kind.name}, got a success`);
}

/** Polls `fetch()` until `done(value)`; a bounded number of tries, not a timed assertion. */
async function waitFor(fetch, done, what) {
  let value;
  for (let i = 0; i < 300; i++) {
    value = await fetch();
    if (done(value)) return value;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Mismatch(`${what} never finished; last seen ${JSON.stringify(value)}`);
}

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!base) {
  console.error('usage: node node_simulator.mjs BASE_URL');
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', timeout: TIMEOUT_MS });
const user = (content) => [{ role: 'user', content }];

const checks = {
  // ---- chat: tools and structured output ------------------------------------------------
  async tool_calling_loop() {
    const messages = user('What is the weather in Paris?');
    const first = await client.chat.completions.create({ model: 'gpt-4o', messages, tools: [WEATHER_TOOL] });
    const choice = first.choices[0];
    expectEq(choice.finish_reason, 'tool_calls', 'finish_reason of the call');
    const call = choice.message.tool_calls?.[0];
    expectEq(call?.function?.name, 'get_weather', 'called tool');
    const args = JSON.parse(call.function.arguments);
    expect(typeof args.city === 'string' && ['celsius', 'fahrenheit'].includes(args.unit), `arguments ${call.function.arguments}`);
    messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: '22 degrees and sunny' });
    const final = await client.chat.completions.create({ model: 'gpt-4o', messages, tools: [WEATHER_TOOL] });
    expectEq(final.choices[0].finish_reason, 'stop', 'finish_reason of the final answer');
    expect(final.choices[0].message.content.includes('22 degrees and sunny'), `final text: ${final.choices[0].message.content}`);
  },

  async run_tools_helper() {
    const seen = [];
    const runner = client.chat.completions.runTools({
      model: 'gpt-4o',
      messages: user('Weather in Oslo?'),
      tools: [
        {
          type: 'function',
          function: {
            name: 'get_weather',
            parameters: WEATHER_PARAMETERS,
            parse: JSON.parse,
            function: (args) => {
              seen.push(args);
              return `it is cold in ${args.city}`;
            },
          },
        },
      ],
    });
    const content = await runner.finalContent();
    expectEq(seen.length, 1, 'the tool ran once');
    expect(content.includes(`it is cold in ${seen[0].city}`), `final content: ${content}`);
  },

  async streamed_tool_call() {
    const stream = await client.chat.completions.create(
      { model: 'gpt-4o', messages: user('weather?'), tools: [WEATHER_TOOL], stream: true },
      { headers: { 'x-sim-chunks': '4' } },
    );
    let name = '';
    let args = '';
    let ids = 0;
    let finish;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        for (const delta of choice.delta?.tool_calls ?? []) {
          if (delta.id) ids += 1;
          name += delta.function?.name ?? '';
          args += delta.function?.arguments ?? '';
        }
        finish = choice.finish_reason ?? finish;
      }
    }
    expectEq([name, ids, finish], ['get_weather', 1, 'tool_calls'], 'streamed call');
    expect(typeof JSON.parse(args).city === 'string', `arguments ${args}`);
  },

  async parse_json_schema() {
    const schema = {
      type: 'object',
      properties: {
        title: { type: 'string' },
        tags: { type: 'array', items: { type: 'string' } },
        rating: { type: 'integer', minimum: 1, maximum: 5 },
        author: { anyOf: [{ $ref: '#/$defs/person' }, { type: 'null' }] },
      },
      required: ['title', 'tags', 'rating', 'author'],
      additionalProperties: false,
      $defs: {
        person: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'], additionalProperties: false },
      },
    };
    const completion = await client.chat.completions.parse({
      model: 'gpt-4o',
      messages: user('review a book'),
      response_format: { type: 'json_schema', json_schema: { name: 'review', strict: true, schema } },
    });
    const parsed = completion.choices[0].message.parsed;
    expect(parsed && typeof parsed.title === 'string' && Array.isArray(parsed.tags), `parsed ${JSON.stringify(parsed)}`);
    expect(Number.isInteger(parsed.rating) && parsed.rating >= 1 && parsed.rating <= 5, `rating ${parsed.rating}`);
    expect(typeof parsed.author?.name === 'string', `author ${JSON.stringify(parsed.author)}`);
  },

  async n_choices() {
    const completion = await client.chat.completions.create(
      { model: 'gpt-4o', messages: user('Hi'), n: 2 },
      { headers: { 'x-sim-reply': REPLY } },
    );
    expectEq(completion.choices.map((c) => [c.index, c.message.content]), [[0, REPLY], [1, REPLY]], 'two choices');
  },

  // ---- legacy completions and models --------------------------------------------------
  async legacy_completions() {
    const completion = await client.completions.create(
      { model: 'gpt-35-turbo-instruct', prompt: 'Say hi', max_tokens: 100 },
      { headers: { 'x-sim-reply': REPLY } },
    );
    expectEq([completion.object, completion.choices[0].text], ['text_completion', REPLY], 'completion');
    const stream = await client.completions.create(
      { model: 'gpt-35-turbo-instruct', prompt: 'Say hi', max_tokens: 100, stream: true },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-chunks': '3' } },
    );
    const pieces = [];
    for await (const chunk of stream) if (chunk.choices[0]?.text) pieces.push(chunk.choices[0].text);
    expectEq([pieces.length, pieces.join('')], [3, REPLY], 'streamed completion');
  },

  async models_list_and_retrieve() {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    expect(ids.includes('gpt-4o-mini'), `model list ${ids}`);
    expectEq((await client.models.retrieve('gpt-4o')).id, 'gpt-4o', 'retrieved model');
    await expectError(client.models.retrieve('no-such-model'), NotFoundError, 'unknown model');
  },

  // ---- images, files, batches, audio --------------------------------------------------
  async images_generate() {
    const encoded = await client.images.generate({ model: 'dall-e-3', prompt: 'a lighthouse', size: '512x512', response_format: 'b64_json' });
    const png = Buffer.from(encoded.data[0].b64_json, 'base64');
    expect(png.subarray(0, 8).equals(PNG_SIGNATURE), 'a PNG');
    expectEq([png.readUInt32BE(16), png.readUInt32BE(20)], [512, 512], 'PNG size');
    const linked = await client.images.generate({ model: 'dall-e-3', prompt: 'a lighthouse', size: '512x512', response_format: 'url' });
    const fetched = Buffer.from(await (await fetch(linked.data[0].url)).arrayBuffer());
    expect(fetched.equals(png), 'the URL serves the same image');
  },

  async files_and_batches() {
    const lines = [0, 1].map((i) =>
      JSON.stringify({ custom_id: `n-${i}`, method: 'POST', url: '/v1/chat/completions', body: { model: 'gpt-4o', messages: user(`q${i}`) } }),
    );
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'in.jsonl'), purpose: 'batch' });
    expectEq((await client.files.retrieve(file.id)).filename, 'in.jsonl', 'retrieved file');
    const listed = [];
    for await (const f of client.files.list()) listed.push(f.id);
    expect(listed.includes(file.id), 'listed file');
    expectEq(await (await client.files.content(file.id)).text(), lines.join('\n'), 'file content');
    const batch = await client.batches.create(
      { input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' },
      { headers: { 'x-sim-complete-after-ms': '200' } },
    );
    const done = await waitFor(() => client.batches.retrieve(batch.id), (b) => b.status === 'completed', 'the batch');
    const output = (await (await client.files.content(done.output_file_id)).text()).trim().split('\n').map(JSON.parse);
    expectEq(output.map((r) => r.custom_id).sort(), ['n-0', 'n-1'], 'answers');
    const batches = [];
    for await (const b of client.batches.list()) batches.push(b.id);
    expect(batches.includes(batch.id), 'listed batch');
    const slow = await client.batches.create(
      { input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' },
      { headers: { 'x-sim-complete-after-ms': '60000' } },
    );
    expectEq((await client.batches.cancel(slow.id)).status, 'cancelling', 'cancel');
    expectEq((await client.batches.retrieve(slow.id)).status, 'cancelled', 'cancelled');
    expect((await client.files.delete(file.id)).deleted, 'deleted');
    await expectError(client.files.retrieve(file.id), NotFoundError, 'deleted file');
  },

  async audio_translation_and_speech() {
    const wav = Buffer.alloc(2000);
    const translation = await client.audio.translations.create({ model: 'whisper', file: await toFile(wav, 'a.wav') });
    expect(translation.text.includes('translation'), `translation ${translation.text}`);
    const speech = await client.audio.speech.create({ model: 'tts', voice: 'alloy', input: 'Hello there', response_format: 'wav' });
    const audio = Buffer.from(await speech.arrayBuffer());
    expectEq([audio.toString('latin1', 0, 4), audio.toString('latin1', 8, 12)], ['RIFF', 'WAVE'], 'a WAV file');
    expectEq(audio.readUInt32LE(24), 24_000, 'sample rate');
  },

  // ---- Responses lifecycle ------------------------------------------------------------
  async responses_lifecycle() {
    const first = await client.responses.create({ model: 'gpt-4o', input: 'Hi' }, { headers: { 'x-sim-reply': REPLY } });
    const second = await client.responses.create({ model: 'gpt-4o', input: 'More', previous_response_id: first.id });
    expectEq(second.previous_response_id, first.id, 'previous_response_id');
    const items = await client.responses.inputItems.list(second.id);
    expectEq(items.data.map((i) => i.content[0].text), ['More'], 'input items');

    const queued = await client.responses.create(
      { model: 'gpt-4o', input: 'Hi', background: true },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-complete-after-ms': '200' } },
    );
    expect(['queued', 'in_progress'].includes(queued.status), `status ${queued.status}`);
    const done = await waitFor(() => client.responses.retrieve(queued.id), (r) => r.status === 'completed', 'the response');
    expectEq(done.output_text, REPLY, 'output_text');

    const slow = await client.responses.create(
      { model: 'gpt-4o', input: 'Hi', background: true },
      { headers: { 'x-sim-complete-after-ms': '60000' } },
    );
    expectEq((await client.responses.cancel(slow.id)).status, 'cancelled', 'cancelled');
    await client.responses.delete(first.id);
    await expectError(client.responses.retrieve(first.id), NotFoundError, 'deleted response');
  },

  async responses_tool_loop() {
    const tool = { type: 'function', name: 'get_weather', parameters: WEATHER_PARAMETERS, strict: true };
    const first = await client.responses.create({ model: 'gpt-4o', input: 'Weather in Rome?', tools: [tool] });
    const call = first.output.find((item) => item.type === 'function_call');
    expectEq(call?.name, 'get_weather', 'function call');
    const second = await client.responses.create({
      model: 'gpt-4o',
      tools: [tool],
      previous_response_id: first.id,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: 'hot' }],
    });
    expectEq(second.output_text, 'The tool returned: hot', 'final text');
  },

  // ---- Azure's errors and the fault-injection headers ---------------------------------
  async azure_errors() {
    const old = new AzureOpenAI({ endpoint: base, apiVersion: '2024-10-21', apiKey: 'unused', timeout: TIMEOUT_MS });
    const e = await expectError(old.responses.create({ model: 'gpt-4o', input: 'Hi' }), BadRequestError, 'old api-version');
    expect(String(e.message).includes('2025-03-01-preview'), e.message);
    const tooLong = await expectError(
      client.chat.completions.create({ model: 'gpt-4o', messages: user('Hi'), max_tokens: 500_000 }),
      BadRequestError,
      'past the context window',
    );
    expectEq(tooLong.code, 'context_length_exceeded', 'code');
  },

  async fault_injection() {
    const noRetry = client.withOptions({ maxRetries: 0 });
    const missing = await expectError(
      noRetry.chat.completions.create({ model: 'gpt-4o', messages: user('Hi') }, { headers: { 'x-sim-status': '404' } }),
      NotFoundError,
      'x-sim-status: 404',
    );
    expectEq(missing.code, 'DeploymentNotFound', 'Azure code');
    await expectError(
      noRetry.chat.completions.create({ model: 'gpt-4o', messages: user('Hi') }, { headers: { 'x-sim-status': '500' } }),
      InternalServerError,
      'x-sim-status: 500',
    );
    const stream = await noRetry.chat.completions.create(
      { model: 'gpt-4o', messages: user('Hi'), stream: true },
      { headers: { 'x-sim-drop-after': '3', 'x-sim-reply': REPLY } },
    );
    let received = 0;
    let cut = false;
    try {
      for await (const _chunk of stream) received += 1;
    } catch {
      cut = true;
    }
    expectEq([cut, received], [true, 3], 'x-sim-drop-after: 3 cuts the stream after 3 events');
  },
};

console.log(`openai-node ${VERSION} on Node ${process.version} against ${base}`);
const failed = [];
for (const [name, check] of Object.entries(checks)) {
  const started = performance.now();
  try {
    await check();
    console.log(`ok   ${name} (${(performance.now() - started).toFixed(0)} ms)`);
  } catch (e) {
    failed.push(name);
    if (e instanceof Mismatch) {
      console.log(`FAIL ${name}: ${e.message}`);
    } else {
      console.log(`FAIL ${name}: ${e?.constructor?.name}: ${e?.message ?? e}`);
      if (e?.error !== undefined) console.log(`     body: ${JSON.stringify(e.error)}`);
      console.log(e?.stack ?? '');
    }
  }
}
const total = Object.keys(checks).length;
console.log(`${total - failed.length} passed, ${failed.length} failed`);
if (failed.length) {
  console.error(`node_simulator: failed checks: ${failed.join(', ')}`);
  process.exit(1);
}
