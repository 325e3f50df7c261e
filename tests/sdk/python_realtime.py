#!/usr/bin/env python3
"""Drive keyless's realtime route with the official OpenAI Python SDK's realtime client.

    python_realtime.py BASE_URL --deployment DEPLOYMENT [--audio]

BASE_URL is keyless's address (http://127.0.0.1:PORT); DEPLOYMENT is what keyless maps
the model `gpt-realtime` to (the upstream names it in `session.created`). With --audio the
upstream (the simulator) also answers an audio response. Every check runs; each prints
`ok   NAME` or `FAIL NAME: why`, and the exit status is 1 when any failed.

Driven by tests/sdk.rs against `keyless serve --simulate` and against a WebSocket mock.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import traceback

from openai import AsyncAzureOpenAI, AsyncOpenAI

MODEL = "gpt-realtime"
TIMEOUT = 30.0


class Mismatch(Exception):
    """What the SDK got differs from what keyless and the upstream should give."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


async def next_of(conn, kind: str):
    """The next event of `kind`, skipping others; an `error` event fails the check."""
    while True:
        event = await asyncio.wait_for(conn.recv(), TIMEOUT)
        if event.type == "error":
            raise Mismatch(f"error event while waiting for {kind}: {event}")
        if event.type == kind:
            return event


async def collect_response(conn) -> list:
    """Every event up to and including `response.done`."""
    events = []
    while True:
        event = await asyncio.wait_for(conn.recv(), TIMEOUT)
        if event.type == "error":
            raise Mismatch(f"error event in a response: {event}")
        events.append(event)
        if event.type == "response.done":
            return events


class Checks:
    def __init__(self, base: str, deployment: str, audio: bool) -> None:
        self.base = base.rstrip("/")
        self.deployment = deployment
        self.audio = audio
        # The usual set-up: an OpenAI client whose base URL is keyless's /v1; the SDK
        # connects to ws://.../v1/realtime?model=... with `Authorization: Bearer unused`.
        self.client = AsyncOpenAI(base_url=f"{self.base}/v1", api_key="sk-unused-client-key")

    async def session_and_text_response(self) -> None:
        async with self.client.realtime.connect(model=MODEL) as conn:
            created = await next_of(conn, "session.created")
            expect(created.session.type == "realtime", f"session type: {created.session}")
            expect(
                created.session.model == self.deployment,
                f"the upstream session names {created.session.model!r}, not {self.deployment!r}",
            )
            await conn.session.update(
                session={"type": "realtime", "instructions": "Answer in one line.", "output_modalities": ["text"]}
            )
            updated = await next_of(conn, "session.updated")
            expect(
                updated.session.instructions == "Answer in one line.",
                f"session.updated carries the update: {updated.session}",
            )
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}],
                }
            )
            await conn.response.create(response={"output_modalities": ["text"]})
            events = await collect_response(conn)
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            done = [e for e in events if e.type == "response.output_text.done"]
            expect(len(done) == 1, f"one response.output_text.done: {[e.type for e in events]}")
            expect(deltas and deltas == done[0].text, f"deltas {deltas!r} make the text {done[0].text!r}")
            expect(
                any(e.type == "response.created" for e in events), f"a response.created: {[e.type for e in events]}"
            )
            expect(events[-1].response.status == "completed", f"status: {events[-1].response.status}")

    async def audio_response(self) -> None:
        async with self.client.realtime.connect(model=MODEL) as conn:
            await next_of(conn, "session.created")
            await conn.input_audio_buffer.append(audio=base64.b64encode(b"\0\0" * 2400).decode())
            await conn.input_audio_buffer.commit()
            await next_of(conn, "input_audio_buffer.committed")
            await conn.response.create(response={"output_modalities": ["audio"]})
            events = await collect_response(conn)
            audio = b"".join(
                base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
            )
            expect(len(audio) > 0 and len(audio) % 2 == 0, f"PCM16 audio arrived: {len(audio)} bytes")
            transcript = "".join(
                e.delta for e in events if e.type == "response.output_audio_transcript.delta"
            )
            done = [e for e in events if e.type == "response.output_audio_transcript.done"]
            expect(done and done[0].transcript == transcript, f"transcript {transcript!r}")

    async def azure_client_on_the_dated_path(self) -> None:
        # AzureOpenAI sends `api-key` and the dated path
        # /openai/realtime?api-version=...&deployment=...; keyless passes the path on and
        # signs it with its token instead of the key.
        azure = AsyncAzureOpenAI(
            azure_endpoint=self.base,
            api_key="azure-client-key",
            api_version="2025-04-01-preview",
            websocket_base_url=f"{self.base.replace('http://', 'ws://', 1)}/openai",
        )
        async with azure.realtime.connect(model=self.deployment) as conn:
            created = await next_of(conn, "session.created")
            expect(created.session.model == self.deployment, f"session: {created.session}")

    async def run(self) -> bool:
        checks = [self.session_and_text_response, self.azure_client_on_the_dated_path]
        if self.audio:
            checks.append(self.audio_response)
        ok = True
        for check in checks:
            name = check.__name__
            try:
                await check()
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the rest run
                ok = False
                print(f"FAIL {name}: {e}")
                traceback.print_exc()
        return ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--audio", action="store_true")
    args = parser.parse_args()
    ok = asyncio.run(Checks(args.base, args.deployment, args.audio).run())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
