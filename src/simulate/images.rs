//! `images/generations`: a valid PNG of the requested size, one colour (derived from the
//! prompt, so the same prompt gives the same image), as `b64_json` or as a `url` this
//! simulator serves without a token, as Azure serves its generated images from storage
//! behind a signed URL.

use super::chat::filter_safe;
use super::{Body, Call, errors, full, json_ok, not_found, random_id, unix_now};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Where generated images are fetched: `{endpoint}/sim/images/{id}.png`.
pub(super) const URL_PREFIX: &str = "/sim/images/";

/// The sizes dall-e-3 and gpt-image-1 accept, and `auto`.
const SIZES: &[&str] = &[
    "256x256",
    "512x512",
    "1024x1024",
    "1792x1024",
    "1024x1792",
    "1536x1024",
    "1024x1536",
];

#[derive(Deserialize)]
struct ImageRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
}

/// `POST .../images/generations`.
pub(super) async fn generate(deployment: Option<&str>, call: &Call<'_>) -> Response<Body> {
    let request: ImageRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return super::invalid_json(&error),
    };
    let model = deployment
        .or(request.model.as_deref())
        .unwrap_or("dall-e-3");
    if deployment.is_none()
        && let Some(missing) = call.missing_deployment(model)
    {
        return missing;
    }
    let Some(prompt) = request.prompt.filter(|p| !p.trim().is_empty()) else {
        return errors::missing("prompt");
    };
    let size = request.size.as_deref().unwrap_or("1024x1024");
    let size = if size == "auto" { "1024x1024" } else { size };
    let Some((width, height)) = SIZES
        .contains(&size)
        .then(|| size.split_once('x'))
        .flatten()
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
    else {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid size '{size}'. Supported: {}, auto.",
                SIZES.join(", ")
            ),
            Some("size"),
            Some("invalid_value"),
        );
    };
    let n = request.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            "Invalid 'n': integer must be between 1 and 10.",
            Some("n"),
            Some("invalid_value"),
        );
    }
    // gpt-image-1 answers with base64 only; dall-e defaults to a URL.
    let b64 = match request.response_format.as_deref() {
        Some("b64_json") => true,
        Some("url") => false,
        Some(other) => {
            return errors::openai_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid response_format '{other}': use 'url' or 'b64_json'."),
                Some("response_format"),
                Some("invalid_value"),
            );
        }
        None => model.starts_with("gpt-image"),
    };
    let png = match png_of(&prompt, width, height) {
        Ok(png) => png,
        Err(error) => {
            return errors::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                &format!("The simulator could not encode the image: {error}"),
            );
        }
    };
    call.knobs.pause().await;
    let mut data = Vec::new();
    for _ in 0..n {
        let mut item = json!({
            "revised_prompt": prompt,
            "content_filter_results": serde_json::from_str::<Value>(filter_safe!()).unwrap_or(Value::Null),
            "prompt_filter_results": serde_json::from_str::<Value>(filter_safe!()).unwrap_or(Value::Null),
        });
        if b64 {
            item["b64_json"] = Value::from(base64::engine::general_purpose::STANDARD.encode(&png));
        } else {
            let id = random_id("img_", 32);
            let mut url = call.state.endpoint.clone();
            url.set_path(&format!("{URL_PREFIX}{id}.png"));
            call.state.store.lock().images.insert(id, png.clone());
            item["url"] = Value::from(url.as_str());
        }
        data.push(item);
    }
    json_ok(&json!({"created": unix_now(), "data": data}))
}

/// `GET /sim/images/{id}.png`: an image generated earlier.
pub(super) fn serve(state: &super::State, method: &Method, name: &str) -> Response<Body> {
    if method != Method::GET {
        return not_found();
    }
    let image = name
        .strip_suffix(".png")
        .and_then(|id| state.store.lock().images.get(id).cloned());
    match image {
        Some(png) => {
            let mut response = Response::new(full(png));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            response
        }
        None => not_found(),
    }
}

/// A `width` x `height` RGB PNG of one colour picked by `prompt`.
fn png_of(prompt: &str, width: u32, height: u32) -> Result<Bytes, png::EncodingError> {
    let mut hasher = DefaultHasher::new();
    prompt.hash(&mut hasher);
    let [r, g, b, ..] = hasher.finish().to_le_bytes();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    let pixels: Vec<u8> = [r, g, b]
        .iter()
        .copied()
        .cycle()
        .take(width as usize * height as usize * 3)
        .collect();
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_decodes_to_the_asked_size() {
        let png = png_of("a red fox", 256, 256).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (256, 256));
        assert_eq!(png, png_of("a red fox", 256, 256).unwrap(), "deterministic");
    }
}
