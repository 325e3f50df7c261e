#!/usr/bin/env node
// Drive keyless's realtime route with the official OpenAI Node SDK's OpenAIRealtimeWebSocket.
//
//     node node_realtime.mjs BASE_URL --deployment DEPLOYMENT [--audio]
//
// BASE_URL is keyless's address (http://127.0.0.1:PORT); DEPLOYMENT is what keyless maps
// the model `gpt-realtime` to (the upstream names it in `session.created`). With --audio the
// upstream (the simulator) also answers an audio response. Every check runs; each prints
// `ok   NAME` or `FAIL NAME: why`, and the exit status is 1 when any failed.
//
// OpenAIRealtimeWebSocket is the browser-style client: it sends no headers, and puts the
// key in the subprotocol list (`realtime`, `openai-insecure-api-key.<key>`), which keyless
// must strip. Node 20 has no global WebSocket, so the `ws` package's is installed as the
// global one, as the SDK's docs say; the SDK always builds a wss:// URL, and keyless listens
// on plain loopback HTTP, so that global turns wss:// to loopback into ws:// (its only change).
//
// Driven by tests/sdk.rs against `keyless serve --simulate` and against a WebSocket mock.

import OpenAI from 'openai';
import { OpenAIRealtimeWebSocket } from 'openai/realtime/websocket';
import { WebSocket as WsWebSocket } from 'ws';

const MODEL = 'gpt-realtime';
const TIMEOUT_MS = 30_000;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

class LoopbackWebSocket extends WsWebSocket {
  constructor(url, protocols) {
    const target = new URL(url);
    if (target.protocol === 'wss:' && LOOPBACK.has(target.hostname)) target.protocol = 'ws:';
    super(target, protocols);
  }
}
globalThis.WebSocket = LoopbackWebSocket;

class Mismatch extends Error {}

function expect(condition, message) {
  if (!condition) throw new Mismatch(message);
}

function parseArgs(argv) {
  let base;
  let deployment;
  let audio = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--deployment') deployment = argv[++i];
    else if (argv[i] === '--audio') audio = true;
    else if (!base) base = argv[i];
    else usage(`unexpected argument ${argv[i]}`);
  }
  if (!base || !deployment) usage('missing BASE_URL or --deployment');
  return { base: base.replace(/\/+$/, ''), deployment, audio };
}

function usage(problem) {
  console.error(`node_realtime: ${problem}\nusage: node node_realtime.mjs BASE_URL --deployment D [--audio]`);
  process.exit(2);
}

/** Opens a session and returns it with a queue of its server events. */
async function open(client) {
  const rt = new OpenAIRealtimeWebSocket({ model: MODEL }, client);
  const events = [];
  // Every event, in order, also those `next` skipped.
  const all = [];
  const waiters = [];
  let failure = null;
  const push = (event) => {
    events.push(event);
    all.push(event);
    waiters.splice(0).forEach((wake) => wake());
  };
  rt.on('event', push);
  rt.on('error', (error) => {
    failure = error;
    waiters.splice(0).forEach((wake) => wake());
  });
  rt.socket.addEventListener('close', () => {
    failure ??= new Mismatch('the socket closed');
    waiters.splice(0).forEach((wake) => wake());
  });
  await new Promise((resolve, reject) => {
    rt.socket.addEventListener('open', resolve);
    rt.socket.addEventListener('error', (e) => reject(new Mismatch(`cannot connect: ${e.message ?? e}`)));
  });
  const protocol = rt.socket.protocol;
  /** The next event of `type`, skipping others. */
  async function next(type) {
    const deadline = Date.now() + TIMEOUT_MS;
    for (;;) {
      const at = events.findIndex((e) => e.type === type);
      if (at >= 0) return events.splice(0, at + 1).pop();
      if (failure) throw failure;
      if (Date.now() > deadline) throw new Mismatch(`no ${type} within ${TIMEOUT_MS} ms`);
      await new Promise((wake) => {
        waiters.push(wake);
        setTimeout(wake, 100);
      });
    }
  }
  /** Everything up to and including response.done. */
  async function response() {
    const done = await next('response.done');
    return done;
  }
  return { rt, next, response, protocol, all };
}

async function sessionAndTextResponse({ client, deployment }) {
  const s = await open(client);
  try {
    expect(s.protocol === 'realtime', `the chosen subprotocol is realtime, not ${JSON.stringify(s.protocol)}`);
    const created = await s.next('session.created');
    expect(created.session.type === 'realtime', `session type ${created.session.type}`);
    expect(created.session.model === deployment, `the session names ${created.session.model}, not ${deployment}`);
    s.rt.send({ type: 'session.update', session: { type: 'realtime', instructions: 'Answer in one line.', output_modalities: ['text'] } });
    const updated = await s.next('session.updated');
    expect(updated.session.instructions === 'Answer in one line.', `session.updated: ${JSON.stringify(updated.session)}`);
    s.rt.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Say hello.' }] } });
    s.rt.send({ type: 'response.create', response: { output_modalities: ['text'] } });
    const createdResponse = await s.next('response.created');
    const final = await s.next('response.output_text.done');
    const text = s.all
      .filter((e) => e.type === 'response.output_text.delta')
      .map((e) => e.delta)
      .join('');
    expect(text.length > 0 && text === final.text, `deltas ${JSON.stringify(text)} make the text ${JSON.stringify(final.text)}`);
    const done = await s.response();
    expect(done.response.id === createdResponse.response.id, 'response.done names the response');
    expect(done.response.status === 'completed', `status ${done.response.status}`);
  } finally {
    s.rt.close();
  }
}

async function audioResponse({ client }) {
  const s = await open(client);
  try {
    await s.next('session.created');
    s.rt.send({ type: 'response.create', response: { output_modalities: ['audio'] } });
    const done = await s.response();
    expect(done.response.status === 'completed', `status ${done.response.status}`);
    const of = (type) => s.all.filter((e) => e.type === type);
    const pcm = Buffer.concat(of('response.output_audio.delta').map((e) => Buffer.from(e.delta, 'base64')));
    expect(pcm.length > 0 && pcm.length % 2 === 0, `PCM16 audio arrived: ${pcm.length} bytes`);
    const transcript = of('response.output_audio_transcript.delta').map((e) => e.delta).join('');
    const [final] = of('response.output_audio_transcript.done');
    expect(final && final.transcript === transcript, `transcript ${JSON.stringify(transcript)}`);
  } finally {
    s.rt.close();
  }
}

async function main() {
  const { base, deployment, audio } = parseArgs(process.argv.slice(2));
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'sk-unused-browser-key' });
  const checks = [sessionAndTextResponse];
  if (audio) checks.push(audioResponse);
  let ok = true;
  for (const check of checks) {
    try {
      await check({ client, deployment });
      console.log(`ok   ${check.name}`);
    } catch (e) {
      ok = false;
      console.log(`FAIL ${check.name}: ${e?.stack ?? e}`);
    }
  }
  process.exit(ok ? 0 : 1);
}

main();
