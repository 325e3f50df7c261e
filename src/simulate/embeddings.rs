//! `embeddings`: deterministic unit vectors (the same text always gets the same vector),
//! as floats or, as openai-python asks by default, base64 of little-endian `f32`s.

use super::{Body, Call, error_response, errors, invalid_json, invalid_request, json_response};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Vector length when the request names no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;
/// text-embedding-3-large's size: the most Azure offers.
const MAX_DIMENSIONS: usize = 3072;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST .../embeddings`: one embedding per input (a string, a token array, or an array of
/// either).
pub(super) async fn create(deployment: Option<&str>, call: &Call<'_>) -> Response<Body> {
    let knobs = call.knobs;
    let request: EmbeddingsRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return invalid_json(&error),
    };
    let Some(model) = deployment
        .or(request.model.as_deref())
        .filter(|model| !model.is_empty())
    else {
        return errors::missing("model");
    };
    if deployment.is_none()
        && let Some(missing) = call.missing_deployment(model)
    {
        return missing;
    }
    let Some(inputs) = request.input.as_ref().and_then(inputs) else {
        return invalid_request(
            "'input' must be a string, an array of strings, or an array of token arrays.",
        );
    };
    let dimensions = request.dimensions.map_or(DEFAULT_DIMENSIONS, |n| {
        usize::try_from(n)
            .unwrap_or(MAX_DIMENSIONS)
            .clamp(1, MAX_DIMENSIONS)
    });
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let tokens: u64 = inputs.iter().map(|input| input.tokens).sum();
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = unit_vector(input.seed, dimensions);
            EmbeddingItem {
                object: "embedding",
                index,
                embedding: if base64 {
                    Embedding::Base64(base64_f32_le(&vector))
                } else {
                    Embedding::Floats(vector)
                },
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    knobs.pause().await;
    match serde_json::to_vec(&list) {
        Ok(body) => json_response(StatusCode::OK, Bytes::from(body)),
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            &error.to_string(),
        ),
    }
}

/// One input to embed: what its vector derives from and how many tokens it counts.
struct Input {
    seed: u64,
    tokens: u64,
}

/// The inputs of `input`, or `None` when it has no valid shape.
fn inputs(input: &Value) -> Option<Vec<Input>> {
    match input {
        Value::String(_) => Some(vec![one(input)?]),
        // An array of numbers is one tokenized input, not many.
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Some(vec![one(input)?])
        }
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        _ => None,
    }
}

fn one(input: &Value) -> Option<Input> {
    let mut hasher = DefaultHasher::new();
    let tokens = match input {
        Value::String(text) => {
            text.hash(&mut hasher);
            super::tokens::count(text).max(1)
        }
        Value::Array(tokens) if tokens.iter().all(Value::is_number) => {
            for token in tokens {
                token.as_i64().hash(&mut hasher);
            }
            tokens.len() as u64
        }
        _ => return None,
    };
    Some(Input {
        seed: hasher.finish(),
        tokens,
    })
}

/// A unit-length vector drawn from a splitmix64 sequence seeded by the input.
fn unit_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 24 bits as a fraction in [-1, 1).
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// Standard base64 (with padding) of the vector's little-endian `f32` bytes, which
/// openai-python decodes with `np.frombuffer(base64.b64decode(s), dtype="float32")`.
fn base64_f32_le(vector: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_encodings() {
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(base64_f32_le(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32_le(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32_le(&[1.0, 2.0, -1.0]), "AACAPwAAAEAAAIC/");
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let a = unit_vector(42, 8);
        assert_eq!(a, unit_vector(42, 8));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }

    #[test]
    fn token_array_is_one_input() {
        assert_eq!(
            inputs(&serde_json::json!([1, 2, 3])).map(|v| v.len()),
            Some(1)
        );
        assert_eq!(
            inputs(&serde_json::json!(["a", "b"])).map(|v| v.len()),
            Some(2)
        );
        assert_eq!(
            inputs(&serde_json::json!([[1, 2], [3]])).map(|v| v.len()),
            Some(2)
        );
        assert!(inputs(&serde_json::json!([])).is_none());
        assert!(inputs(&serde_json::json!(7)).is_none());
    }
}
