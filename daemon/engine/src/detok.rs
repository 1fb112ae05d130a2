//! Streaming detokenization: token bytes in, text out, never a broken UTF-8 sequence and never
//! a multi-byte character split across two pieces; plus stop-string matching that holds back
//! only as much text as could still turn into a stop string.

/// Turns a stream of token byte strings into valid UTF-8 pieces.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace them, as a decoder would.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream; an unfinished sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Watches generated text for stop strings.
#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopState {
    /// Text that is safe to emit now.
    Continue(String),
    /// A stop string matched; the text before it, to emit before finishing.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings ignored).
    pub(crate) fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Feeds new text.
    pub(crate) fn push(&mut self, text: &str) -> StopState {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopState::Continue(std::mem::take(&mut self.held));
        }
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let before = self.held[..at].to_string();
            self.held.clear();
            return StopState::Stopped(before);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(move |&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let emit = self.held.len() - keep;
        let out = self.held[..emit].to_string();
        self.held.drain(..emit);
        StopState::Continue(out)
    }

    /// Ends generation without a stop: whatever was held back.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_are_never_split() {
        let text = "añ中😀e\u{301}";
        let mut s = Utf8Stream::default();
        let mut pieces = Vec::new();
        for b in text.as_bytes() {
            let p = s.push(&[*b]);
            if !p.is_empty() {
                pieces.push(p);
            }
        }
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces, vec!["a", "ñ", "中", "😀", "e", "\u{301}"]);
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe4, 0xb8]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_across_pieces() {
        let mut m = StopMatcher::new(&["<END>".into(), "\n\n".into()]);
        assert_eq!(m.push("hello <"), StopState::Continue("hello ".into()));
        assert_eq!(m.push("E"), StopState::Continue("".into()));
        assert_eq!(m.push("X"), StopState::Continue("<EX".into()));
        assert_eq!(m.push(" a\n"), StopState::Continue(" a".into()));
        assert_eq!(m.push("\nrest"), StopState::Stopped("".into()));
        let mut m = StopMatcher::new(&["stop".into()]);
        assert_eq!(m.push("abcst"), StopState::Continue("abc".into()));
        assert_eq!(m.finish(), "st");
    }
}
