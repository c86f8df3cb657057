//! What a numeric flag accepts, checked while the flags are parsed so that a value that
//! cannot work stops the run with exit 2 before a request is sent (and paid for).
//!
//! Every numeric flag goes through [`within`]: one parser, so "not a number", NaN,
//! infinities, negatives and fractions of whole numbers are refused the same way
//! everywhere, and each flag only states its range and why.

use std::fmt::Display;
use std::str::FromStr;

/// A number type a flag can hold.
pub trait Number: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static {
    /// Whether a fraction is a valid value.
    const WHOLE: bool;
    /// The value as a float, to compare a text with the bounds before the type parses
    /// it: so that `-1` for a count says the range, not "invalid digit".
    fn as_f64(self) -> f64;
}

impl Number for u32 {
    const WHOLE: bool = true;
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Number for u64 {
    const WHOLE: bool = true;
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Number for usize {
    const WHOLE: bool = true;
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Number for f64 {
    const WHOLE: bool = false;
    fn as_f64(self) -> f64 {
        self
    }
}

/// A parser for a flag whose value must lie in `min..=max`; `rule` is said when it does
/// not (clap prefixes it with the flag and the value). NaN and infinities are never a
/// valid setting: every comparison with NaN is false, so it would slip through bounds
/// checks and reach `Duration::from_secs_f64`, which panics on it.
pub fn within<T: Number>(
    min: T,
    max: T,
    rule: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let text = text.trim();
        let kind = if T::WHOLE {
            "a whole number"
        } else {
            "a number"
        };
        let approx: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not {kind}; {rule}"))?;
        if !approx.is_finite() {
            return Err(format!("{text:?} is not a finite number; {rule}"));
        }
        if approx < min.as_f64() || approx > max.as_f64() {
            return Err(rule.to_string());
        }
        let value: T = text
            .parse()
            .map_err(|_| format!("{text:?} is not {kind}; {rule}"))?;
        // The float comparison above can round at the far ends of a 64-bit range.
        if value < min || value > max {
            return Err(rule.to_string());
        }
        Ok(value)
    }
}

/// Longest span any seconds flag accepts (about 31 years): far beyond any sensible
/// setting, and well inside what `Duration` and `Instant` arithmetic can hold, so a
/// huge value is refused here rather than overflowing a deadline later.
pub const MAX_SECONDS: f64 = 1e9;

/// A number of seconds from 0 up to [`MAX_SECONDS`].
pub fn seconds(
    rule: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    within(0.0, MAX_SECONDS, rule)
}

/// A non-negative amount (a ratio, a price, a cost) with no upper bound but infinity.
pub fn non_negative(
    rule: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    within(0.0, f64::MAX, rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_range_or_not_numbers_are_refused_with_the_rule() {
        let timeout = within(1.0, MAX_SECONDS, "at least 1 second");
        assert_eq!(timeout("1"), Ok(1.0));
        assert_eq!(timeout(" 2.5 "), Ok(2.5));
        for bad in ["0", "0.5", "1e-9", "-1", "1e10"] {
            assert_eq!(timeout(bad), Err("at least 1 second".into()), "{bad}");
        }
        for bad in ["nan", "NaN", "inf", "-inf", "infinity"] {
            let err = timeout(bad).unwrap_err();
            assert!(err.contains("not a finite number"), "{bad}: {err}");
        }
        let err = timeout("soon").unwrap_err();
        assert!(
            err.contains("\"soon\" is not a number; at least 1"),
            "{err}"
        );

        let rpm = within(1u64, u64::MAX, "at least 1");
        assert_eq!(rpm("60"), Ok(60));
        assert_eq!(rpm("0"), Err("at least 1".into()));
        assert_eq!(rpm("-1"), Err("at least 1".into()));
        assert!(rpm("1.5").unwrap_err().contains("not a whole number"));
        assert!(rpm("18446744073709551616").is_err(), "beyond u64");

        let retries = within(0u32, u32::MAX, "0 or more");
        assert_eq!(retries("0"), Ok(0));
        assert_eq!(retries("-2"), Err("0 or more".into()));
    }

    #[test]
    fn seconds_and_amounts_stop_at_their_ends() {
        let wait = seconds("0 or more seconds");
        assert_eq!(wait("0"), Ok(0.0));
        assert_eq!(wait("1e9"), Ok(1e9));
        assert!(wait("1.1e9").is_err());
        let cost = non_negative("0 or more USD");
        assert_eq!(cost("1e300"), Ok(1e300));
        assert_eq!(cost("-0.01"), Err("0 or more USD".into()));
        assert!(cost("inf").is_err());
    }
}
