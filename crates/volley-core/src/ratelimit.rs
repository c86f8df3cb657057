//! What a provider says about its limits, read from response headers (SPEC §5).
//!
//! Two dialects exist. OpenAI (and most compatible providers) send, on every response,
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets as Go durations
//! (`6m0s`, `200ms`, `2m59.56s`). OpenRouter sends `X-RateLimit-{Limit,Remaining,Reset}`
//! only on 429s, with the reset as an epoch timestamp in milliseconds (seconds and
//! durations are accepted too). This module only parses; the key pool decides what the
//! figures mean for its limiters.

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

/// A count such as `600` (some providers send `600.0`).
fn parse_count(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().or_else(|| {
        let f: f64 = text.parse().ok()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
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
    Duration::try_from_secs_f64(total).ok()
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
        let at = UNIX_EPOCH + Duration::try_from_secs_f64(secs).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    };
    if value >= EPOCH_MILLIS_FLOOR {
        until_epoch(value / 1000.0)
    } else if value >= EPOCH_SECONDS_FLOOR {
        until_epoch(value)
    } else {
        Duration::try_from_secs_f64(value).ok()
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
