//! `qwenedge bench --tokenizer`: how long the model's tokenizer takes on 1 MiB of each input
//! shape a hostile or careless client can send (one letter repeated, random letters, spaces,
//! random code points, CJK, emoji), so that no shape costs more than linear time. A human table
//! goes to stderr, one JSON line to stdout.

use std::time::Instant;

use qwenedge_engine::model::ModelSpec;
use qwenedge_engine::tokenizer::TextTokenizer;
use serde_json::json;

/// Bytes of each sample.
const SAMPLE_BYTES: usize = 1 << 20;

/// A small deterministic generator for the random shapes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

/// `bytes` of text made of characters from `pick`.
fn sample(bytes: usize, mut pick: impl FnMut() -> char) -> String {
    let mut s = String::with_capacity(bytes + 4);
    while s.len() < bytes {
        s.push(pick());
    }
    s
}

/// The input shapes, each about `bytes` long, by name.
pub fn shapes(bytes: usize) -> Vec<(&'static str, String)> {
    let mut r = Lcg(0x5eed);
    vec![
        ("one_letter", "a".repeat(bytes)),
        ("random_letters", sample(bytes, || char::from(b'a' + r.next(26) as u8))),
        ("spaces", " ".repeat(bytes)),
        (
            "random_code_points",
            sample(bytes, || loop {
                if let Some(c) = char::from_u32(r.next(0x3_0000)) {
                    break c;
                }
            }),
        ),
        ("cjk", sample(bytes, || char::from_u32(0x4e00 + r.next(0x5200)).unwrap_or('中'))),
        ("emoji", sample(bytes, || char::from_u32(0x1f600 + r.next(0x50)).unwrap_or('😀'))),
    ]
}

/// Runs the tokenizer benchmark on `model`'s tokenizer.
pub fn run(model: &std::path::Path) -> anyhow::Result<()> {
    let spec = ModelSpec::load(model)?;
    let tokenizer = TextTokenizer::load(&spec)?;
    eprintln!("qwenedge bench --tokenizer  {}", spec.tokenizer_path.display());
    let mut line = json!({"engine": "qwenedge", "bench": "tokenizer", "model": model.display().to_string(), "sample_bytes": SAMPLE_BYTES});
    let mut slowest = 0f64;
    for (name, text) in shapes(SAMPLE_BYTES) {
        let began = Instant::now();
        let tokens = tokenizer.encode(&text)?.len();
        let ms = began.elapsed().as_secs_f64() * 1e3;
        slowest = slowest.max(ms);
        eprintln!("  {name:<20} {ms:>9.1} ms  {tokens:>8} tokens  ({:.1} MB/s)", text.len() as f64 / 1e3 / ms);
        line[format!("{name}_ms")] = json!(ms);
        line[format!("{name}_tokens")] = json!(tokens);
    }
    line["slowest_ms"] = json!(slowest);
    println!("{line}");
    Ok(())
}
