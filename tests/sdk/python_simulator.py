#!/usr/bin/env python3
"""Build an app against `keyless serve --simulate` with the official OpenAI Python SDK.

    python_simulator.py BASE_URL

What agents and frameworks rely on, end to end through keyless and the simulator: the
tool-calling loop, structured output with `.parse()` and a Pydantic model, n, legacy
completions, models, images, files, batches, audio, the Responses lifecycle and the
fault-injection headers. Each check prints `ok   NAME` or `FAIL NAME: why`; the exit
status is 1 when any failed. Driven by tests/sdk.rs.
"""

from __future__ import annotations

import argparse
import base64
import enum
import io
import json
import struct
import sys
import time
import traceback
import urllib.request
import wave
from typing import Optional

import openai
from openai import AzureOpenAI, BadRequestError, NotFoundError, OpenAI
from pydantic import BaseModel

REPLY = "Keyless relayed this answer from the simulated Azure deployment intact."
TIMEOUT = 30.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


class Mismatch(Exception):
    """What the SDK got differs from what keyless and the simulator should give."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


def expect_eq(actual, expected, what: str) -> None:
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")


def wait_for(fetch, done, what: str):
    """Polls `fetch()` until `done(value)`; a bounded number of tries, not a timed assertion."""
    for _ in range(300):
        value = fetch()
        if done(value):
            return value
        time.sleep(0.05)
    raise Mismatch(f"{what} never finished; last seen {value!r}")


class Color(str, enum.Enum):
    RED = "red"
    GREEN = "green"


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):
    steps: list[Step]
    final_answer: str
    color: Color
    note: Optional[str]


def tone_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\x00\x10" * 1600)
    return out.getvalue()


class Checks:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.client = OpenAI(base_url=f"{self.base}/v1", api_key="unused", timeout=TIMEOUT)

    # ---- chat: tools and structured output ----------------------------------------------

    def tool_calling_loop(self) -> None:
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = self.client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
        choice = first.choices[0]
        expect_eq(choice.finish_reason, "tool_calls", "finish_reason of the call")
        calls = choice.message.tool_calls
        expect(calls and len(calls) == 1, f"one tool call expected, got {calls!r}")
        call = calls[0]
        expect_eq(call.function.name, "get_weather", "called tool")
        expect(call.id.startswith("call_"), f"tool call id {call.id!r}")
        arguments = json.loads(call.function.arguments)
        expect(isinstance(arguments.get("city"), str), f"city argument: {arguments!r}")
        expect(arguments.get("unit") in ("celsius", "fahrenheit"), f"unit argument: {arguments!r}")
        expect(set(arguments) <= {"city", "unit", "days"}, f"no extra arguments: {arguments!r}")
        # The same request gives the same arguments (snapshot tests rely on it).
        again = self.client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
        expect_eq(again.choices[0].message.tool_calls[0].function.arguments, call.function.arguments, "deterministic arguments")

        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"})
        final = self.client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
        expect_eq(final.choices[0].finish_reason, "stop", "finish_reason of the final answer")
        expect(final.choices[0].message.tool_calls is None, "no tool call after the tool result")
        expect("22 degrees and sunny" in (final.choices[0].message.content or ""),
               f"final text should use the tool result: {final.choices[0].message.content!r}")

    def tool_choice_named_and_streamed(self) -> None:
        other = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
        stream = self.client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[other, WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
            extra_headers={"x-sim-chunks": "5"},
        )
        ids, names, pieces, finish = [], [], [], None
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    if delta.id:
                        ids.append(delta.id)
                    if delta.function and delta.function.name:
                        names.append(delta.function.name)
                    if delta.function and delta.function.arguments:
                        pieces.append(delta.function.arguments)
                finish = choice.finish_reason or finish
        expect_eq(names, ["get_weather"], "the named tool, named once (in the first delta)")
        expect_eq(len(ids), 1, "the call id, once")
        expect_eq(len(pieces), 5, "arguments in x-sim-chunks pieces")
        arguments = json.loads("".join(pieces))
        expect(isinstance(arguments["city"], str), f"streamed arguments: {arguments!r}")
        expect_eq(finish, "stop", "finish_reason when tool_choice names the tool")

    def parse_with_pydantic(self) -> None:
        completion = self.client.chat.completions.parse(
            model="gpt-4o",
            messages=[{"role": "user", "content": "solve 8x + 7 = -23"}],
            response_format=MathReasoning,
        )
        parsed = completion.choices[0].message.parsed
        expect(isinstance(parsed, MathReasoning), f"parsed: {parsed!r}")
        expect(len(parsed.steps) >= 1 and isinstance(parsed.steps[0], Step), f"steps: {parsed.steps!r}")
        expect(parsed.color in (Color.RED, Color.GREEN), f"color: {parsed.color!r}")

    def stream_helper_with_a_pydantic_tool_and_format(self) -> None:
        class GetWeather(BaseModel):
            city: str
            unit: Color
            days: Optional[int]

        with self.client.chat.completions.stream(
            model="gpt-4o",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[openai.pydantic_function_tool(GetWeather)],
        ) as stream:
            final = stream.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        expect(isinstance(call.function.parsed_arguments, GetWeather), f"parsed arguments: {call.function.parsed_arguments!r}")
        with self.client.chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": "solve"}], response_format=MathReasoning
        ) as stream:
            final = stream.get_final_completion()
        expect(isinstance(final.choices[0].message.parsed, MathReasoning), "parsed structured output, streamed")

    def json_object(self) -> None:
        completion = self.client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "answer in JSON"}],
            response_format={"type": "json_object"},
        )
        value = json.loads(completion.choices[0].message.content)
        expect(isinstance(value, dict), f"a JSON object: {value!r}")

    def n_choices(self) -> None:
        completion = self.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], n=2, extra_headers={"x-sim-reply": REPLY}
        )
        expect_eq([c.index for c in completion.choices], [0, 1], "choice indexes")
        expect_eq([c.message.content for c in completion.choices], [REPLY, REPLY], "both choices")

    def max_tokens_logprobs_and_usage(self) -> None:
        completion = self.client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hi"}],
            max_completion_tokens=3,
            logprobs=True,
            top_logprobs=2,
            extra_headers={"x-sim-reply": REPLY},
        )
        choice = completion.choices[0]
        expect_eq(choice.finish_reason, "length", "finish_reason when cut by max_completion_tokens")
        expect(REPLY.startswith(choice.message.content), f"a prefix of the reply: {choice.message.content!r}")
        expect_eq(completion.usage.completion_tokens, 3, "completion tokens")
        tokens = choice.logprobs.content
        expect_eq("".join(t.token for t in tokens), choice.message.content, "logprob tokens join to the content")
        expect(all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens), "plausible logprobs")
        # o200k_base: "Hi" is one token; the message framing adds 7.
        expect_eq(completion.usage.prompt_tokens, 8, "prompt tokens counted with o200k_base")

    # ---- legacy completions and models --------------------------------------------------

    def legacy_completions(self) -> None:
        completion = self.client.completions.create(
            model="gpt-35-turbo-instruct", prompt="Say hi", max_tokens=100, extra_headers={"x-sim-reply": REPLY}
        )
        expect_eq(completion.object, "text_completion", "object")
        expect_eq(completion.choices[0].text, REPLY, "text")
        expect_eq(completion.choices[0].finish_reason, "stop", "finish_reason")
        short = self.client.completions.create(model="gpt-35-turbo-instruct", prompt="Say hi")
        expect_eq(short.choices[0].finish_reason, "length", "default max_tokens (16) cuts the default reply")
        stream = self.client.completions.create(
            model="gpt-35-turbo-instruct", prompt="Say hi", max_tokens=100, stream=True,
            extra_headers={"x-sim-reply": REPLY, "x-sim-chunks": "4"},
        )
        texts = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
        expect_eq(len(texts), 4, "streamed pieces")
        expect_eq("".join(texts), REPLY, "streamed text")

    def models_list_and_retrieve(self) -> None:
        ids = [m.id for m in self.client.models.list()]
        expect("gpt-4o" in ids and "text-embedding-3-small" in ids, f"model list: {ids}")
        model = self.client.models.retrieve("gpt-4o-mini")
        expect_eq((model.id, model.object), ("gpt-4o-mini", "model"), "retrieved model")
        try:
            self.client.models.retrieve("no-such-model")
            raise Mismatch("an unknown model should be a 404")
        except NotFoundError:
            pass

    # ---- images, files, batches, audio --------------------------------------------------

    def images_generate(self) -> None:
        encoded = self.client.images.generate(model="dall-e-3", prompt="a red fox", size="256x256", response_format="b64_json")
        png = base64.b64decode(encoded.data[0].b64_json)
        expect(png.startswith(PNG_SIGNATURE), "b64_json is a PNG")
        expect_eq(struct.unpack(">II", png[16:24]), (256, 256), "PNG size")
        linked = self.client.images.generate(model="dall-e-3", prompt="a red fox", size="256x256", response_format="url")
        with urllib.request.urlopen(linked.data[0].url, timeout=TIMEOUT) as answer:
            fetched = answer.read()
        expect_eq(fetched, png, "the URL serves the same image (same prompt, same picture)")

    def files_lifecycle(self) -> None:
        content = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", "messages": []}}\n'
        uploaded = self.client.files.create(file=("input.jsonl", content), purpose="batch")
        expect_eq((uploaded.filename, uploaded.bytes, uploaded.purpose), ("input.jsonl", len(content), "batch"), "uploaded file")
        expect(uploaded.id in [f.id for f in self.client.files.list()], "listed")
        expect_eq(self.client.files.retrieve(uploaded.id).id, uploaded.id, "retrieved")
        expect_eq(self.client.files.content(uploaded.id).read(), content, "content")
        expect(self.client.files.delete(uploaded.id).deleted, "deleted")
        try:
            self.client.files.retrieve(uploaded.id)
            raise Mismatch("a deleted file should be a 404")
        except NotFoundError:
            pass

    def batches_lifecycle(self) -> None:
        lines = [
            {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"question {i}"}]}}
            for i in range(3)
        ]
        content = "\n".join(json.dumps(line) for line in lines).encode()
        input_file = self.client.files.create(file=("batch.jsonl", content), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h",
            extra_headers={"x-sim-complete-after-ms": "300"},
        )
        expect_eq(batch.status, "validating", "a new batch")
        done = wait_for(lambda: self.client.batches.retrieve(batch.id), lambda b: b.status == "completed", "the batch")
        expect_eq((done.request_counts.total, done.request_counts.completed, done.request_counts.failed), (3, 3, 0), "request counts")
        output = self.client.files.content(done.output_file_id).read().decode().splitlines()
        records = [json.loads(line) for line in output]
        expect_eq(sorted(r["custom_id"] for r in records), ["req-0", "req-1", "req-2"], "one answer a line")
        expect(all(r["response"]["status_code"] == 200 and r["response"]["body"]["object"] == "chat.completion" for r in records),
               f"answers: {records[0]!r}")
        expect(batch.id in [b.id for b in self.client.batches.list()], "listed")

        slow = self.client.batches.create(
            input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h",
            extra_headers={"x-sim-complete-after-ms": "60000"},
        )
        expect_eq(self.client.batches.cancel(slow.id).status, "cancelling", "cancel answers cancelling")
        expect_eq(self.client.batches.retrieve(slow.id).status, "cancelled", "then it is cancelled")

    def audio_translation_and_speech(self) -> None:
        translation = self.client.audio.translations.create(model="whisper", file=("speech.wav", tone_wav()))
        expect("translation" in translation.text and "speech.wav" in translation.text, f"translation: {translation.text!r}")
        speech = self.client.audio.speech.create(model="tts", voice="alloy", input="Hello there from keyless", response_format="wav")
        with wave.open(io.BytesIO(speech.read())) as w:
            expect(w.getnframes() > 0 and w.getframerate() == 24_000, "a WAV of 24 kHz samples")
        mp3 = self.client.audio.speech.create(model="tts", voice="alloy", input="Hello").read()
        expect(mp3[:2] == b"\xff\xfb" and len(mp3) % 384 == 0, "mp3 (the default) is whole MPEG frames")

    # ---- Responses lifecycle -------------------------------------------------------------

    def responses_previous_response_id(self) -> None:
        first = self.client.responses.create(model="gpt-4o", input="Hi", extra_headers={"x-sim-reply": REPLY})
        second = self.client.responses.create(model="gpt-4o", input="And again", previous_response_id=first.id)
        expect_eq(second.previous_response_id, first.id, "previous_response_id")
        expect(second.usage.input_tokens > first.usage.total_tokens, "the earlier turn counts as input")
        try:
            self.client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_missing")
            raise Mismatch("an unknown previous_response_id should be refused")
        except BadRequestError as e:
            expect_eq(e.code, "previous_response_not_found", "error code")

    def responses_tool_loop(self) -> None:
        tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["function"]["parameters"], "strict": True}
        first = self.client.responses.create(model="gpt-4o", input="Weather in Rome?", tools=[tool])
        calls = [item for item in first.output if item.type == "function_call"]
        expect_eq([c.name for c in calls], ["get_weather"], "function calls")
        arguments = json.loads(calls[0].arguments)
        expect(arguments["unit"] in ("celsius", "fahrenheit"), f"arguments {arguments!r}")
        second = self.client.responses.create(
            model="gpt-4o", tools=[tool], previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "hot"}],
        )
        expect_eq(second.output_text, "The tool returned: hot", "final text")
        with self.client.responses.stream(model="gpt-4o", input="Weather in Rome?", tools=[tool]) as stream:
            final = stream.get_final_response()
        expect_eq([item.type for item in final.output], ["function_call"], "streamed output")
        expect_eq(json.loads(final.output[0].arguments), arguments, "the same arguments, streamed")

    def responses_background_and_retrieve(self) -> None:
        queued = self.client.responses.create(
            model="gpt-4o", input="Hi", background=True,
            extra_headers={"x-sim-reply": REPLY, "x-sim-complete-after-ms": "200"},
        )
        expect(queued.status in ("queued", "in_progress"), f"status {queued.status}")
        expect(queued.background, "background flag")
        done = wait_for(lambda: self.client.responses.retrieve(queued.id), lambda r: r.status == "completed", "the response")
        expect_eq(done.output_text, REPLY, "output_text")

    def responses_background_stream_resumed(self) -> None:
        events = list(self.client.responses.create(model="gpt-4o", input="Hi", background=True, stream=True,
                                                   extra_headers={"x-sim-reply": REPLY}))
        response_id = events[0].response.id
        resumed = list(self.client.responses.retrieve(response_id, stream=True, starting_after=2))
        expect_eq([e.sequence_number for e in resumed], [e.sequence_number for e in events[3:]], "events after 2")
        expect_eq(resumed[-1].type, "response.completed", "the last event")
        expect_eq(resumed[-1].response.output_text, REPLY, "the text")

    def responses_cancel(self) -> None:
        queued = self.client.responses.create(
            model="gpt-4o", input="Hi", background=True, extra_headers={"x-sim-complete-after-ms": "60000"}
        )
        expect_eq(self.client.responses.cancel(queued.id).status, "cancelled", "cancelled")
        expect_eq(self.client.responses.retrieve(queued.id).status, "cancelled", "stays cancelled")
        done = self.client.responses.create(model="gpt-4o", input="Hi")
        try:
            self.client.responses.cancel(done.id)
            raise Mismatch("a response made without background cannot be cancelled")
        except BadRequestError:
            pass

    def responses_input_items_and_delete(self) -> None:
        response = self.client.responses.create(model="gpt-4o", input="Tell me a story")
        items = self.client.responses.input_items.list(response.id)
        texts = [part.text for item in items.data for part in item.content]
        expect_eq(texts, ["Tell me a story"], "input items")
        self.client.responses.delete(response.id)
        try:
            self.client.responses.retrieve(response.id)
            raise Mismatch("a deleted response should be a 404")
        except NotFoundError:
            pass

    # ---- Azure's errors and the fault-injection headers ---------------------------------

    def azure_errors(self) -> None:
        old = AzureOpenAI(azure_endpoint=self.base, api_version="2024-10-21", api_key="unused", timeout=TIMEOUT)
        try:
            old.responses.create(model="gpt-4o", input="Hi")
            raise Mismatch("Responses with api-version 2024-10-21 should be a 400")
        except BadRequestError as e:
            expect("2025-03-01-preview" in str(e), f"says which api-version: {e}")
        new = AzureOpenAI(azure_endpoint=self.base, api_version="2025-04-01-preview", api_key="unused", timeout=TIMEOUT)
        expect_eq(new.responses.create(model="gpt-4o", input="Hi").status, "completed", "Responses on a preview api-version")
        bogus = AzureOpenAI(azure_endpoint=self.base, api_version="2019-01-01", api_key="unused", timeout=TIMEOUT)
        try:
            bogus.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
            raise Mismatch("an unknown api-version should be a 400")
        except BadRequestError as e:
            expect("API version not supported" in str(e), f"{e}")
        try:
            self.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=200_000)
            raise Mismatch("a request past the context window should be a 400")
        except BadRequestError as e:
            expect_eq(e.code, "context_length_exceeded", "code")
        try:
            self.client.post("/chat/completions", body={"model": "gpt-4o"}, cast_to=object)
            raise Mismatch("a chat without messages should be a 400")
        except BadRequestError as e:
            expect_eq(e.code, "missing_required_parameter", "code")

    def fault_injection(self) -> None:
        client = self.client.with_options(max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                           extra_headers={"x-sim-status": "404"})
            raise Mismatch("x-sim-status: 404 should be a 404")
        except NotFoundError as e:
            expect_eq(e.body.get("code") if isinstance(e.body, dict) else None, "DeploymentNotFound", "Azure's 404 for a deployment")
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                           extra_headers={"x-sim-status": "503"})
            raise Mismatch("x-sim-status: 503 should fail")
        except openai.InternalServerError as e:
            expect_eq(e.status_code, 503, "status")
        try:
            client.with_options(timeout=0.5).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], extra_headers={"x-sim-head-delay-ms": "5000"})
            raise Mismatch("x-sim-head-delay-ms past the client's timeout should time out")
        except openai.APITimeoutError:
            pass
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True,
            extra_headers={"x-sim-drop-after": "3", "x-sim-reply": REPLY},
        )
        received = []
        try:
            for chunk in stream:
                received.append(chunk)
            raise Mismatch(f"x-sim-drop-after: 3 should cut the stream; got {len(received)} chunks and an end")
        except (openai.APIError, Exception) as e:  # the transport's error, whatever its class
            if isinstance(e, Mismatch):
                raise
        expect_eq(len(received), 3, "chunks before the cut")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    args = parser.parse_args()
    print(f"openai-python {openai.__version__} against {args.base_url}")
    checks = Checks(args.base_url)
    names = [
        "tool_calling_loop", "tool_choice_named_and_streamed", "parse_with_pydantic",
        "stream_helper_with_a_pydantic_tool_and_format", "json_object", "n_choices",
        "max_tokens_logprobs_and_usage", "legacy_completions", "models_list_and_retrieve", "images_generate",
        "files_lifecycle", "batches_lifecycle", "audio_translation_and_speech",
        "responses_previous_response_id", "responses_tool_loop", "responses_background_and_retrieve",
        "responses_background_stream_resumed", "responses_cancel",
        "responses_input_items_and_delete", "azure_errors", "fault_injection",
    ]
    failed = []
    for name in names:
        started = time.monotonic()
        try:
            getattr(checks, name)()
        except Mismatch as e:
            failed.append(name)
            print(f"FAIL {name}: {e}")
        except Exception as e:
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
        print(f"python_simulator: failed checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
