#!/usr/bin/env python3
"""Drive a running keyless with the official OpenAI Python SDK, the way users do.

    python_client.py BASE_URL [--map MODEL=DEPLOYMENT ...]

BASE_URL is keyless's address (http://127.0.0.1:PORT). Each --map repeats one --model
mapping keyless was started with, so the script knows which deployment the simulator
(which echoes the deployment as `model`) must name. Every check runs; each prints
`ok   NAME` or `FAIL NAME: why`, and the exit status is 1 when any failed.

Driven by tests/sdk.rs against keyless in front of the Azure OpenAI simulator
(src/simulate/), whose `x-sim-*` request headers shape the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import struct
import sys
import time
import traceback
import wave

import openai
from openai import AsyncOpenAI, AzureOpenAI, NotFoundError, OpenAI, RateLimitError

# A reply of more words than any x-sim-chunks used here, so that the simulator splits it
# without repeating it and the streamed pieces join back to exactly this text.
REPLY = "Keyless relayed this answer from the simulated Azure deployment intact."
TIMEOUT = 30.0


class Mismatch(Exception):
    """What the SDK got differs from what keyless and the simulator should give."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


def expect_eq(actual, expected, what: str) -> None:
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")


class Checks:
    def __init__(self, base: str, mapping: dict[str, str]) -> None:
        self.base = base.rstrip("/")
        self.mapping = mapping
        # The usual set-up: an OpenAI client whose base URL is keyless's /v1.
        self.client = OpenAI(base_url=f"{self.base}/v1", api_key="unused", timeout=TIMEOUT)

    def deployment(self, model: str) -> str:
        """The deployment keyless sends `model` to (what the simulator echoes)."""
        return self.mapping.get(model, model)

    # ---- chat completions -------------------------------------------------------------

    def chat(self) -> None:
        raw = self.client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Say hello"}],
            extra_headers={"x-sim-reply": REPLY},
        )
        expect(raw.headers.get("apim-request-id"), "Azure's apim-request-id header did not pass through")
        completion = raw.parse()
        expect(completion._request_id, "no request id: Azure's x-request-id header did not pass through")
        expect_eq(completion.object, "chat.completion", "object")
        expect_eq(completion.model, self.deployment("gpt-4o"), "model (the deployment echoed)")
        expect_eq(len(completion.choices), 1, "number of choices")
        expect_eq(completion.choices[0].message.content, REPLY, "content")
        expect_eq(completion.choices[0].finish_reason, "stop", "finish_reason")
        expect(completion.usage is not None and completion.usage.total_tokens > 0, "usage missing")

    def chat_model_mapping(self) -> None:
        completion = self.client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        expect(completion.choices[0].message.content, "empty content")
        expect_eq(completion.model, self.deployment("gpt-4o-mini"), "model (the mapped deployment)")

    def chat_stream(self) -> None:
        stream = self.client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-reply": REPLY, "x-sim-chunks": "5"},
        )
        chunks = list(stream)  # ends only when the SDK sees `data: [DONE]`
        expect(chunks, "no chunk at all")
        # Azure's first frame has no choices (only prompt_filter_results): the SDK must
        # yield it as it is, and keyless must not have dropped or "fixed" it.
        expect_eq(chunks[0].choices, [], "choices of Azure's first frame")
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        expect_eq(len(pieces), 5, "content frames (x-sim-chunks: 5)")
        expect_eq("".join(pieces), REPLY, "streamed content joined")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        expect_eq(finishes, ["stop"], "finish reasons")
        expect(chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0, "no usage chunk last")
        models = {c.model for c in chunks[1:]}
        expect_eq(models, {self.deployment("gpt-4o-mini")}, "model of the chunks after the first")

    def chat_stream_helper(self) -> None:
        # The accumulating helper is stricter than a raw stream about frame order.
        with self.client.chat.completions.stream(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Stream please"}],
            extra_headers={"x-sim-reply": REPLY, "x-sim-chunks": "3"},
        ) as stream:
            deltas = [e.delta for e in stream if e.type == "content.delta"]
            final = stream.get_final_completion()
        expect_eq("".join(deltas), REPLY, "content.delta events joined")
        expect_eq(final.choices[0].message.content, REPLY, "final completion content")

    def chat_stream_not_buffered(self) -> None:
        # 8 frames 150 ms apart: a proxy that buffered the stream would deliver the first
        # content frame together with the end, ~1 s after the request.
        stream = self.client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Slowly"}],
            stream=True,
            extra_headers={"x-sim-reply": REPLY, "x-sim-chunks": "4", "x-sim-delay-ms": "150"},
        )
        first_content = None
        for chunk in stream:
            if first_content is None and chunk.choices and chunk.choices[0].delta.content:
                first_content = time.monotonic()
        ended = time.monotonic()
        expect(first_content is not None, "no content frame")
        gap = ended - first_content
        expect(gap >= 0.3, f"first content frame came only {gap:.3f} s before the end: the stream was buffered")

    # ---- Responses API ------------------------------------------------------------------

    def responses(self) -> None:
        response = self.client.responses.create(
            model="gpt-4o-mini", input="Say hello", extra_headers={"x-sim-reply": REPLY}
        )
        expect_eq(response.status, "completed", "status")
        expect_eq(response.output_text, REPLY, "output_text")
        expect_eq(response.model, self.deployment("gpt-4o-mini"), "model (the mapped deployment)")

    def responses_stream(self) -> None:
        stream = self.client.responses.create(
            model="gpt-4o",
            input="Stream please",
            stream=True,
            extra_headers={"x-sim-reply": REPLY, "x-sim-chunks": "4"},
        )
        events = list(stream)
        types = [e.type for e in events]
        expect(types, "no event at all")
        expect_eq(types[0], "response.created", "first event")
        expect_eq(types[-1], "response.completed", "last event")
        expect(types.index("response.output_text.delta") > types.index("response.content_part.added"),
               f"deltas before their content part: {types}")
        sequence = [e.sequence_number for e in events]
        expect(all(b > a for a, b in zip(sequence, sequence[1:])), f"sequence numbers not increasing: {sequence}")
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        expect_eq(deltas, REPLY, "output_text.delta events joined")
        expect_eq(events[-1].response.output_text, REPLY, "output_text of response.completed")
        expect_eq(events[-1].response.model, self.deployment("gpt-4o"), "model")

    def responses_stream_helper(self) -> None:
        with self.client.responses.stream(
            model="gpt-4o", input="Stream please", extra_headers={"x-sim-reply": REPLY}
        ) as stream:
            for _ in stream:
                pass
            final = stream.get_final_response()
        expect_eq(final.output_text, REPLY, "final response output_text")

    # ---- embeddings, models, audio --------------------------------------------------------

    def embeddings(self) -> None:
        # No encoding_format: the SDK asks for base64 and decodes it into floats.
        result = self.client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
        expect_eq(result.model, self.deployment("text-embedding-3-small"), "model")
        expect_eq([d.index for d in result.data], [0, 1], "indexes")
        for item in result.data:
            vector = item.embedding
            expect(isinstance(vector, list) and vector, f"embedding is not a list: {type(vector)}")
            expect(all(isinstance(x, float) for x in vector), "embedding holds non-floats")
            norm = math.sqrt(sum(x * x for x in vector))
            expect(abs(norm - 1.0) < 1e-3, f"the simulator's vectors are unit vectors, norm is {norm}")
        expect(result.data[0].embedding != result.data[1].embedding, "two inputs, one vector")
        floats = self.client.embeddings.create(
            model="text-embedding-3-small", input="alpha", encoding_format="float"
        )
        expect(
            all(abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, result.data[0].embedding)),
            "float and base64 encodings of the same input differ",
        )

    def models_list(self) -> None:
        ids = [m.id for m in self.client.models.list()]
        expect("gpt-4o-mini" in ids, f"gpt-4o-mini not among the models: {ids}")

    def audio_transcription(self) -> None:
        audio = tone_wav()
        transcript = self.client.audio.transcriptions.create(
            model="whisper", file=("tone.wav", audio, "audio/wav")
        )
        expected = f"Simulated transcription of tone.wav ({len(audio)} bytes) by {self.deployment('whisper')}."
        expect_eq(transcript.text, expected, "transcript (names the file, its size and the model field)")

    # ---- other base URLs and the Azure client ---------------------------------------------

    def base_url_without_v1(self) -> None:
        client = OpenAI(base_url=self.base, api_key="unused", timeout=TIMEOUT)
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        expect(completion.choices[0].message.content, "empty content")
        expect_eq(completion.model, self.deployment("gpt-4o-mini"), "model")

    def azure_client_deployments(self) -> None:
        # Sends /openai/deployments/{model}/...?api-version=2024-10-21 with an api-key header,
        # which keyless replaces by its Entra token.
        client = AzureOpenAI(azure_endpoint=self.base, api_version="2024-10-21", api_key="unused", timeout=TIMEOUT)
        completion = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], extra_headers={"x-sim-reply": REPLY}
        )
        expect_eq(completion.choices[0].message.content, REPLY, "content")
        expect_eq(completion.model, "gpt-4o", "model (the URL's deployment)")
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            extra_headers={"x-sim-reply": REPLY},
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        expect_eq(streamed, REPLY, "streamed content")
        result = client.embeddings.create(model="text-embedding-3-small", input="alpha")
        expect(all(isinstance(x, float) for x in result.data[0].embedding), "embedding holds non-floats")
        expect_eq(result.model, "text-embedding-3-small", "embeddings model")

    def openai_client_on_azure_v1(self) -> None:
        # Microsoft's documented way to use the v1 API: the OpenAI client on {endpoint}/openai/v1/.
        client = OpenAI(base_url=f"{self.base}/openai/v1/", api_key="unused", timeout=TIMEOUT)
        completion = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], extra_headers={"x-sim-reply": REPLY}
        )
        expect_eq(completion.choices[0].message.content, REPLY, "chat content")
        expect_eq(completion.model, "gpt-4o", "model")
        response = client.responses.create(model="gpt-4o", input="Hi", extra_headers={"x-sim-reply": REPLY})
        expect_eq(response.output_text, REPLY, "responses output_text")

    def azure_client_on_azure_v1(self) -> None:
        # AzureOpenAI accepts base_url=.../openai/v1/, but it still prefixes the deployment
        # ops (chat, embeddings, audio) with /deployments/{model}, a path Azure's v1 API does
        # not serve. So only the ops without a deployment are checked through it.
        client = AzureOpenAI(
            base_url=f"{self.base}/openai/v1/", api_version="preview", api_key="unused", timeout=TIMEOUT
        )
        response = client.responses.create(model="gpt-4o", input="Hi", extra_headers={"x-sim-reply": REPLY})
        expect_eq(response.output_text, REPLY, "responses output_text")
        ids = [m.id for m in client.models.list()]
        expect("gpt-4o" in ids, f"gpt-4o not among the models: {ids}")

    # ---- errors ---------------------------------------------------------------------------------

    def rate_limited(self) -> None:
        # keyless may retry a 429 itself; whatever it does, the last answer must reach the
        # SDK as Azure gave it. A short retry-after keeps any proxy retries quick.
        client = self.client.with_options(max_retries=0)
        try:
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "Hi"}],
                extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "50"},
            )
        except RateLimitError as e:
            expect_eq(e.status_code, 429, "status")
            # Azure's error passes through verbatim: its string code and its wording.
            expect(isinstance(e.body, dict), f"error body is not an object: {e.body!r}")
            expect_eq(e.body.get("code"), "429", "Azure's error code")
            expect("Please retry after" in str(e.body.get("message")), f"not Azure's message: {e.body!r}")
            expect_eq(e.response.headers.get("retry-after-ms"), "50", "retry-after-ms header")
            return
        raise Mismatch("no RateLimitError raised")

    def unknown_route(self) -> None:
        # A wrong base URL: /api/v1/chat/completions is nothing keyless serves.
        client = OpenAI(base_url=f"{self.base}/api/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        except NotFoundError as e:
            expect_eq(e.status_code, 404, "status")
            expect(isinstance(e.body, dict), f"error body is not an object: {e.body!r}")
            expect(isinstance(e.body.get("message"), str) and e.body["message"], f"no message: {e.body!r}")
            expect(isinstance(e.body.get("type"), str), f"no type: {e.body!r}")
            expect("code" in e.body and "param" in e.body, f"no code or param: {e.body!r}")
            expect_eq(e.type, e.body["type"], "the SDK's error type")
            return
        raise Mismatch("no NotFoundError raised")

    # ---- concurrency --------------------------------------------------------------------------

    def concurrent_streams(self) -> None:
        async def one(client: AsyncOpenAI, i: int) -> str:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": f"stream {i}"}],
                stream=True,
                extra_headers={"x-sim-reply": f"{REPLY} ({i})", "x-sim-delay-ms": "20"},
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def all_of_them() -> list[str]:
            async with AsyncOpenAI(base_url=f"{self.base}/v1", api_key="unused", timeout=TIMEOUT) as client:
                return await asyncio.gather(*(one(client, i) for i in range(6)))

        texts = asyncio.run(all_of_them())
        expect_eq(texts, [f"{REPLY} ({i})" for i in range(6)], "six concurrent streams")


def tone_wav() -> bytes:
    """0.1 s of a 440 Hz tone, 16 kHz 16-bit mono."""
    rate = 16_000
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate))) for n in range(rate // 10)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="keyless's address, e.g. http://127.0.0.1:8787")
    parser.add_argument("--map", action="append", default=[], metavar="MODEL=DEPLOYMENT",
                        help="a --model mapping keyless runs with (repeatable)")
    args = parser.parse_args()
    mapping = dict(m.split("=", 1) for m in args.map)

    print(f"openai-python {openai.__version__} against {args.base_url} (mapping {mapping})")
    checks = Checks(args.base_url, mapping)
    names = [
        "chat", "chat_model_mapping", "chat_stream", "chat_stream_helper", "chat_stream_not_buffered",
        "responses", "responses_stream", "responses_stream_helper",
        "embeddings", "models_list", "audio_transcription",
        "base_url_without_v1", "azure_client_deployments", "openai_client_on_azure_v1", "azure_client_on_azure_v1",
        "rate_limited", "unknown_route", "concurrent_streams",
    ]
    failed = []
    for name in names:
        started = time.monotonic()
        try:
            getattr(checks, name)()
        except Mismatch as e:
            failed.append(name)
            print(f"FAIL {name}: {e}")
        except Exception as e:  # an SDK exception is a failure too, with its detail
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            body = getattr(e, "body", None)
            if body is not None:
                print(f"     body: {body!r}")
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {name} ({(time.monotonic() - started) * 1000:.0f} ms)")
    print(f"{len(names) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"python_client: failed checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
