//! Decoding what the stats uploader sends (SPEC §5): `multipart/form-data` parts, gzip, NDJSON
//! records. Plain functions of the content type and body, so the integration tests, the unit
//! tests of `src/upload.rs` and the benchmark (both through `#[path]`) share them.
#![allow(dead_code)]

use flate2::read::GzDecoder;
use std::io::Read;

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    (from..=hay.len().checked_sub(needle.len())?).find(|&i| hay[i..].starts_with(needle))
}

/// The parts of a `multipart/form-data` body with the boundary of `content_type`.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let delim = format!("--{}", boundary.trim_matches('"')).into_bytes();
    let mut idx = Vec::new();
    let mut at = 0;
    while let Some(i) = find(body, &delim, at) {
        idx.push(i);
        at = i + delim.len();
    }
    let mut parts = Vec::new();
    for w in idx.windows(2) {
        let chunk = &body[w[0] + delim.len()..w[1]];
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        let Some(split) = find(chunk, b"\r\n\r\n", 0) else {
            continue;
        };
        let head = String::from_utf8_lossy(&chunk[..split]).into_owned();
        let mut p = Part {
            name: None,
            filename: None,
            content_type: None,
            data: chunk[split + 4..].to_vec(),
        };
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for attr in v.split(';').map(str::trim) {
                        if let Some(n) = attr.strip_prefix("name=") {
                            p.name = Some(n.trim_matches('"').to_string());
                        }
                        if let Some(n) = attr.strip_prefix("filename=") {
                            p.filename = Some(n.trim_matches('"').to_string());
                        }
                    }
                }
                "content-type" => p.content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
        parts.push(p);
    }
    parts
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// The stats records of one upload: the multipart `data` part (gzip NDJSON), or with
/// `no-cache` one JSON body.
pub fn records(content_type: &str, body: &[u8]) -> Vec<serde_json::Value> {
    if content_type.starts_with("application/json") {
        return vec![serde_json::from_slice(body).expect("JSON body")];
    }
    let parts = multipart_parts(content_type, body);
    let data = parts
        .iter()
        .find(|p| p.name.as_deref() == Some("data"))
        .expect("a `data` part");
    String::from_utf8(gunzip(&data.data))
        .expect("UTF-8 NDJSON")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}
