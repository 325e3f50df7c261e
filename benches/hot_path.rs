//! Micro-benchmarks of keyless's per-request work, apart from I/O: route a path, find and
//! replace the model in a JSON body, rewrite the headers. `cargo bench --bench hot_path`.
//!
//! These are the pure functions `app.rs` calls for every chat request; the load benchmark
//! (`cargo bench --bench load`) shows what they weigh against hyper, tokio and the kernel.

#![forbid(unsafe_code)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use keyless::config::ApiStyle;
use keyless::route::{self, Inbound, Op};
use keyless::{model, rewrite};
use std::hint::black_box;

/// What the load benchmark sends.
const SMALL: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// A chat with some history (~8 KiB), `model` last, as some SDKs serialize it.
fn large_body() -> String {
    let turn = r#"{"role":"user","content":"Summarize the following paragraph in one sentence, keeping the names and figures: the quarterly report shows revenue up 12% year on year, driven by the cloud segment."},{"role":"assistant","content":"Revenue grew 12% year on year, mostly thanks to cloud."}"#;
    let turns: Vec<&str> = std::iter::repeat_n(turn, 28).collect();
    format!(
        r#"{{"messages":[{}],"temperature":0.2,"stream":true,"stream_options":{{"include_usage":true}},"model":"gpt-4o-mini"}}"#,
        turns.join(",")
    )
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.bench_function("classify /v1/chat/completions", |b| {
        b.iter(|| route::classify(black_box("/v1/chat/completions")))
    });
    g.bench_function("classify /openai/deployments/x/chat/completions", |b| {
        b.iter(|| {
            route::classify(black_box(
                "/openai/deployments/gpt-4o-mini/chat/completions",
            ))
        })
    });
    g.bench_function("classify unknown", |b| {
        b.iter(|| route::classify(black_box("/favicon.ico")))
    });
    let Inbound::OpenAi(op) = route::classify("/v1/chat/completions") else {
        panic!("/v1/chat/completions is an OpenAI route");
    };
    g.bench_function("upstream_path v1", |b| {
        b.iter(|| {
            route::upstream_path(
                black_box(""),
                ApiStyle::V1,
                black_box(op),
                Some(black_box("gpt-4o-mini")),
                "2024-10-21",
                None,
            )
        })
    });
    g.bench_function("upstream_path deployments", |b| {
        b.iter(|| {
            route::upstream_path(
                black_box(""),
                ApiStyle::Deployments,
                black_box(Op {
                    path: "chat/completions",
                }),
                Some(black_box("gpt-4o-mini")),
                "2024-10-21",
                None,
            )
        })
    });
    g.finish();
}

fn model_extraction(c: &mut Criterion) {
    let large = large_body();
    let mut g = c.benchmark_group("model");
    for (name, body) in [("small", SMALL), ("8KiB", large.as_str())] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("find_json_model {name}"), |b| {
            b.iter(|| model::find_json_model(black_box(body.as_bytes())))
        });
        let found = match model::find_json_model(body.as_bytes()) {
            Ok(Some(found)) => found,
            other => panic!("no model in the {name} body: {other:?}"),
        };
        g.bench_function(format!("splice_json_string {name}"), |b| {
            b.iter(|| {
                model::splice_json_string(
                    black_box(body.as_bytes()),
                    found.span.clone(),
                    black_box("prod-4o-mini"),
                )
            })
        });
    }
    g.finish();
}

/// The headers the OpenAI Python SDK sends with a chat request.
fn sdk_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:8787"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.3"),
        ("authorization", "Bearer sk-unused"),
        ("x-stainless-async", "false"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-read-timeout", "600"),
        ("content-length", "71"),
    ] {
        h.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

fn header_rewrite(c: &mut Criterion) {
    let template = sdk_headers();
    let bearer = match rewrite::bearer(&format!(
        "sim.{}.1900000000.{}",
        "0".repeat(32),
        "f".repeat(16)
    )) {
        Ok(v) => v,
        Err(e) => panic!("bearer: {e}"),
    };
    let mut g = c.benchmark_group("rewrite");
    g.bench_function("request_headers (17 SDK headers)", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| rewrite::request_headers(headers, bearer.clone()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("response_headers", |b| {
        let mut response = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("apim-request-id", "6f1c1a3e-0c1d-4d8e-9f4b-3b2a1c0d9e8f"),
            ("x-request-id", "6f1c1a3e-0c1d-4d8e-9f4b-3b2a1c0d9e8f"),
            ("x-ratelimit-remaining-requests", "999"),
            ("x-ratelimit-remaining-tokens", "999000"),
            ("x-ms-region", "Sweden Central"),
            ("content-length", "812"),
        ] {
            response.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        b.iter_batched_ref(
            || response.clone(),
            rewrite::response_headers,
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, routing, model_extraction, header_rewrite);
criterion_main!(benches);
