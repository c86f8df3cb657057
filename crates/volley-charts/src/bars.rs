//! Horizontal bar charts: a label, a bar as long as its value, and a text at its end.

use std::fmt::Write;

use crate::text::{cut, escape, text_width};
use crate::{ROW, WIDTH, empty, figure_start};

/// One bar: its label, the value that sets its length, and the text shown at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub shown: String,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64, shown: impl Into<String>) -> Bar {
        Bar {
            label: label.into(),
            value,
            shown: shown.into(),
        }
    }
}

/// A horizontal bar chart whose label and value columns are as wide as their texts.
/// A value that is not a positive finite number draws no bar (its text still shows).
pub fn bars(id: &str, title: &str, items: &[Bar]) -> String {
    if items.is_empty() {
        return empty(id, title, "nothing to show");
    }
    let length = |b: &Bar| if b.value.is_finite() { b.value } else { 0.0 };
    let max = items
        .iter()
        .map(length)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let label_width = items
        .iter()
        .map(|b| text_width(&cut(&b.label)))
        .fold(0.0, f64::max)
        + 12.0;
    let value_width = items
        .iter()
        .map(|b| text_width(&b.shown))
        .fold(0.0, f64::max)
        + 12.0;
    let span = (WIDTH - label_width - value_width).max(120.0);
    let width = label_width + span + value_width;
    let height = ROW * items.len() as f64 + 8.0;
    let mut svg = figure_start(id, title);
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\">"
    );
    for (i, bar) in items.iter().enumerate() {
        let y = 4.0 + ROW * i as f64;
        let value = length(bar);
        let w = if value > 0.0 {
            (value / max * span).max(1.5)
        } else {
            0.0
        };
        let _ = write!(
            svg,
            "<g><title>{}: {}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{label_width:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.0}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&bar.label),
            escape(&bar.shown),
            label_width - 8.0,
            y + 13.0,
            escape(&cut(&bar.label)),
            ROW - 6.0,
            label_width + w + 6.0,
            y + 13.0,
            escape(&bar.shown),
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_empty_charts_say_so() {
        assert!(bars("x", "T", &[]).contains("nothing to show"));
        let svg = bars("x", "T", &[Bar::new("<m>", 2.0, "2")]);
        assert!(svg.contains("&lt;m&gt;") && svg.contains("<rect"));
    }

    #[test]
    fn hostile_values_draw_no_bar() {
        let svg = bars(
            "x",
            "T",
            &[
                Bar::new("nan", f64::NAN, "?"),
                Bar::new("inf", f64::INFINITY, "?"),
                Bar::new("one", 1.0, "1"),
            ],
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf\""));
        assert_eq!(svg.matches("width=\"0.0\"").count(), 2, "{svg}");
    }
}
