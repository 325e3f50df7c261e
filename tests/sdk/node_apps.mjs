// A shared keyless gateway with app keys, driven by the official OpenAI Node SDK.
//
//     node node_apps.mjs BASE_URL KEY_A KEY_B
//
// keyless runs with two apps: `a` (KEY_A, only gpt-4o-mini, rpm = 3) and `b` (KEY_B, any
// model, no limits), in front of its simulator. Each check prints `ok   NAME` or
// `FAIL NAME: why`; the exit status is 1 when any failed. Driven by tests/sdk.rs.
import OpenAI, { AzureOpenAI } from "openai";

const [base, keyA, keyB] = process.argv.slice(2);
const a = new OpenAI({ baseURL: `${base}/v1`, apiKey: keyA, maxRetries: 0 });
const bAzure = new AzureOpenAI({ endpoint: base, apiKey: keyB, apiVersion: "2024-10-21", maxRetries: 0 });
const messages = [{ role: "user", content: "hi" }];
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function refused(fn, Kind, status, code) {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof Kind, `expected ${Kind.name}, got ${e}`);
    assert(e.status === status && e.code === code, `status ${e.status} code ${e.code}`);
    return e;
  }
  throw new Error("served");
}

await check("a key as Authorization: Bearer (OpenAI)", async () => {
  const r = await a.chat.completions.create({ model: "gpt-4o-mini", messages });
  assert(r.choices[0].message.content, JSON.stringify(r));
});
await check("a key as api-key (AzureOpenAI)", async () => {
  const r = await bAzure.chat.completions.create({ model: "gpt-4o", messages });
  assert(r.choices[0].message.content, JSON.stringify(r));
});
await check("an unknown key: AuthenticationError 401", async () => {
  const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: "sk-unknown", maxRetries: 0 });
  await refused(() => bad.chat.completions.create({ model: "gpt-4o-mini", messages }), OpenAI.AuthenticationError, 401, "invalid_api_key");
});
await check("a model outside the allowlist: PermissionDeniedError 403", async () => {
  await refused(() => a.chat.completions.create({ model: "gpt-4o", messages }), OpenAI.PermissionDeniedError, 403, "model_not_allowed");
});
await check("rpm: x-ratelimit headers, then RateLimitError 429", async () => {
  const { response } = await a.chat.completions.create({ model: "gpt-4o-mini", messages }).withResponse();
  assert(response.headers.get("x-ratelimit-limit-requests") === "3", "limit header");
  assert(response.headers.get("x-ratelimit-remaining-requests") === "1", "remaining header");
  await a.chat.completions.create({ model: "gpt-4o-mini", messages });
  const e = await refused(() => a.chat.completions.create({ model: "gpt-4o-mini", messages }), OpenAI.RateLimitError, 429, "rate_limit_exceeded");
  assert(Number(e.headers.get("retry-after-ms")) > 0, "retry-after-ms");
});
await check("GET /usage shows the app's own rows", async () => {
  const r = await fetch(`${base}/usage`, { headers: { Authorization: `Bearer ${keyA}` } });
  assert(r.status === 200, `status ${r.status}`);
  const rows = (await r.json()).usage;
  assert(rows.every((row) => row.app === "a"), JSON.stringify(rows));
  assert(rows.reduce((n, row) => n + row.requests, 0) === 3, JSON.stringify(rows));
});
process.exit(failed ? 1 : 0);
