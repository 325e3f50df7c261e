#!/usr/bin/env python3
"""A shared keyless gateway with app keys, driven by the official OpenAI Python SDK.

    python_apps.py BASE_URL KEY_A KEY_B

keyless runs with two apps: `a` (key KEY_A, only gpt-4o-mini, rpm = 3) and `b` (KEY_B,
any model, no limits), in front of its simulator. Each check prints `ok   NAME` or
`FAIL NAME: why`; the exit status is 1 when any failed. Driven by tests/sdk.rs.
"""

from __future__ import annotations

import sys
import traceback

import json
import urllib.request
import openai
from openai import AzureOpenAI, OpenAI

failed = 0


def check(name, fn):
    global failed
    try:
        fn()
        print(f"ok   {name}")
    except Exception:  # noqa: BLE001 - every failure is reported, none stops the run
        failed += 1
        print(f"FAIL {name}: {traceback.format_exc()}")


def main() -> int:
    base, key_a, key_b = sys.argv[1], sys.argv[2], sys.argv[3]
    a = OpenAI(base_url=f"{base}/v1", api_key=key_a, max_retries=0)
    b_azure = AzureOpenAI(
        azure_endpoint=base, api_key=key_b, api_version="2024-10-21", max_retries=0
    )
    messages = [{"role": "user", "content": "hi"}]

    def bearer_key():
        r = a.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert r.choices[0].message.content, r

    def api_key_header():
        # AzureOpenAI sends the key as `api-key`, on the Azure-style path.
        r = b_azure.chat.completions.create(model="gpt-4o", messages=messages)
        assert r.choices[0].message.content, r

    def unknown_key():
        bad = OpenAI(base_url=f"{base}/v1", api_key="sk-unknown", max_retries=0)
        try:
            bad.chat.completions.create(model="gpt-4o-mini", messages=messages)
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.code == "invalid_api_key", e
        else:
            raise AssertionError("an unknown key was served")

    def model_not_allowed():
        try:
            a.chat.completions.create(model="gpt-4o", messages=messages)
        except openai.PermissionDeniedError as e:
            assert e.status_code == 403 and e.code == "model_not_allowed", e
        else:
            raise AssertionError("a model outside the allowlist was served")

    def rate_limited():
        # Two used above (one call, one refused for its model: no budget spent).
        raw = a.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert raw.headers["x-ratelimit-limit-requests"] == "3", raw.headers
        assert raw.headers["x-ratelimit-remaining-requests"] == "1", raw.headers
        a.chat.completions.create(model="gpt-4o-mini", messages=messages)
        try:
            a.chat.completions.create(model="gpt-4o-mini", messages=messages)
        except openai.RateLimitError as e:
            assert e.status_code == 429 and e.code == "rate_limit_exceeded", e
            assert int(e.response.headers["retry-after-ms"]) > 0
        else:
            raise AssertionError("the fourth request a minute was served")

    def usage_rows():
        request = urllib.request.Request(
            f"{base}/usage", headers={"Authorization": f"Bearer {key_a}"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200, r.status
            rows = json.load(r)["usage"]
        assert {row["app"] for row in rows} == {"a"}, rows
        assert sum(row["requests"] for row in rows) == 3, rows
        assert all(row["total_tokens"] > 0 for row in rows), rows

    check("a key as Authorization: Bearer (OpenAI)", bearer_key)
    check("a key as api-key (AzureOpenAI)", api_key_header)
    check("an unknown key: AuthenticationError 401 invalid_api_key", unknown_key)
    check("a model outside the allowlist: PermissionDeniedError 403", model_not_allowed)
    check("rpm: x-ratelimit headers, then RateLimitError 429", rate_limited)
    check("GET /usage shows the app's own rows", usage_rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
