//! Wyoming framing, with no I/O: a JSON header line (`type`, `data`, `data_length`,
//! `payload_length`, `version`), then `data_length` bytes of JSON merged over the header's
//! `data`, then `payload_length` bytes of payload — as the `wyoming` Python package reads and
//! writes it (`wyoming/event.py`). [`Decoder`] takes bytes as they arrive and hands back whole
//! frames; every size is bounded before anything is buffered.

use serde_json::{json, Map, Value};

/// The protocol version written in each header.
pub const VERSION: &str = "1.9.0";

/// One event as framed.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The event type (`describe`, `transcript`, …).
    pub kind: String,
    /// The event's data: the header's `data` with the data section merged over it.
    pub data: Map<String, Value>,
    /// Bytes of payload the frame carried (read and discarded).
    pub payload_len: usize,
}

/// What was wrong with the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header line is longer than allowed.
    #[error("header line longer than wyoming.max_header_bytes ({0} bytes)")]
    HeaderTooLong(usize),
    /// The header line is not a JSON object with a string `type`.
    #[error("header is not a JSON object with a \"type\": {0}")]
    BadHeader(String),
    /// A length field is not a non-negative integer.
    #[error("header field {0} is not a byte count")]
    BadLength(&'static str),
    /// `data_length` is over the limit.
    #[error("data_length {0} is over wyoming.max_data_bytes ({1})")]
    DataTooLong(u64, usize),
    /// `payload_length` is over the limit.
    #[error("payload_length {0} is over wyoming.max_payload_bytes ({1})")]
    PayloadTooLong(u64, usize),
    /// The data section is not a JSON object.
    #[error("data section of a {0} event is not a JSON object: {1}")]
    BadData(String, String),
}

impl FrameError {
    /// Whether the bytes after the error still frame correctly (the offending frame was read
    /// whole), so the connection can go on after an `error` event.
    pub fn recoverable(&self) -> bool {
        matches!(self, FrameError::BadHeader(_) | FrameError::BadData(..))
    }
}

/// Size limits of a decoder.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest header line (without its newline).
    pub header: usize,
    /// Longest data section.
    pub data: usize,
    /// Longest payload.
    pub payload: usize,
}

#[derive(Debug)]
enum Stage {
    Header,
    /// Reading the data section, then skipping the payload.
    Body {
        kind: String,
        data: Map<String, Value>,
        data_len: usize,
        payload_len: usize,
    },
    /// A bad data section: skip it and the payload, then report.
    SkipBad {
        kind: String,
        error: String,
        remaining: usize,
    },
}

/// Frames from a byte stream.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buf: Vec<u8>,
    stage: Stage,
}

fn length(header: &Map<String, Value>, key: &'static str) -> Result<u64, FrameError> {
    match header.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().ok_or(FrameError::BadLength(key)),
    }
}

impl Decoder {
    /// A decoder with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits, buf: Vec::new(), stage: Stage::Header }
    }

    /// Bytes taken but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a frame has begun and not ended (the peer closing now truncates it).
    pub fn mid_frame(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.stage, Stage::Header)
    }

    /// The most bytes worth reading now: enough for what the current stage still needs.
    pub fn wants(&self) -> usize {
        match &self.stage {
            Stage::Header => (self.limits.header + 1).saturating_sub(self.buf.len()).max(1),
            Stage::Body { data_len, payload_len, .. } => (data_len + payload_len).saturating_sub(self.buf.len()).max(1),
            Stage::SkipBad { remaining, .. } => (*remaining).max(1),
        }
    }

    /// Takes bytes read from the peer. Call [`next`](Self::next) until it gives `None` before
    /// pushing more.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` when more bytes are needed, or what was wrong.
    pub fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Header) {
                Stage::Header => {
                    let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                        if self.buf.len() > self.limits.header {
                            return Err(FrameError::HeaderTooLong(self.limits.header));
                        }
                        return Ok(None);
                    };
                    if end > self.limits.header {
                        return Err(FrameError::HeaderTooLong(self.limits.header));
                    }
                    let line: Vec<u8> = self.buf.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line[..end]);
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    let shown: String = text.chars().take(80).collect();
                    let mut header = match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(m)) => m,
                        _ => return Err(FrameError::BadHeader(shown)),
                    };
                    let Some(Value::String(kind)) = header.remove("type") else { return Err(FrameError::BadHeader(shown)) };
                    let data_len = length(&header, "data_length")?;
                    let payload_len = length(&header, "payload_length")?;
                    if data_len > self.limits.data as u64 {
                        return Err(FrameError::DataTooLong(data_len, self.limits.data));
                    }
                    if payload_len > self.limits.payload as u64 {
                        return Err(FrameError::PayloadTooLong(payload_len, self.limits.payload));
                    }
                    let (data_len, payload_len) = (data_len as usize, payload_len as usize);
                    let data = match header.remove("data") {
                        None | Some(Value::Null) => Map::new(),
                        Some(Value::Object(m)) => m,
                        Some(other) => {
                            let error = format!("header data is {other}");
                            self.stage = Stage::SkipBad { kind, error, remaining: data_len + payload_len };
                            continue;
                        }
                    };
                    self.stage = Stage::Body { kind, data, data_len, payload_len };
                }
                Stage::Body { kind, mut data, data_len, payload_len } => {
                    if self.buf.len() < data_len + payload_len {
                        self.stage = Stage::Body { kind, data, data_len, payload_len };
                        return Ok(None);
                    }
                    let section: Vec<u8> = self.buf.drain(..data_len).collect();
                    self.buf.drain(..payload_len);
                    if data_len > 0 {
                        match serde_json::from_slice::<Value>(&section) {
                            Ok(Value::Object(extra)) => data.extend(extra),
                            Ok(other) => return Err(FrameError::BadData(kind, format!("it is {other}"))),
                            Err(e) => return Err(FrameError::BadData(kind, e.to_string())),
                        }
                    }
                    return Ok(Some(Frame { kind, data, payload_len }));
                }
                Stage::SkipBad { kind, error, remaining } => {
                    let n = remaining.min(self.buf.len());
                    self.buf.drain(..n);
                    if n < remaining {
                        self.stage = Stage::SkipBad { kind, error, remaining: remaining - n };
                        return Ok(None);
                    }
                    return Err(FrameError::BadData(kind, error));
                }
            }
        }
    }
}

/// One event framed for the wire (data in a data section, as the Python package writes it).
pub fn encode(kind: &str, data: &Value) -> Vec<u8> {
    let body = match data {
        Value::Object(m) if !m.is_empty() => Some(data.to_string()),
        _ => None,
    };
    let mut header = json!({"type": kind, "version": VERSION});
    if let Some(b) = &body {
        header["data_length"] = json!(b.len());
    }
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    if let Some(b) = body {
        out.extend_from_slice(b.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { header: 256, data: 1024, payload: 64 };

    fn all(d: &mut Decoder) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        loop {
            match d.next() {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => return out,
                Err(e) => {
                    let stop = !e.recoverable();
                    out.push(Err(e));
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    #[test]
    fn frames_round_trip_byte_by_byte_with_data_merged_over_the_header() {
        let mut wire = encode("transcript", &json!({"text": "turn on the light", "context": {"conversation_id": "c1"}}));
        wire.extend(b"{\"type\": \"describe\"}\n");
        wire.extend(b"{\"type\": \"x\", \"data\": {\"a\": 1, \"b\": 2}, \"data_length\": 8, \"payload_length\": 3}\n{\"b\": 3}abc");
        let mut d = Decoder::new(LIMITS);
        let mut frames = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            frames.extend(all(&mut d));
        }
        let frames: Vec<Frame> = frames.into_iter().map(Result::unwrap).collect();
        assert_eq!(frames[0].kind, "transcript");
        assert_eq!(frames[0].data["context"]["conversation_id"], "c1");
        assert_eq!((frames[1].kind.as_str(), frames[1].data.len()), ("describe", 0));
        assert_eq!((frames[2].data["a"].as_i64(), frames[2].data["b"].as_i64(), frames[2].payload_len), (Some(1), Some(3), 3));
        assert!(!d.mid_frame());
    }

    #[test]
    fn bad_headers_and_data_are_reported_and_framing_goes_on() {
        let mut d = Decoder::new(LIMITS);
        d.push(
            b"not json\n{\"data\": {}}\n{\"type\": \"t\", \"data_length\": 3}\n[1]{\"type\": \"t\", \"data\": 5, \"data_length\": 2}\n{}",
        );
        d.push(b"{\"type\": \"describe\"}\n{\"type\": \"t\", \"data_length\": -1}\n{\"type\": \"describe\"}\n");
        let got = all(&mut d);
        assert!(matches!(&got[0], Err(FrameError::BadHeader(s)) if s == "not json"), "{got:?}");
        assert!(matches!(&got[1], Err(FrameError::BadHeader(_))));
        assert!(matches!(&got[2], Err(FrameError::BadData(k, _)) if k == "t"));
        assert!(matches!(&got[3], Err(FrameError::BadData(..))));
        assert_eq!(got[4].as_ref().unwrap().kind, "describe");
        assert!(matches!(&got[5], Err(FrameError::BadLength("data_length"))), "a length that cannot be trusted ends the framing");
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn oversized_frames_stop_the_decoder_before_buffering_them() {
        let mut d = Decoder::new(LIMITS);
        d.push(&[b'x'; 300]);
        assert_eq!(d.next(), Err(FrameError::HeaderTooLong(256)));
        let mut d = Decoder::new(LIMITS);
        d.push(b"{\"type\": \"t\", \"data_length\": 5000}\n");
        assert_eq!(d.next(), Err(FrameError::DataTooLong(5000, 1024)));
        assert!(!FrameError::DataTooLong(5000, 1024).recoverable());
        let mut d = Decoder::new(LIMITS);
        d.push(b"{\"type\": \"audio-chunk\", \"payload_length\": 65}\n");
        assert_eq!(d.next(), Err(FrameError::PayloadTooLong(65, 64)));
        let mut d = Decoder::new(LIMITS);
        d.push(b"{\"type\": \"t\", \"data_length\": 10}\n{\"a\"");
        assert_eq!(d.next(), Ok(None));
        assert!(d.mid_frame(), "a peer closing now truncates the frame");
        assert!(d.wants() <= 6);
    }
}
