//! Tools, structured output, the other endpoints, Azure's errors, the fault-injection
//! knobs and the stored Responses lifecycle, over real sockets.

use super::*;

/// `request` with `name: value` added.
fn with(
    mut request: Request<Full<Bytes>>,
    name: &'static str,
    value: &'static str,
) -> Request<Full<Bytes>> {
    request.headers_mut().insert(
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    );
    request
}

/// The JSON payloads of an SSE body before `[DONE]`.
fn chunks(body: &[u8]) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[track_caller]
fn assert_valid(schema: &Value, value: &Value) {
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{value:#} against {schema:#}: {errors:?}"
    );
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": false,
    }}})
}

#[tokio::test]
async fn a_tool_is_called_with_valid_arguments_then_its_result_is_answered() {
    let h = harness().await;
    let tool = weather_tool();
    let mut messages = vec![json!({"role": "user", "content": "weather in Paris?"})];
    let (parts, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": messages, "tools": [tool]}),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    let choice = &json["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_valid(&tool["function"]["parameters"], &arguments);

    messages.push(choice["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 22 C"}));
    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": messages, "tools": [tool]}),
        ))
        .await;
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert!(json["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "The tool returned: sunny, 22 C"
    );

    // tool_choice "none": text, even with tools and a user message last.
    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "none"}),
        ))
        .await;
    assert_eq!(json["choices"][0]["message"]["content"], DEFAULT_REPLY);
}

#[tokio::test]
async fn a_streamed_tool_call_sends_id_and_name_first_then_argument_pieces() {
    let h = harness().await;
    let request = with(
        h.post(
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            &json!({"stream": true, "messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()],
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        ),
        "x-sim-chunks",
        "3",
    );
    let (parts, body) = h.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let chunks = chunks(&body);
    // first (no choices), head of the call, 3 argument pieces, finish.
    assert_eq!(chunks.len(), 6, "{chunks:#?}");
    assert_eq!(chunks[0]["choices"], json!([]));
    let head = &chunks[1]["choices"][0]["delta"];
    assert_eq!(head["role"], "assistant");
    assert_eq!(head["tool_calls"][0]["index"], 0);
    assert!(
        head["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_")
    );
    assert_eq!(head["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(head["tool_calls"][0]["function"]["arguments"], "");
    let mut arguments = String::new();
    for chunk in &chunks[2..5] {
        let delta = &chunk["choices"][0]["delta"]["tool_calls"][0];
        assert!(
            delta.get("id").is_none() && delta["function"].get("name").is_none(),
            "{delta}"
        );
        arguments.push_str(delta["function"]["arguments"].as_str().unwrap());
    }
    assert_valid(
        &weather_tool()["function"]["parameters"],
        &serde_json::from_str(&arguments).unwrap(),
    );
    // A tool named by tool_choice ends with "stop", as OpenAI's does.
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn structured_output_is_valid_against_a_strict_schema() {
    let h = harness().await;
    let schema = json!({
        "$defs": {"Item": {"type": "object", "properties": {"name": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                           "required": ["name", "qty"], "additionalProperties": false}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}, "total": {"type": ["number", "null"]}},
        "required": ["items", "total"],
        "additionalProperties": false,
    });
    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "order"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "order", "strict": true, "schema": schema}}}),
        ))
        .await;
    let content: Value =
        serde_json::from_str(json["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_valid(&schema, &content);

    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "json"}], "response_format": {"type": "json_object"}}),
        ))
        .await;
    let content: Value =
        serde_json::from_str(json["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content.is_object(), "{content}");
}

#[tokio::test]
async fn n_stop_max_tokens_logprobs_and_o200k_usage() {
    let h = harness().await;
    let request = with(
        h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}], "n": 3, "stop": [" brown"]}),
        ),
        "x-sim-reply",
        "the quick brown fox",
    );
    let (_, json) = h.send_json(request).await;
    let choices = json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], "the quick");
        assert_eq!(choice["finish_reason"], "stop");
    }
    // o200k_base: "hello world" is 2 tokens, "user" 1, framing 3 + 3; "the quick" is 2,
    // three times.
    assert_eq!(json["usage"]["prompt_tokens"], 9);
    assert_eq!(json["usage"]["completion_tokens"], 6);
    assert_eq!(json["usage"]["total_tokens"], 15);

    let request = with(
        h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": true, "top_logprobs": 3}),
        ),
        "x-sim-reply",
        "the quick brown fox",
    );
    let (_, json) = h.send_json(request).await;
    let choice = &json["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["message"]["content"], "the quick");
    assert_eq!(json["usage"]["completion_tokens"], 2);
    let tokens = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    for token in tokens {
        assert!(token["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(token["top_logprobs"].as_array().unwrap().len(), 3);
        assert!(token.get("offset").is_none());
    }

    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 0}),
        ))
        .await;
    assert_eq!(json["error"]["param"], "n");
}

#[tokio::test]
async fn a_short_reply_is_said_once_in_a_stream() {
    let h = harness().await;
    let request = with(
        with(
            h.post(
                "/openai/v1/chat/completions",
                &json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            ),
            "x-sim-reply",
            "pong",
        ),
        "x-sim-chunks",
        "8",
    );
    let (_, body) = h.send(request).await;
    let chunks = chunks(&body);
    let content: Vec<&str> = chunks[2..chunks.len() - 1]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, ["p", "o", "n", "g"]);
}

#[tokio::test]
async fn azure_refuses_what_azure_refuses() {
    let h = harness_with(Options {
        deployments: Some(["gpt-4o".to_owned()].into()),
    })
    .await;
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (parts, json) = h
        .send_json(h.post(
            "/openai/deployments/other/chat/completions?api-version=2024-10-21",
            &chat,
        ))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "DeploymentNotFound");
    let (parts, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "other", "messages": []}),
        ))
        .await;
    assert_eq!(
        (parts.status, &json["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("DeploymentNotFound"))
    );
    let (parts, _) = h
        .send(h.post(
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            &chat,
        ))
        .await;
    assert_eq!(parts.status, StatusCode::OK);

    let (parts, json) = h
        .send_json(h.post(
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-99-01",
            &chat,
        ))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json,
        json!({"error": {"code": "BadRequest", "message": "API version not supported"}})
    );

    let (parts, json) = h
        .send_json(h.post(
            "/openai/responses?api-version=2024-10-21",
            &json!({"model": "gpt-4o", "input": "hi"}),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-03-01-preview"),
        "{json}"
    );

    let (parts, json) = h
        .send_json(h.post("/openai/v1/chat/completions", &json!({"model": "gpt-4o"})))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["code"], "missing_required_parameter");
    assert_eq!(json["error"]["param"], "messages");

    let long = "word ".repeat(130_000);
    let (parts, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": long}]}),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["code"], "context_length_exceeded");

    // The client's max_tokens counts, however large.
    let (parts, json) = h
        .send_json(h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [], "max_tokens": u64::MAX}),
        ))
        .await;
    assert_eq!(
        (parts.status, &json["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("context_length_exceeded"))
    );

    // x-sim-status: 404 names the deployment's absence where the request names one.
    let (parts, json) = h
        .send_json(with(
            h.post("/openai/v1/chat/completions", &chat),
            "x-sim-status",
            "404",
        ))
        .await;
    assert_eq!(
        (parts.status, &json["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("DeploymentNotFound"))
    );
}

#[tokio::test]
async fn drop_after_cuts_the_stream_after_that_many_frames() {
    let h = harness().await;
    let request = with(
        h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        "x-sim-drop-after",
        "2",
    );
    let response = h.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut frames = 0;
    let cut = loop {
        match body.frame().await {
            Some(Ok(frame)) if frame.is_data() => frames += 1,
            Some(Ok(_)) => {}
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(cut, "the body must end in an error, not cleanly");
    assert_eq!(frames, 2);

    // A JSON answer is one frame: 0 cuts it after the head.
    let request = with(
        h.post(
            "/openai/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": []}),
        ),
        "x-sim-drop-after",
        "0",
    );
    let response = h.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
}

#[tokio::test]
async fn legacy_completions_plain_and_streamed() {
    let h = harness().await;
    let (parts, json) = h
        .send_json(h.post(
            "/openai/deployments/instruct/completions?api-version=2024-10-21",
            &json!({"prompt": "Say hi"}),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["model"], "instruct");
    // max_tokens defaults to 16.
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["usage"]["completion_tokens"], 16);
    assert!(DEFAULT_REPLY.starts_with(json["choices"][0]["text"].as_str().unwrap()));

    let request = with(
        h.post(
            "/openai/v1/completions",
            &json!({"model": "instruct", "prompt": "Say hi", "stream": true, "max_tokens": 50}),
        ),
        "x-sim-reply",
        "one two three",
    );
    let (_, body) = h.send(request).await;
    let chunks = chunks(&body);
    assert_eq!(chunks[0]["choices"], json!([]));
    let text: String = chunks[1..]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    let (_, json) = h
        .send_json(h.post("/openai/v1/completions", &json!({"model": "instruct"})))
        .await;
    assert_eq!(json["error"]["param"], "prompt");
}

#[tokio::test]
async fn models_images_and_speech() {
    let h = harness().await;
    let (parts, json) = h
        .send_json(h.bare(Method::GET, "/openai/v1/models/gpt-4o"))
        .await;
    assert_eq!(
        (parts.status, &json["id"]),
        (StatusCode::OK, &json!("gpt-4o"))
    );
    let (parts, _) = h.send(h.bare(Method::GET, "/openai/v1/models/nope")).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);

    let path = "/openai/deployments/dall-e-3/images/generations?api-version=2024-10-21";
    let (_, json) = h
        .send_json(h.post(path, &json!({"prompt": "a cat", "size": "256x256", "n": 2})))
        .await;
    let urls: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 2);
    // The URL needs no token, like Azure's signed storage URLs.
    let image = Request::get(urls[0]).body(Full::default()).unwrap();
    let (parts, png) = h.send(image).await;
    assert_eq!(parts.headers[header::CONTENT_TYPE], "image/png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let (_, json) = h
        .send_json(h.post(
            path,
            &json!({"prompt": "a cat", "size": "256x256", "response_format": "b64_json"}),
        ))
        .await;
    assert_eq!(
        decode_base64(json["data"][0]["b64_json"].as_str().unwrap()),
        png
    );
    let (parts, json) = h
        .send_json(h.post(path, &json!({"prompt": "a cat", "size": "7x7"})))
        .await;
    assert_eq!(
        (parts.status, &json["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("size"))
    );

    let speech = json!({"model": "tts", "voice": "alloy", "input": "one two three", "response_format": "wav"});
    let (parts, wav) = h.send(h.post("/openai/v1/audio/speech", &speech)).await;
    assert_eq!(parts.headers[header::CONTENT_TYPE], "audio/wav");
    assert_eq!(&wav[..4], b"RIFF");
    let (parts, _) = h
        .send(h.post(
            "/openai/v1/audio/speech",
            &json!({"model": "tts", "voice": "alloy", "input": "x", "response_format": "opus"}),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
}

/// A multipart upload of `content` as `purpose`.
fn upload(h: &Harness, purpose: &str, content: &str) -> Request<Full<Bytes>> {
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{content}\r\n--B--\r\n"
    );
    Request::post(h.url("/openai/files?api-version=2024-10-21").as_str())
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=B")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn a_batch_completes_with_an_output_and_an_error_file() {
    let h = harness().await;
    let lines = [
        json!({"custom_id": "good", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", "messages": []}}),
        json!({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}}),
    ];
    let content = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let (parts, file) = h.send_json(upload(&h, "batch", &content)).await;
    assert_eq!(parts.status, StatusCode::OK, "{file}");
    assert_eq!(file["bytes"], content.len());
    let (parts, json) = h.send_json(upload(&h, "batch", "not json")).await;
    assert_eq!(
        (parts.status, &json["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_file"))
    );

    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let (_, batch) = h
        .send_json(with(
            h.post("/openai/batches?api-version=2024-10-21", &create),
            "x-sim-complete-after-ms",
            "0",
        ))
        .await;
    assert_eq!(batch["status"], "validating");
    let id = batch["id"].as_str().unwrap();
    let (_, done) = h
        .send_json(h.bare(Method::GET, &format!("/openai/v1/batches/{id}")))
        .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let output = done["output_file_id"].as_str().unwrap();
    let (_, out) = h
        .send(h.bare(Method::GET, &format!("/openai/v1/files/{output}/content")))
        .await;
    let record: Value = serde_json::from_slice(out.trim_ascii()).unwrap();
    assert_eq!(record["custom_id"], "good");
    assert_eq!(record["response"]["body"]["object"], "chat.completion");
    let errors = done["error_file_id"].as_str().unwrap();
    let (_, err) = h
        .send(h.bare(Method::GET, &format!("/openai/v1/files/{errors}/content")))
        .await;
    let record: Value = serde_json::from_slice(err.trim_ascii()).unwrap();
    assert_eq!(record["custom_id"], "bad");
    assert_eq!(record["response"]["status_code"], 400);
    // A finished batch cannot be cancelled.
    let (parts, _) = h
        .send(h.bare(Method::POST, &format!("/openai/v1/batches/{id}/cancel")))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);

    let (_, listed) = h.send_json(h.bare(Method::GET, "/openai/v1/files")).await;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["batch_error.jsonl", "batch_output.jsonl", "in.jsonl"]
    );
    let (parts, _) = h
        .send(h.bare(Method::GET, "/openai/v1/batches/batch_none"))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stored_responses_retrieve_cancel_delete_and_input_items() {
    let h = harness().await;
    let slow = with(
        h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "hi", "background": true}),
        ),
        "x-sim-complete-after-ms",
        "60000",
    );
    let (_, queued) = h.send_json(slow).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["background"], true);
    let id = queued["id"].as_str().unwrap();
    let (_, now) = h
        .send_json(h.bare(Method::GET, &format!("/openai/v1/responses/{id}")))
        .await;
    assert_eq!(now["status"], "in_progress");
    let (_, cancelled) = h
        .send_json(h.bare(Method::POST, &format!("/openai/v1/responses/{id}/cancel")))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    // Cancelling again is harmless.
    let (parts, again) = h
        .send_json(h.bare(Method::POST, &format!("/openai/v1/responses/{id}/cancel")))
        .await;
    assert_eq!(
        (parts.status, &again["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );

    let quick = with(
        h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "hi", "background": true}),
        ),
        "x-sim-complete-after-ms",
        "0",
    );
    let (_, queued) = h.send_json(quick).await;
    let quick_id = queued["id"].as_str().unwrap();
    let (_, done) = h
        .send_json(h.bare(Method::GET, &format!("/openai/v1/responses/{quick_id}")))
        .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], DEFAULT_REPLY);
    let (parts, _) = h
        .send(h.bare(
            Method::POST,
            &format!("/openai/v1/responses/{quick_id}/cancel"),
        ))
        .await;
    assert_eq!(
        parts.status,
        StatusCode::BAD_REQUEST,
        "a completed response cannot be cancelled"
    );

    let input = json!([{"role": "user", "content": "first"}, {"role": "user", "content": [{"type": "input_text", "text": "second"}]}]);
    let (_, plain) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": input, "previous_response_id": quick_id}),
        ))
        .await;
    assert_eq!(plain["previous_response_id"], quick_id);
    let plain_id = plain["id"].as_str().unwrap();
    let (parts, _) = h
        .send(h.bare(
            Method::POST,
            &format!("/openai/v1/responses/{plain_id}/cancel"),
        ))
        .await;
    assert_eq!(
        parts.status,
        StatusCode::BAD_REQUEST,
        "only background responses can be cancelled"
    );
    let (_, items) = h
        .send_json(h.bare(
            Method::GET,
            &format!("/openai/v1/responses/{plain_id}/input_items"),
        ))
        .await;
    let texts: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["content"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["second", "first"], "newest first");
    assert!(
        items["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"].as_str().unwrap().starts_with("msg_"))
    );

    let (_, deleted) = h
        .send_json(h.bare(Method::DELETE, &format!("/openai/v1/responses/{plain_id}")))
        .await;
    assert_eq!(deleted["deleted"], true);
    let (parts, _) = h
        .send(h.bare(Method::GET, &format!("/openai/v1/responses/{plain_id}")))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);

    let (parts, json) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "x", "previous_response_id": plain_id}),
        ))
        .await;
    assert_eq!(
        (parts.status, &json["error"]["code"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("previous_response_not_found")
        )
    );

    // store: false keeps nothing.
    let (_, unstored) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "x", "store": false}),
        ))
        .await;
    let unstored_id = unstored["id"].as_str().unwrap();
    let (parts, _) = h
        .send(h.bare(Method::GET, &format!("/openai/v1/responses/{unstored_id}")))
        .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn responses_structured_output_follows_the_text_format() {
    let h = harness().await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": false});
    let (_, json) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "2+2?", "text": {"format": {"type": "json_schema", "name": "a", "strict": true, "schema": schema}}}),
        ))
        .await;
    let text = json["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_valid(&schema, &serde_json::from_str(text).unwrap());
    assert_eq!(json["text"]["format"]["type"], "json_schema");
}

#[tokio::test]
async fn responses_call_a_function_then_answer_its_output() {
    let h = harness().await;
    let parameters = weather_tool()["function"]["parameters"].clone();
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": parameters, "strict": true}]);
    let (_, first) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "weather?", "tools": tools}),
        ))
        .await;
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    assert_valid(
        &parameters,
        &serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap(),
    );
    assert_eq!(first["tools"][0]["name"], "get_weather");

    let output =
        json!([{"type": "function_call_output", "call_id": call["call_id"], "output": "rain"}]);
    let (_, second) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": output, "tools": tools, "previous_response_id": first["id"]}),
        ))
        .await;
    assert_eq!(second["output"][0]["type"], "message");
    assert_eq!(
        second["output"][0]["content"][0]["text"],
        "The tool returned: rain"
    );

    // Streamed: the item, then the arguments in pieces, then done.
    let request = with(
        h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "weather?", "tools": tools, "stream": true}),
        ),
        "x-sim-chunks",
        "3",
    );
    let (_, body) = h.send(request).await;
    let text = std::str::from_utf8(&body).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
}

#[tokio::test]
async fn responses_max_output_tokens_make_an_incomplete_response() {
    let h = harness().await;
    let request = with(
        h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 2}),
        ),
        "x-sim-reply",
        "the quick brown fox",
    );
    let (_, json) = h.send_json(request).await;
    assert_eq!(json["status"], "incomplete");
    assert_eq!(json["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(json["output"][0]["content"][0]["text"], "the quick");
    assert_eq!(json["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn a_streamed_background_response_can_be_streamed_again_from_an_event() {
    let h = harness().await;
    let (_, body) = h
        .send(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "hi", "background": true, "stream": true}),
        ))
        .await;
    let first: Vec<Value> = sse_data(&body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = first[0]["response"]["id"].as_str().unwrap();
    let (parts, again) = h
        .send(h.bare(
            Method::GET,
            &format!("/openai/v1/responses/{id}?stream=true&starting_after=3"),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    let resumed: Vec<Value> = sse_data(&again)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(resumed, first[4..]);
    assert_eq!(resumed[0]["sequence_number"], 4);

    // A response made without stream cannot be streamed again.
    let (_, plain) = h
        .send_json(h.post(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "hi", "background": true}),
        ))
        .await;
    let plain_id = plain["id"].as_str().unwrap();
    let (parts, _) = h
        .send(h.bare(
            Method::GET,
            &format!("/openai/v1/responses/{plain_id}?stream=true"),
        ))
        .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn streamed_logprobs_belong_to_the_frame_whose_text_they_spell() {
    let h = harness().await;
    let request = with(
        with(
            h.post(
                "/openai/v1/chat/completions",
                &json!({"model": "gpt-4o", "stream": true, "logprobs": true, "top_logprobs": 1,
                        "messages": [{"role": "user", "content": "hi"}]}),
            ),
            "x-sim-reply",
            "the quick brown fox jumps",
        ),
        "x-sim-chunks",
        "2",
    );
    let (_, body) = h.send(request).await;
    let chunks = chunks(&body);
    let content_frames = &chunks[2..chunks.len() - 1];
    assert_eq!(content_frames.len(), 2);
    let mut all = String::new();
    for frame in content_frames {
        let choice = &frame["choices"][0];
        let text = choice["delta"]["content"].as_str().unwrap();
        let spelled: String = choice["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        assert_eq!(spelled, text);
        all.push_str(text);
    }
    assert_eq!(all, "the quick brown fox jumps");
}

#[tokio::test]
async fn head_delay_holds_even_an_error_back() {
    let h = harness().await;
    let request = with(
        with(
            h.post(
                "/openai/v1/chat/completions",
                &json!({"model": "gpt-4o", "messages": []}),
            ),
            "x-sim-head-delay-ms",
            "150",
        ),
        "x-sim-status",
        "429",
    );
    let started = std::time::Instant::now();
    let (parts, _) = h.send(request).await;
    // A lower bound only: a busy machine makes it later, never sooner.
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
}
