#!/usr/bin/env node
// Drive a running keyless with the official OpenAI Node SDK, the way users do.
//
//     node node_client.mjs BASE_URL [--map MODEL=DEPLOYMENT ...]
//
// BASE_URL is keyless's address (http://127.0.0.1:PORT). Each --map repeats one --model
// mapping keyless was started with, so the script knows which deployment the simulator
// (which echoes the deployment as `model`) must name. Every check runs; each prints
// `ok   NAME` or `FAIL NAME: why`, and the exit status is 1 when any failed.
//
// Driven by tests/sdk.rs against keyless in front of the Azure OpenAI simulator
// (src/simulate/), whose `x-sim-*` request headers shape the answers.

import OpenAI, { AzureOpenAI, NotFoundError, RateLimitError, toFile } from 'openai';
import { VERSION } from 'openai/version';

// A reply of more words than any x-sim-chunks used here, so that the simulator splits it
// without repeating it and the streamed pieces join back to exactly this text.
const REPLY = 'Keyless relayed this answer from the simulated Azure deployment intact.';
const TIMEOUT_MS = 30_000;

class Mismatch extends Error {}

function expect(condition, message) {
  if (!condition) throw new Mismatch(message);
}

function expectEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Mismatch(`${what}: expected ${e}, got ${a}`);
}

function parseArgs(argv) {
  const mapping = {};
  let base;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--map') {
      const [model, deployment] = (argv[++i] ?? '').split(/=(.*)/s);
      if (!model || !deployment) usage(`bad --map ${argv[i]}`);
      mapping[model] = deployment;
    } else if (!base) {
      base = argv[i];
    } else {
      usage(`unexpected argument ${argv[i]}`);
    }
  }
  if (!base) usage('missing BASE_URL');
  return { base: base.replace(/\/+$/, ''), mapping };
}

function usage(problem) {
  console.error(`node_client: ${problem}\nusage: node node_client.mjs BASE_URL [--map MODEL=DEPLOYMENT ...]`);
  process.exit(2);
}

/** 0.1 s of a 440 Hz tone, 16 kHz 16-bit mono, as a WAV file. */
function toneWav() {
  const rate = 16_000;
  const samples = rate / 10;
  const data = Buffer.alloc(samples * 2);
  for (let n = 0; n < samples; n++) {
    data.writeInt16LE(Math.trunc(8000 * Math.sin((2 * Math.PI * 440 * n) / rate)), n * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

const { base, mapping } = parseArgs(process.argv.slice(2));
/** The deployment keyless sends `model` to (what the simulator echoes). */
const deployment = (model) => mapping[model] ?? model;
// The usual set-up: an OpenAI client whose base URL is keyless's /v1.
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', timeout: TIMEOUT_MS });
const user = (content) => [{ role: 'user', content }];

const checks = {
  // ---- chat completions ---------------------------------------------------------------
  async chat() {
    const { data: completion, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: user('Say hello') }, { headers: { 'x-sim-reply': REPLY } })
      .withResponse();
    expect(response.headers.get('apim-request-id'), "Azure's apim-request-id header did not pass through");
    expect(completion._request_id, "no request id: Azure's x-request-id header did not pass through");
    expectEq(completion.object, 'chat.completion', 'object');
    expectEq(completion.model, deployment('gpt-4o'), 'model (the deployment echoed)');
    expectEq(completion.choices.length, 1, 'number of choices');
    expectEq(completion.choices[0].message.content, REPLY, 'content');
    expectEq(completion.choices[0].finish_reason, 'stop', 'finish_reason');
    expect(completion.usage?.total_tokens > 0, 'usage missing');
  },

  async chat_model_mapping() {
    const completion = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: user('Hi') });
    expect(completion.choices[0].message.content, 'empty content');
    expectEq(completion.model, deployment('gpt-4o-mini'), 'model (the mapped deployment)');
  },

  async chat_stream() {
    const stream = await client.chat.completions.create(
      {
        model: 'gpt-4o-mini',
        messages: user('Stream please'),
        stream: true,
        stream_options: { include_usage: true },
      },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-chunks': '5' } },
    );
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk); // ends at `data: [DONE]`
    expect(chunks.length > 0, 'no chunk at all');
    // Azure's first frame has no choices (only prompt_filter_results): the SDK must yield
    // it as it is, and keyless must not have dropped or "fixed" it.
    expectEq(chunks[0].choices, [], "choices of Azure's first frame");
    const pieces = chunks.filter((c) => c.choices.length && c.choices[0].delta.content).map((c) => c.choices[0].delta.content);
    expectEq(pieces.length, 5, 'content frames (x-sim-chunks: 5)');
    expectEq(pieces.join(''), REPLY, 'streamed content joined');
    const finishes = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason).map((c) => c.choices[0].finish_reason);
    expectEq(finishes, ['stop'], 'finish reasons');
    expect(chunks.at(-1).usage?.total_tokens > 0, 'no usage chunk last');
    expectEq([...new Set(chunks.slice(1).map((c) => c.model))], [deployment('gpt-4o-mini')], 'model of the chunks after the first');
  },

  async chat_stream_helper() {
    // The accumulating helper is stricter than a raw stream about frame order.
    const stream = client.chat.completions.stream(
      { model: 'gpt-4o', messages: user('Stream please') },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-chunks': '3' } },
    );
    let deltas = '';
    stream.on('content', (delta) => (deltas += delta));
    const final = await stream.finalChatCompletion();
    expectEq(deltas, REPLY, 'content events joined');
    expectEq(final.choices[0].message.content, REPLY, 'final completion content');
  },

  async chat_stream_not_buffered() {
    // 8 frames 150 ms apart: a proxy that buffered the stream would deliver the first
    // content frame together with the end, ~1 s after the request.
    const stream = await client.chat.completions.create(
      { model: 'gpt-4o', messages: user('Slowly'), stream: true },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-chunks': '4', 'x-sim-delay-ms': '150' } },
    );
    let firstContent;
    for await (const chunk of stream) {
      if (firstContent === undefined && chunk.choices.length && chunk.choices[0].delta.content) {
        firstContent = performance.now();
      }
    }
    const ended = performance.now();
    expect(firstContent !== undefined, 'no content frame');
    const gap = ended - firstContent;
    expect(gap >= 300, `first content frame came only ${gap.toFixed(0)} ms before the end: the stream was buffered`);
  },

  // ---- Responses API ---------------------------------------------------------------------
  async responses() {
    const response = await client.responses.create(
      { model: 'gpt-4o-mini', input: 'Say hello' },
      { headers: { 'x-sim-reply': REPLY } },
    );
    expectEq(response.status, 'completed', 'status');
    expectEq(response.output_text, REPLY, 'output_text');
    expectEq(response.model, deployment('gpt-4o-mini'), 'model (the mapped deployment)');
  },

  async responses_stream() {
    const stream = await client.responses.create(
      { model: 'gpt-4o', input: 'Stream please', stream: true },
      { headers: { 'x-sim-reply': REPLY, 'x-sim-chunks': '4' } },
    );
    const events = [];
    for await (const event of stream) events.push(event);
    const types = events.map((e) => e.type);
    expect(types.length > 0, 'no event at all');
    expectEq(types[0], 'response.created', 'first event');
    expectEq(types.at(-1), 'response.completed', 'last event');
    expect(
      types.indexOf('response.output_text.delta') > types.indexOf('response.content_part.added'),
      `deltas before their content part: ${types}`,
    );
    const sequence = events.map((e) => e.sequence_number);
    expect(sequence.every((n, i) => i === 0 || n > sequence[i - 1]), `sequence numbers not increasing: ${sequence}`);
    const deltas = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    expectEq(deltas, REPLY, 'output_text.delta events joined');
    const completed = events.at(-1).response;
    const text = completed.output.flatMap((item) => item.content ?? []).map((part) => part.text ?? '').join('');
    expectEq(text, REPLY, 'output text of response.completed');
    expectEq(completed.model, deployment('gpt-4o'), 'model');
  },

  async responses_stream_helper() {
    const stream = client.responses.stream(
      { model: 'gpt-4o', input: 'Stream please' },
      { headers: { 'x-sim-reply': REPLY } },
    );
    let deltas = '';
    stream.on('response.output_text.delta', (event) => (deltas += event.delta));
    const final = await stream.finalResponse();
    expectEq(deltas, REPLY, 'delta events joined');
    expectEq(final.output_text, REPLY, 'final response output_text');
  },

  // ---- embeddings, models, audio ------------------------------------------------------------
  async embeddings() {
    // No encoding_format: the SDK asks for base64 and decodes it into floats.
    const result = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['alpha', 'beta'] });
    expectEq(result.model, deployment('text-embedding-3-small'), 'model');
    expectEq(result.data.map((d) => d.index), [0, 1], 'indexes');
    for (const item of result.data) {
      const vector = item.embedding;
      expect(Array.isArray(vector) && vector.length > 0, `embedding is not an array: ${typeof vector}`);
      expect(vector.every((x) => typeof x === 'number' && Number.isFinite(x)), 'embedding holds non-numbers');
      const norm = Math.hypot(...vector);
      expect(Math.abs(norm - 1) < 1e-3, `the simulator's vectors are unit vectors, norm is ${norm}`);
    }
    expect(JSON.stringify(result.data[0].embedding) !== JSON.stringify(result.data[1].embedding), 'two inputs, one vector');
    const floats = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: 'alpha',
      encoding_format: 'float',
    });
    expect(
      floats.data[0].embedding.every((x, i) => Math.abs(x - result.data[0].embedding[i]) < 1e-6),
      'float and base64 encodings of the same input differ',
    );
  },

  async models_list() {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    expect(ids.includes('gpt-4o-mini'), `gpt-4o-mini not among the models: ${ids}`);
  },

  async audio_transcription() {
    const audio = toneWav();
    const transcript = await client.audio.transcriptions.create({
      model: 'whisper',
      file: await toFile(audio, 'tone.wav', { type: 'audio/wav' }),
    });
    const expected = `Simulated transcription of tone.wav (${audio.length} bytes) by ${deployment('whisper')}.`;
    expectEq(transcript.text, expected, 'transcript (names the file, its size and the model field)');
  },

  // ---- other base URLs and the Azure client -------------------------------------------------
  async base_url_without_v1() {
    const bare = new OpenAI({ baseURL: base, apiKey: 'unused', timeout: TIMEOUT_MS });
    const completion = await bare.chat.completions.create({ model: 'gpt-4o-mini', messages: user('Hi') });
    expect(completion.choices[0].message.content, 'empty content');
    expectEq(completion.model, deployment('gpt-4o-mini'), 'model');
  },

  async azure_client_deployments() {
    // Sends /openai/deployments/{model}/...?api-version=2024-10-21 with an api-key header,
    // which keyless replaces by its Entra token. (With an api-key, openai-node does not
    // follow redirects.)
    const azure = new AzureOpenAI({ endpoint: base, apiVersion: '2024-10-21', apiKey: 'unused', timeout: TIMEOUT_MS });
    const completion = await azure.chat.completions.create(
      { model: 'gpt-4o', messages: user('Hi') },
      { headers: { 'x-sim-reply': REPLY } },
    );
    expectEq(completion.choices[0].message.content, REPLY, 'content');
    expectEq(completion.model, 'gpt-4o', "model (the URL's deployment)");
    const stream = await azure.chat.completions.create(
      { model: 'gpt-4o', messages: user('Hi'), stream: true },
      { headers: { 'x-sim-reply': REPLY } },
    );
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? '';
    expectEq(streamed, REPLY, 'streamed content');
    const result = await azure.embeddings.create({ model: 'text-embedding-3-small', input: 'alpha' });
    expect(result.data[0].embedding.every((x) => typeof x === 'number'), 'embedding holds non-numbers');
    expectEq(result.model, 'text-embedding-3-small', 'embeddings model');
  },

  async openai_client_on_azure_v1() {
    // Microsoft's documented way to use the v1 API: the OpenAI client on {endpoint}/openai/v1/.
    const v1 = new OpenAI({ baseURL: `${base}/openai/v1/`, apiKey: 'unused', timeout: TIMEOUT_MS });
    const completion = await v1.chat.completions.create(
      { model: 'gpt-4o', messages: user('Hi') },
      { headers: { 'x-sim-reply': REPLY } },
    );
    expectEq(completion.choices[0].message.content, REPLY, 'chat content');
    expectEq(completion.model, 'gpt-4o', 'model');
    const response = await v1.responses.create({ model: 'gpt-4o', input: 'Hi' }, { headers: { 'x-sim-reply': REPLY } });
    expectEq(response.output_text, REPLY, 'responses output_text');
  },

  async azure_client_on_azure_v1() {
    // AzureOpenAI accepts baseURL=.../openai/v1/, but it still prefixes the deployment ops
    // (chat, embeddings, audio) with /deployments/{model}, a path Azure's v1 API does not
    // serve. So only the ops without a deployment are checked through it.
    const azure = new AzureOpenAI({
      baseURL: `${base}/openai/v1/`,
      apiVersion: 'preview',
      apiKey: 'unused',
      timeout: TIMEOUT_MS,
    });
    const response = await azure.responses.create({ model: 'gpt-4o', input: 'Hi' }, { headers: { 'x-sim-reply': REPLY } });
    expectEq(response.output_text, REPLY, 'responses output_text');
    const ids = [];
    for await (const model of azure.models.list()) ids.push(model.id);
    expect(ids.includes('gpt-4o'), `gpt-4o not among the models: ${ids}`);
  },

  // ---- errors ---------------------------------------------------------------------------------
  async rate_limited() {
    // keyless may retry a 429 itself; whatever it does, the last answer must reach the SDK
    // as Azure gave it. A short retry-after keeps any proxy retries quick.
    try {
      await client.chat.completions.create(
        { model: 'gpt-4o', messages: user('Hi') },
        { headers: { 'x-sim-status': '429', 'x-sim-retry-after-ms': '50' }, maxRetries: 0 },
      );
    } catch (e) {
      expect(e instanceof RateLimitError, `expected a RateLimitError, got ${e?.constructor?.name}: ${e}`);
      expectEq(e.status, 429, 'status');
      // Azure's error passes through verbatim: its string code and its wording.
      expectEq(e.code, '429', "Azure's error code");
      expect(String(e.error?.message).includes('Please retry after'), `not Azure's message: ${JSON.stringify(e.error)}`);
      expectEq(e.headers.get('retry-after-ms'), '50', 'retry-after-ms header');
      return;
    }
    throw new Mismatch('no RateLimitError thrown');
  },

  async unknown_route() {
    // A wrong base URL: /api/v1/chat/completions is nothing keyless serves.
    const wrong = new OpenAI({ baseURL: `${base}/api/v1`, apiKey: 'unused', maxRetries: 0, timeout: TIMEOUT_MS });
    try {
      await wrong.chat.completions.create({ model: 'gpt-4o', messages: user('Hi') });
    } catch (e) {
      expect(e instanceof NotFoundError, `expected a NotFoundError, got ${e?.constructor?.name}: ${e}`);
      expectEq(e.status, 404, 'status');
      const body = e.error;
      expect(body && typeof body === 'object', `error body is not an object: ${JSON.stringify(body)}`);
      expect(typeof body.message === 'string' && body.message, `no message: ${JSON.stringify(body)}`);
      expect(typeof body.type === 'string', `no type: ${JSON.stringify(body)}`);
      expect('code' in body && 'param' in body, `no code or param: ${JSON.stringify(body)}`);
      expectEq(e.type, body.type, "the SDK's error type");
      return;
    }
    throw new Mismatch('no NotFoundError thrown');
  },

  // ---- concurrency ----------------------------------------------------------------------------
  async concurrent_streams() {
    const one = async (i) => {
      const stream = await client.chat.completions.create(
        { model: 'gpt-4o', messages: user(`stream ${i}`), stream: true },
        { headers: { 'x-sim-reply': `${REPLY} (${i})`, 'x-sim-delay-ms': '20' } },
      );
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
      return text;
    };
    const texts = await Promise.all([0, 1, 2, 3, 4, 5].map(one));
    expectEq(texts, [0, 1, 2, 3, 4, 5].map((i) => `${REPLY} (${i})`), 'six concurrent streams');
  },
};

console.log(`openai-node ${VERSION} on Node ${process.version} against ${base} (mapping ${JSON.stringify(mapping)})`);
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
      // An SDK error is a failure too, with its detail.
      console.log(`FAIL ${name}: ${e?.constructor?.name}: ${e?.message ?? e}`);
      if (e?.error !== undefined) console.log(`     body: ${JSON.stringify(e.error)}`);
      console.log(e?.stack ?? '');
    }
  }
}
const total = Object.keys(checks).length;
console.log(`${total - failed.length} passed, ${failed.length} failed`);
if (failed.length) {
  console.error(`node_client: failed checks: ${failed.join(', ')}`);
  process.exit(1);
}
