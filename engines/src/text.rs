//! Turning token bytes into client-safe text: whole UTF-8 characters only,
//! and stop sequences never emitted, even when split across tokens.

/// Releases only complete UTF-8; an incomplete character at a token boundary
/// waits for the next token instead of leaving as U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Holdback {
    pending: Vec<u8>,
}

impl Utf8Holdback {
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
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete tail: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never become valid: replace and move on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// End of generation: what is left is the start of a character the model
    /// never finished (cut by `max_tokens`, or an end token). It is dropped:
    /// a client gets whole characters or nothing, never U+FFFD for a cut.
    pub fn finish(&mut self) {
        self.pending.clear();
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to send now (may be empty while a possible stop is held back).
    Emit(String),
    /// A stop sequence matched: send this last text and finish with `stop`.
    Stopped(String),
}

/// Holds back any tail that could be the start of a stop sequence.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Emit(text.to_string());
        }
        self.held.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let before = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome::Stopped(before);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutcome::Emit(out)
    }

    /// End of generation without a stop: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            stop.is_char_boundary(k)
                && text.is_char_boundary(text.len() - k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdback_waits_for_whole_characters() {
        let mut h = Utf8Holdback::default();
        let snow = "é☃".as_bytes(); // 2 + 3 bytes
        assert_eq!(h.push(&snow[..1]), "");
        assert_eq!(h.push(&snow[1..3]), "é");
        assert_eq!(h.push(&snow[3..4]), "");
        assert_eq!(h.push(&snow[4..]), "☃");
    }

    #[test]
    fn a_character_cut_at_the_end_is_dropped_not_replaced() {
        let mut h = Utf8Holdback::default();
        let emoji = "ok 😀".as_bytes(); // the emoji is 4 bytes
        assert_eq!(h.push(&emoji[..5]), "ok ");
        h.finish();
        assert_eq!(
            h.push(b"x"),
            "x",
            "nothing of the cut character is left behind"
        );
    }

    #[test]
    fn holdback_replaces_truly_invalid_bytes() {
        let mut h = Utf8Holdback::default();
        assert_eq!(h.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(h.push(b"\xe2\x98"), "");
    }

    #[test]
    fn stop_split_across_tokens_is_never_emitted() {
        let mut f = StopFilter::new(vec!["END".into()]);
        assert_eq!(f.push("hello E"), StopOutcome::Emit("hello ".into()));
        assert_eq!(f.push("N"), StopOutcome::Emit(String::new()));
        assert_eq!(f.push("Dtrailing"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut f = StopFilter::new(vec!["END".into()]);
        assert_eq!(f.push("E"), StopOutcome::Emit(String::new()));
        assert_eq!(f.push("Nx"), StopOutcome::Emit("ENx".into()));
        assert_eq!(f.push("EN"), StopOutcome::Emit(String::new()));
        assert_eq!(f.finish(), "EN");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut f = StopFilter::new(vec!["world".into(), "lo w".into()]);
        assert_eq!(f.push("hello world"), StopOutcome::Stopped("hel".into()));
    }

    #[test]
    fn multibyte_stops_respect_char_boundaries() {
        let mut f = StopFilter::new(vec!["☃☃".into()]);
        assert_eq!(f.push("a☃"), StopOutcome::Emit("a".into()));
        assert_eq!(f.push("b"), StopOutcome::Emit("☃b".into()));
        assert_eq!(f.push("☃☃c"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn no_stops_passes_through() {
        let mut f = StopFilter::new(vec![String::new()]);
        assert_eq!(f.push("abc"), StopOutcome::Emit("abc".into()));
    }
}
