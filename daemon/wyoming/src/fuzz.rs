//! Property tests of the Wyoming frame decoder: random bytes, random JSON, valid frames
//! truncated or with a bit flipped, pushed in random chunk sizes. It must return, never panic,
//! say something in each error, and keep its buffer bounded.

#[allow(dead_code)]
#[path = "../../../tests/common/fuzz_input.rs"]
mod input;

use input::*;

const WYOMING: &[&str] = &[
    "{\"type\":\"describe\"}\n",
    "{\"type\":\"transcript\",\"data\":{\"text\":\"turn on the light\",\"language\":\"en\"}}\n",
    "{\"type\":\"transcript\",\"data_length\":16}\n{\"text\":\"lights on\"}",
    "{\"type\":\"audio-chunk\",\"data_length\":2,\"payload_length\":4}\n{}\u{1}\u{2}\u{3}\u{4}",
];

#[test]
fn wyoming_frames() {
    use crate::codec::{Decoder, Limits as FrameLimits};
    let strategy = (prop::collection::vec(input(WYOMING), 1..4), 1usize..64);
    run(strategy, |(pieces, chunk)| {
        let mut d = Decoder::new(FrameLimits { header: 4096, data: 8192, payload: 8192 });
        let bytes: Vec<u8> = pieces.concat();
        for part in bytes.chunks(chunk) {
            d.push(part);
            // Every frame the bytes hold, until more are needed or the stream is unusable.
            for _ in 0..bytes.len() + 2 {
                match d.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        said(&e.to_string())?;
                        if !e.recoverable() {
                            return Ok(());
                        }
                    }
                }
            }
            prop_assert!(d.buffered() <= 4096 + 8192 + 8192 + chunk, "{} bytes buffered", d.buffered());
        }
        Ok(())
    });
}
