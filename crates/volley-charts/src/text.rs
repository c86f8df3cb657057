//! Text in charts: escaping, estimated widths, round steps and their labels.

use crate::{CHAR_WIDTH, MAX_LABEL_CHARS};

/// `text` made safe inside an element or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH
}

/// `label` cut to [`MAX_LABEL_CHARS`], an ellipsis saying so.
pub(crate) fn cut(label: &str) -> String {
    if label.chars().count() > MAX_LABEL_CHARS {
        let head: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{head}…")
    } else {
        label.to_string()
    }
}

/// A step of 1, 2 or 5 × 10ⁿ that cuts `range` into about `parts` parts.
pub fn nice_step(range: f64, parts: f64) -> f64 {
    let raw = (range / parts).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label: no trailing ".0", no "-0", thousands kept short.
pub fn tick_label(v: f64) -> String {
    if v.abs() < 1e-9 {
        "0".to_string()
    } else if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 || (1.0 - v.fract().abs()) < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a & \"b\" 'c'>"),
            "&lt;a &amp; &quot;b&quot; &#39;c&#39;&gt;"
        );
        assert_eq!(cut(&"x".repeat(50)).chars().count(), MAX_LABEL_CHARS);
        assert!(cut(&"x".repeat(50)).ends_with('…'));
    }

    #[test]
    fn steps_are_round() {
        for (range, parts, step) in [
            (2.2, 8.0, 0.5),
            (400.0, 5.0, 100.0),
            (654.0, 20.0, 50.0),
            (7.0, 5.0, 2.0),
            (12_000.0, 20.0, 1000.0),
            (0.4, 5.0, 0.1),
        ] {
            assert_eq!(nice_step(range, parts), step, "{range}/{parts}");
        }
        assert_eq!(tick_label(1.5), "1.5");
        assert_eq!(tick_label(400.0), "400");
        assert_eq!(tick_label(25_000.0), "25k");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(-0.30000000000000004 * 100.0), "-30");
        assert_eq!(tick_label(0.1 * 3.0 * 100.0), "30");
    }
}
