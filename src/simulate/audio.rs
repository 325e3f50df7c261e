//! Audio: `audio/transcriptions` and `audio/translations`, a multipart upload answered with
//! a made-up transcript that names what arrived (the `model` field and the file's size), so
//! a test can see the upload passed through keyless intact; `audio/speech`, a short valid
//! audio file (a tone in WAV and PCM, silence in MP3) whose length follows the input.

use super::{Body, Call, errors, full, invalid_request, json_response};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use std::convert::Infallible;

/// Which of the two upload operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Task {
    Transcribe,
    Translate,
}

/// `POST .../audio/transcriptions` and `.../audio/translations`.
pub(super) async fn transcribe(
    task: Task,
    deployment: Option<&str>,
    call: &Call<'_>,
) -> Response<Body> {
    let (headers, body, knobs) = (&call.parts.headers, call.body.clone(), call.knobs);
    let Some(boundary) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
    else {
        return invalid_request("Expected a multipart/form-data body with a boundary.");
    };
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut model = None;
    let mut file = None;
    let mut response_format = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                return invalid_request(&format!("Could not parse the multipart body: {error}"));
            }
        };
        let name = field.name().map(str::to_owned);
        let read = match name.as_deref() {
            Some("model") => field.text().await.map(|text| model = Some(text)),
            Some("response_format") => field.text().await.map(|text| response_format = Some(text)),
            Some("file") => {
                let file_name = field.file_name().unwrap_or("audio").to_owned();
                field
                    .bytes()
                    .await
                    .map(|bytes| file = Some((file_name, bytes.len())))
            }
            _ => Ok(()),
        };
        if let Err(error) = read {
            return invalid_request(&format!("Could not parse the multipart body: {error}"));
        }
    }
    let Some((file_name, size)) = file else {
        return errors::missing("file");
    };
    if deployment.is_none()
        && let Some(missing) = model.as_deref().and_then(|m| call.missing_deployment(m))
    {
        return missing;
    }
    let model = model
        .as_deref()
        .or(deployment)
        .unwrap_or("(no model field)");
    let what = match task {
        Task::Transcribe => "transcription",
        Task::Translate => "English translation",
    };
    let text = format!("Simulated {what} of {file_name} ({size} bytes) by {model}.");
    knobs.pause().await;
    // `text`, `srt` and `vtt` are plain text; `json` and `verbose_json` are JSON.
    if matches!(response_format.as_deref(), Some("text" | "srt" | "vtt")) {
        let mut response = Response::new(full(Bytes::from(text + "\n")));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    }
    let body = serde_json::json!({ "text": text });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

#[derive(Deserialize)]
struct SpeechRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    voice: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    speed: Option<f64>,
}

/// PCM's rate, as OpenAI's `pcm` format is: 24 kHz, 16-bit, mono.
const RATE: u32 = 24_000;

/// `POST .../audio/speech`: about a third of a second a word, a second at least, 30 at
/// most, divided by `speed`.
pub(super) async fn speech(deployment: Option<&str>, call: &Call<'_>) -> Response<Body> {
    let request: SpeechRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return super::invalid_json(&error),
    };
    let model = deployment.or(request.model.as_deref());
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return errors::missing("model");
    };
    if deployment.is_none()
        && let Some(missing) = call.missing_deployment(model)
    {
        return missing;
    }
    let Some(input) = request.input.filter(|i| !i.is_empty()) else {
        return errors::missing("input");
    };
    if request.voice.is_none() {
        return errors::missing("voice");
    }
    let speed = request.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            "Invalid 'speed': must be between 0.25 and 4.0.",
            Some("speed"),
            Some("invalid_value"),
        );
    }
    let words = input.split_whitespace().count() as f64;
    let seconds = (words / 3.0).clamp(1.0, 30.0) / speed;
    let (audio, content_type) = match request.response_format.as_deref().unwrap_or("mp3") {
        "mp3" => (silent_mp3(seconds), "audio/mpeg"),
        "wav" => (wav(&tone(seconds)), "audio/wav"),
        "pcm" => (Bytes::from(tone(seconds)), "audio/pcm"),
        other => {
            return errors::openai_error(
                StatusCode::BAD_REQUEST,
                &format!("The simulator answers speech as mp3, wav or pcm, not '{other}'."),
                Some("response_format"),
                Some("invalid_value"),
            );
        }
    };
    call.knobs.pause().await;
    let mut response = Response::new(full(audio));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A 440 Hz tone, 16-bit little-endian mono samples at [`RATE`].
fn tone(seconds: f64) -> Vec<u8> {
    let samples = (seconds * f64::from(RATE)) as usize;
    let mut out = Vec::with_capacity(samples * 2);
    for n in 0..samples {
        let t = n as f64 / f64::from(RATE);
        let sample = (6000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

/// `pcm` in a RIFF/WAVE container (the 44-byte canonical header).
fn wav(pcm: &[u8]) -> Bytes {
    let len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(pcm);
    Bytes::from(out)
}

/// MPEG-1 Layer III frames of silence: 48 kHz mono at 128 kbit/s makes every frame
/// exactly 384 bytes (144 * 128000 / 48000, no padding) of 1152 samples (24 ms). A frame
/// whose side information and main data are all zero decodes to silence.
fn silent_mp3(seconds: f64) -> Bytes {
    const FRAME: usize = 384;
    // Sync, MPEG-1, Layer III, no CRC; 128 kbit/s, 48 kHz, no padding; mono.
    const HEADER: [u8; 4] = [0xFF, 0xFB, 0x94, 0xC0];
    let frames = ((seconds / 0.024).ceil() as usize).max(1);
    let mut out = vec![0u8; frames * FRAME];
    for frame in out.chunks_exact_mut(FRAME) {
        frame[..4].copy_from_slice(&HEADER);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_the_samples() {
        let pcm = tone(1.0);
        let file = wav(&pcm);
        assert_eq!(&file[..4], b"RIFF");
        assert_eq!(&file[8..16], b"WAVEfmt ");
        let data_len = u32::from_le_bytes([file[40], file[41], file[42], file[43]]) as usize;
        assert_eq!(data_len, pcm.len());
        assert_eq!(data_len, RATE as usize * 2);
        assert_eq!(file.len(), 44 + data_len);
    }

    #[test]
    fn mp3_is_whole_frames_each_with_a_sync_header() {
        let mp3 = silent_mp3(1.0);
        assert_eq!(mp3.len() % 384, 0);
        assert_eq!(mp3.len() / 384, 42); // ceil(1 / 0.024)
        assert!(mp3.chunks(384).all(|f| f[..4] == [0xFF, 0xFB, 0x94, 0xC0]));
    }
}
