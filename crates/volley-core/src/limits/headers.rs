//! What a provider says about its limits, read from response headers (SPEC §5).
//!
//! Two dialects exist. OpenAI (and most compatible providers) send, on every response,
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets as Go durations
//! (`6m0s`, `200ms`, `2m59.56s`). OpenRouter sends `X-RateLimit-{Limit,Remaining,Reset}`
//! only on 429s, with the reset as an epoch timestamp in milliseconds (seconds and
//! durations are accepted too). This module only parses; the key pool decides what the
//! figures mean for its limiters.
//!
//! Every figure comes from outside and is hostile until proven otherwise: a header may
//! say `1e20`, `NaN`, `-5` or a date in the year 30000. Parsing never panics; nonsense is
//! ignored (`None`) and absurdly large values are clamped to [`LONGEST_ANNOUNCED_WAIT`]
//! and [`LARGEST_ANNOUNCED_COUNT`], so that no later arithmetic on them can overflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// One limit as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quota {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Time until the quota is whole again (OpenAI) or the window resets (OpenRouter).
    pub reset: Option<Duration>,
}

impl Quota {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// Everything the headers of one response said about limits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

impl Observation {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// The longest wait a provider's header may announce: a year. Longer values are clamped
/// to it (a year is already far beyond any `--max-wait`, so the meaning — "not within
/// this run" — is kept) and `Instant + wait` can never overflow.
pub const LONGEST_ANNOUNCED_WAIT: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest count (requests or tokens) a header may announce; larger ones are clamped.
/// 2^48 is far beyond any real limit and leaves room for sums and products.
pub const LARGEST_ANNOUNCED_COUNT: u64 = 1 << 48;

/// Every response header volley reads, in one list so that tests can drive each of them
/// with hostile values (`retry-after` and `retry-after-ms` are read in `retry.rs`).
pub const HEADERS_READ: [&str; 12] = [
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-request-id",
];

/// Seconds from outside as a duration: `None` for NaN and negatives, clamped to
/// [`LONGEST_ANNOUNCED_WAIT`] above (infinity included).
pub fn seconds(value: f64) -> Option<Duration> {
    if value.is_nan() || value < 0.0 {
        return None;
    }
    if value >= LONGEST_ANNOUNCED_WAIT.as_secs_f64() {
        return Some(LONGEST_ANNOUNCED_WAIT);
    }
    Duration::try_from_secs_f64(value).ok()
}

/// A wait measured from outside (an HTTP date's distance, say), clamped like [`seconds`].
pub fn clamp_wait(wait: Duration) -> Duration {
    wait.min(LONGEST_ANNOUNCED_WAIT)
}

const OPENAI_REQUESTS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];
const OPENAI_TOKENS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

/// Reads both dialects; `now` converts epoch resets into durations.
pub fn observe(headers: &HeaderMap, now: SystemTime) -> Observation {
    // Every header read here is an `x-ratelimit-*` one. A reply with none (most
    // providers' successes, a mock without limits) is told by a glance at its few
    // names, not by nine lookups that each hash a name.
    if !headers
        .keys()
        .any(|name| name.as_str().starts_with("x-ratelimit-"))
    {
        return Observation::default();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(parse_count);
    let openai = |[limit, remaining, reset]: [&str; 3]| {
        let q = Quota {
            limit: number(limit),
            remaining: number(remaining),
            reset: text(reset).and_then(parse_go_duration),
        };
        (!q.is_empty()).then_some(q)
    };
    let openrouter = Quota {
        limit: number("x-ratelimit-limit"),
        remaining: number("x-ratelimit-remaining"),
        reset: text("x-ratelimit-reset").and_then(|v| parse_reset(v, now)),
    };
    Observation {
        requests: openai(OPENAI_REQUESTS).or((!openrouter.is_empty()).then_some(openrouter)),
        tokens: openai(OPENAI_TOKENS),
    }
}

/// A count such as `600` (some providers send `600.0`), clamped to
/// [`LARGEST_ANNOUNCED_COUNT`]; negatives, NaN and text are `None`.
pub fn parse_count(text: &str) -> Option<u64> {
    let count = text.parse::<u64>().ok().or_else(|| {
        let f: f64 = text.parse().ok()?;
        // `as` saturates: infinity becomes u64::MAX, clamped below.
        (!f.is_nan() && f >= 0.0).then_some(f as u64)
    })?;
    Some(count.min(LARGEST_ANNOUNCED_COUNT))
}

/// A Go `time.Duration` string: `1s`, `6m0s`, `200ms`, `2m59.56s`, `1h2m`, `1.5µs`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    seconds(total)
}

/// Epoch milliseconds and epoch seconds are far larger than any sane window, so size
/// tells them apart: a value past this many seconds is a timestamp, not a duration.
const EPOCH_SECONDS_FLOOR: f64 = 1e9;
const EPOCH_MILLIS_FLOOR: f64 = 1e12;

/// An OpenRouter reset: epoch milliseconds, epoch seconds, plain seconds, or a duration.
pub fn parse_reset(text: &str, now: SystemTime) -> Option<Duration> {
    let Ok(value) = text.parse::<f64>() else {
        return parse_go_duration(text);
    };
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let until_epoch = |secs: f64| {
        // A timestamp past what `SystemTime` can hold is "not within any run".
        let Some(at) = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
        else {
            return Some(LONGEST_ANNOUNCED_WAIT);
        };
        Some(clamp_wait(at.duration_since(now).unwrap_or(Duration::ZERO)))
    };
    if value >= EPOCH_MILLIS_FLOOR {
        until_epoch(value / 1000.0)
    } else if value >= EPOCH_SECONDS_FLOOR {
        until_epoch(value)
    } else {
        seconds(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", 1.0),
            ("6m0s", 360.0),
            ("200ms", 0.2),
            ("12ms", 0.012),
            ("2m59.56s", 179.56),
            ("1h2m3s", 3723.0),
            ("1.5s", 1.5),
            ("250us", 0.00025),
            ("3µs", 0.000003),
            ("0", 0.0),
            ("0s", 0.0),
        ];
        for (text, secs) in cases {
            let d = parse_go_duration(text).unwrap_or_else(|| panic!("{text}"));
            assert!((d.as_secs_f64() - secs).abs() < 1e-9, "{text}: {d:?}");
        }
        for bad in ["", "s", "5", "1x", "-1s", "1.2.3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn openrouter_resets() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let in_30s_ms = "1800000030000";
        assert_eq!(parse_reset(in_30s_ms, now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_reset("1800000012", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_reset("1799999990", now),
            Some(Duration::ZERO),
            "a reset in the past is now"
        );
        assert_eq!(parse_reset("45", now), Some(Duration::from_secs(45)));
        assert_eq!(parse_reset("2m0s", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_reset("soon", now), None);
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "600"),
            ("x-ratelimit-remaining-requests", "599"),
            ("x-ratelimit-reset-requests", "100ms"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let o = observe(&h, SystemTime::now());
        assert_eq!(
            o.requests,
            Some(Quota {
                limit: Some(600),
                remaining: Some(599),
                reset: Some(Duration::from_millis(100))
            })
        );
        let t = o.tokens.unwrap();
        assert_eq!(
            (t.limit, t.remaining, t.reset),
            (Some(150_000), Some(149_984), Some(Duration::from_secs(360)))
        );
    }

    #[test]
    fn openrouter_headers_on_a_429() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = headers(&[
            ("X-RateLimit-Limit", "20"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1800000045000"),
        ]);
        let o = observe(&h, now);
        assert_eq!(
            o.requests,
            Some(Quota {
                limit: Some(20),
                remaining: Some(0),
                reset: Some(Duration::from_secs(45))
            })
        );
        assert_eq!(o.tokens, None);
    }

    #[test]
    fn absurd_figures_are_clamped_or_ignored() {
        let now = SystemTime::now();
        assert_eq!(parse_count("1e300"), Some(LARGEST_ANNOUNCED_COUNT));
        assert_eq!(parse_count("inf"), Some(LARGEST_ANNOUNCED_COUNT));
        assert_eq!(
            parse_count("18446744073709551615"),
            Some(LARGEST_ANNOUNCED_COUNT)
        );
        assert_eq!(parse_count("NaN"), None);
        assert_eq!(parse_count("-3"), None);
        assert_eq!(
            parse_go_duration("1000h"),
            Some(Duration::from_secs(3_600_000))
        );
        assert_eq!(
            parse_go_duration("99999999999999999999h"),
            Some(LONGEST_ANNOUNCED_WAIT)
        );
        assert_eq!(parse_reset("1e300", now), Some(LONGEST_ANNOUNCED_WAIT));
        assert_eq!(
            parse_reset("99999999999999999999", now),
            Some(LONGEST_ANNOUNCED_WAIT)
        );
        assert_eq!(parse_reset("NaN", now), None);
        assert_eq!(parse_reset("-1", now), None);
        assert_eq!(seconds(f64::INFINITY), Some(LONGEST_ANNOUNCED_WAIT));
        assert_eq!(seconds(-0.5), None);
    }

    proptest::proptest! {
        /// No text makes a parser panic, and whatever it returns is within the clamps.
        #[test]
        fn parsers_take_any_text(text in ".{0,40}", digits in "[0-9.eE+-]{0,30}[a-zµ]{0,3}") {
            let now = SystemTime::now();
            for t in [text.as_str(), digits.as_str()] {
                if let Some(d) = parse_go_duration(t) {
                    proptest::prop_assert!(d <= LONGEST_ANNOUNCED_WAIT);
                }
                if let Some(d) = parse_reset(t, now) {
                    proptest::prop_assert!(d <= LONGEST_ANNOUNCED_WAIT);
                }
                if let Some(n) = parse_count(t) {
                    proptest::prop_assert!(n <= LARGEST_ANNOUNCED_COUNT);
                }
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(t) {
                    for name in HEADERS_READ {
                        h.insert(name, v.clone());
                    }
                }
                let seen = observe(&h, now);
                for q in [seen.requests, seen.tokens].into_iter().flatten() {
                    proptest::prop_assert!(q.reset.is_none_or(|r| r <= LONGEST_ANNOUNCED_WAIT));
                }
                if let Some(d) = crate::engine::retry::retry_after(&h) {
                    proptest::prop_assert!(d <= LONGEST_ANNOUNCED_WAIT);
                }
            }
        }

        /// Any float, as text, parses without panicking.
        #[test]
        fn any_float(f in proptest::num::f64::ANY) {
            let now = SystemTime::now();
            let t = f.to_string();
            let _ = (parse_count(&t), parse_reset(&t, now), parse_go_duration(&format!("{t}s")));
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(&t).unwrap());
            h.insert("retry-after-ms", HeaderValue::from_str(&t).unwrap());
            proptest::prop_assert!(crate::engine::retry::retry_after(&h).is_none_or(|d| d <= LONGEST_ANNOUNCED_WAIT));
        }
    }

    #[test]
    fn nothing_to_see() {
        let o = observe(
            &headers(&[("content-type", "application/json")]),
            SystemTime::now(),
        );
        assert!(o.is_empty());
        let partial = observe(
            &headers(&[("x-ratelimit-remaining-tokens", "12.0")]),
            SystemTime::now(),
        );
        assert_eq!(partial.tokens.unwrap().remaining, Some(12));
    }
}
