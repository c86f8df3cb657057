//! Models of known accuracy and the judge that grades them, so that an experiment's
//! scores can be checked against numbers fixed in advance.
//!
//! An answerer's reply ends in a marker saying whether it is the correct answer; a judge
//! reads the last marker in what it is sent and answers the JSON verdict. Whether an
//! answer is correct is a pure function of the request (and the mock's seed), never of
//! arrival order: an experiment that retries or resumes must see the same answers.
//! This module decides; it never builds HTTP replies or touches the ledger.

use serde_json::Value;

use crate::config::MockConfig;
use crate::faults::{Dice, mix, unit};
use crate::reply::text_of;

/// Ends an answer the mock has decided is correct.
pub const CORRECT_MARKER: &str = "[mock:correct]";
/// Ends an answer the mock has decided is wrong.
pub const WRONG_MARKER: &str = "[mock:wrong]";
/// A judge's whole reply when the last marker it read is [`CORRECT_MARKER`].
pub const JUDGED_CORRECT: &str = r#"{"correct": true}"#;
/// A judge's whole reply when the last marker it read is [`WRONG_MARKER`], or none.
pub const JUDGED_WRONG: &str = r#"{"correct": false}"#;
/// What a judge says instead of JSON when it fumbles the format: the verdict in prose,
/// as real judges do, which a client must treat as unparseable, not as a grade.
const PROSE_CORRECT: &str = "I believe the answer is correct.";
const PROSE_WRONG: &str = "I believe the answer is wrong.";

/// What the mock plays for one chat request, chosen by the request's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A model with no accuracy set: the plain echo, no marker.
    Echo,
    /// A model of known accuracy, and whether this answer is the correct one.
    Answer { correct: bool },
    /// A judge: its verdict, and whether this attempt answers prose instead of JSON.
    Judge { correct: bool, invalid: bool },
}

impl Part {
    /// Casts the request. A judge draws its fumble from `dice`, the attempt's fault
    /// dice, so a retry of the same request rolls again; an answer's verdict is drawn
    /// from the request alone (see [`answer_draw`]).
    pub fn cast(config: &MockConfig, request: &Value, messages: &[Value], dice: &mut Dice) -> Part {
        // A model that is not a string is no model the flags could name: "" matches
        // only the default accuracy.
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if config.is_judge(model) {
            return Part::Judge {
                correct: last_marker_is_correct(messages),
                invalid: dice.unit() < config.judge_invalid_rate,
            };
        }
        match config.accuracy_of(model) {
            Some(p) => {
                // `"seed": null` is what an SDK sends for no seed.
                let seed = request.get("seed").filter(|s| !s.is_null());
                Part::Answer {
                    correct: answer_draw(config.seed, model, messages, seed) < p,
                }
            }
            None => Part::Echo,
        }
    }

    /// The marker an answer's text ends with; `None` unless this is an answer.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            Part::Answer { correct: true } => Some(CORRECT_MARKER),
            Part::Answer { correct: false } => Some(WRONG_MARKER),
            Part::Echo | Part::Judge { .. } => None,
        }
    }

    /// A judge's whole reply content; `None` unless this is a judge.
    pub fn judgement(self) -> Option<&'static str> {
        match self {
            Part::Judge {
                correct,
                invalid: false,
            } => Some(if correct {
                JUDGED_CORRECT
            } else {
                JUDGED_WRONG
            }),
            Part::Judge {
                correct,
                invalid: true,
            } => Some(if correct { PROSE_CORRECT } else { PROSE_WRONG }),
            Part::Echo | Part::Answer { .. } => None,
        }
    }
}

/// Whether the last marker in the concatenated text of `messages` says correct. No
/// marker at all grades as wrong: an answer that cannot be graded earns nothing.
pub fn last_marker_is_correct(messages: &[Value]) -> bool {
    let text: String = messages.iter().map(|m| text_of(m.get("content"))).collect();
    // The markers differ within their first seven bytes, so they never start at the
    // same place and the later one is the last.
    match (text.rfind(CORRECT_MARKER), text.rfind(WRONG_MARKER)) {
        (Some(correct), Some(wrong)) => correct > wrong,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The draw in `[0, 1)` that decides an answer: correct iff it is below the model's
/// accuracy. It depends on the mock's seed, the model, the messages and the body's
/// `seed` only, so the same request always gets the same verdict and each run of an
/// experiment (which sends its run index as `seed`) is an independent draw.
pub fn answer_draw(mock_seed: u64, model: &str, messages: &[Value], seed: Option<&Value>) -> f64 {
    let mut h = StableHash::new();
    h.update(&mock_seed.to_le_bytes());
    // Length-prefixed, so no model name can run into the messages that follow it.
    h.update(&(model.len() as u64).to_le_bytes());
    h.update(model.as_bytes());
    h.json(messages);
    match seed {
        None => h.update(&[0]),
        Some(seed) => {
            h.update(&[1]);
            h.json(seed);
        }
    }
    unit(h.finish())
}

/// FNV-1a over bytes, then SplitMix64's finaliser (FNV mixes its last bytes poorly
/// into the high bits [`unit`] keeps). Not std's hasher: that one is seeded at random
/// per process, and a verdict must be the same in every run of the mock.
#[derive(Debug, Clone, Copy)]
struct StableHash(u64);

impl StableHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> StableHash {
        StableHash(Self::OFFSET)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(Self::PRIME);
        }
    }

    /// Feeds `value` as JSON text, straight from serde into the hash, with no buffer.
    fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        // Writing into the hash cannot fail, and neither can serializing a `Value`
        // (its map keys are strings), so there is no error to lose here.
        let _ = serde_json::to_writer(&mut *self, value);
    }

    fn finish(self) -> u64 {
        mix(self.0)
    }
}

impl std::io::Write for StableHash {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_hash_is_fnv_1a_and_never_changes() {
        // FNV-1a's published test vectors: the verdicts of a seed must not change
        // between versions of the mock.
        let fnv = |text: &str| {
            let mut h = StableHash::new();
            h.update(text.as_bytes());
            h.0
        };
        assert_eq!(fnv(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv("foobar"), 0x8594_4171_f739_67e8);
        let messages = [json!({"role": "user", "content": "2+2?"})];
        assert_eq!(
            answer_draw(0, "m", &messages, None).to_bits(),
            answer_draw(0, "m", &messages, None).to_bits()
        );
    }

    #[test]
    fn draws_are_in_the_unit_interval_and_follow_every_input() {
        let messages = |q: u64| [json!({"role": "user", "content": format!("question {q}")})];
        let draws: Vec<f64> = (0..2000)
            .map(|q| answer_draw(1, "m", &messages(q), None))
            .collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let below = draws.iter().filter(|u| **u < 0.3).count();
        assert!((500..700).contains(&below), "{below} of 2000 below 0.3");
        let base = answer_draw(1, "m", &messages(0), None);
        for other in [
            answer_draw(2, "m", &messages(0), None),
            answer_draw(1, "n", &messages(0), None),
            answer_draw(1, "m", &messages(1), None),
            answer_draw(1, "m", &messages(0), Some(&json!(0))),
            answer_draw(1, "m", &messages(0), Some(&json!(1))),
        ] {
            assert_ne!(base.to_bits(), other.to_bits());
        }
    }

    #[test]
    fn the_judge_reads_the_last_marker() {
        let says = |contents: Vec<Value>| {
            let messages: Vec<Value> = contents
                .into_iter()
                .map(|c| json!({"role": "user", "content": c}))
                .collect();
            last_marker_is_correct(&messages)
        };
        // (contents, verdict)
        let cases = [
            (vec![json!("Answer: 4 [mock:correct]")], true),
            (vec![json!("Answer: 5 [mock:wrong]")], false),
            (vec![json!("no marker at all")], false),
            (vec![json!("[mock:wrong] then [mock:correct]")], true),
            (vec![json!("[mock:correct] then [mock:wrong]")], false),
            (vec![json!("[mock:correct]"), json!("[mock:wrong]")], false),
            (vec![json!("[mock:wrong]"), json!(7), json!(null)], false),
            (
                vec![json!([{"type": "text", "text": "A: [mock:correct]"}, {"type": "image_url"}])],
                true,
            ),
            (vec![json!({"not": "[mock:correct]"})], false),
            (vec![], false),
        ];
        for (contents, verdict) in cases {
            assert_eq!(says(contents.clone()), verdict, "{contents:?}");
        }
        assert!(!last_marker_is_correct(&[json!("a bare string")]));
    }

    #[test]
    fn a_part_says_what_its_reply_holds() {
        let config = MockConfig {
            accuracy: vec![("a".to_string(), 1.0), ("j".to_string(), 1.0)],
            judges: vec!["j".to_string()],
            judge_invalid_rate: 1.0,
            ..MockConfig::default()
        };
        let messages = [json!({"role": "user", "content": "x [mock:correct]"})];
        let cast = |model: Value| {
            Part::cast(
                &config,
                &json!({"model": model}),
                &messages,
                &mut Dice::for_request(0, 0),
            )
        };
        assert_eq!(cast(json!("a")).marker(), Some(CORRECT_MARKER));
        assert_eq!(cast(json!("b")), Part::Echo);
        assert_eq!(cast(json!(5)), Part::Echo);
        let judge = cast(json!("j"));
        assert_eq!(
            judge,
            Part::Judge {
                correct: true,
                invalid: true
            }
        );
        assert_eq!(judge.judgement(), Some(PROSE_CORRECT));
        assert!(serde_json::from_str::<Value>(PROSE_CORRECT).is_err());
        for verdict in [JUDGED_CORRECT, JUDGED_WRONG] {
            assert!(serde_json::from_str::<Value>(verdict).is_ok());
        }
    }
}
