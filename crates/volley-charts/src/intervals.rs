//! Interval charts: an estimate with its confidence interval per row, on one shared
//! axis, with optional marks (each run's value) and a line at zero when the axis spans
//! it, so that "which model is better, and is it sure" is read at a glance.

use std::fmt::Write;

use crate::text::{cut, escape, nice_step, text_width, tick_label};
use crate::{ROW, WIDTH, empty, figure_start};

/// Room below the rows for the axis and its labels.
const AXIS: f64 = 34.0;

/// One row: an estimate, the interval around it, and the values drawn as small marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub label: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Drawn as small open circles on the row: e.g. the score of each run.
    pub marks: Vec<f64>,
    /// The text at the row's end.
    pub shown: String,
}

/// The horizontal axis of an interval chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub min: f64,
    pub max: f64,
    /// Tick labels as percentages of 1.
    pub percent: bool,
    /// Zero is the reference (differences): its grid line is dashed.
    pub zero: bool,
}

impl Scale {
    /// 0 to 100%: accuracies.
    pub fn unit(percent: bool) -> Scale {
        Scale {
            min: 0.0,
            max: 1.0,
            percent,
            zero: false,
        }
    }

    /// The smallest round axis holding every row's interval and marks, and zero: for
    /// differences, whose sign is the point.
    pub fn fit(rows: &[Interval], percent: bool) -> Scale {
        let values = rows
            .iter()
            .flat_map(|r| {
                [r.low, r.high, r.value]
                    .into_iter()
                    .chain(r.marks.iter().copied())
            })
            .filter(|v| v.is_finite());
        let (mut low, mut high) = values.fold((0.0f64, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
        // Never narrower than 10 points (or 1): equal scores get an axis, not five
        // ticks all reading 0.
        let narrowest = if percent { 0.1 } else { 1.0 };
        if high - low < narrowest {
            let pad = (narrowest - (high - low)) / 2.0;
            (low, high) = (low - pad, high + pad);
        }
        let step = nice_step(high - low, 5.0);
        let min = (low / step).floor() * step;
        Scale {
            min,
            max: ((high / step).ceil() * step).max(min + step),
            percent,
            zero: true,
        }
    }
}

/// Rows of estimates with their intervals against one axis. Values that are not finite,
/// or that lie outside the axis, are clamped to it or left undrawn, never written as
/// `NaN` into the SVG.
pub fn intervals(id: &str, title: &str, rows: &[Interval], scale: Scale) -> String {
    if rows.is_empty() {
        return empty(id, title, "nothing to show");
    }
    // An axis whose ends or span are not finite numbers (values near f64::MAX) is
    // replaced, never drawn as NaN.
    let (min, max) = if (scale.max - scale.min).is_finite() && scale.max > scale.min {
        (scale.min, scale.max)
    } else {
        (0.0, 1.0)
    };
    let tick = |v: f64| {
        if scale.percent {
            format!("{}%", tick_label(v * 100.0))
        } else {
            tick_label(v)
        }
    };
    let label_width = rows
        .iter()
        .map(|r| text_width(&cut(&r.label)))
        .fold(0.0, f64::max)
        + 12.0;
    let value_width = rows
        .iter()
        .map(|r| text_width(&r.shown))
        .fold(text_width(&tick(max)) / 2.0, f64::max)
        + 12.0;
    let span = (WIDTH - label_width - value_width).max(160.0);
    let width = label_width + span + value_width;
    let rows_height = ROW * rows.len() as f64 + 8.0;
    let height = rows_height + AXIS;
    let x = |v: f64| label_width + (v.clamp(min, max) - min) / (max - min) * span;
    let mut svg = figure_start(id, title);
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\">"
    );
    // Ticks by index, not by adding steps up: no float drift in the labels.
    let step = nice_step(max - min, 5.0);
    let first = (min / step - 1e-9).ceil() as i64;
    let last = (max / step + 1e-9).floor() as i64;
    for i in first..=last {
        let v = i as f64 * step;
        let px = x(v);
        let class = if i == 0 && scale.zero { "zero" } else { "grid" };
        let _ = write!(
            svg,
            "<line class=\"{class}\" x1=\"{px:.1}\" y1=\"2\" x2=\"{px:.1}\" y2=\"{rows_height:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            rows_height + 16.0,
            tick(v),
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{label_width:.1}\" y1=\"{rows_height:.1}\" x2=\"{:.1}\" y2=\"{rows_height:.1}\"/>",
        label_width + span
    );
    for (i, row) in rows.iter().enumerate() {
        let mid = 4.0 + ROW * i as f64 + ROW / 2.0 - 3.0;
        let _ = write!(
            svg,
            "<g><title>{}: {}</title><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            escape(&row.label),
            escape(&row.shown),
            label_width - 8.0,
            mid + 4.0,
            escape(&cut(&row.label)),
        );
        if row.low.is_finite() && row.high.is_finite() {
            let (l, h) = (x(row.low.min(row.high)), x(row.high.max(row.low)));
            let _ = write!(
                svg,
                "<line class=\"ci\" x1=\"{l:.1}\" y1=\"{mid:.1}\" x2=\"{h:.1}\" y2=\"{mid:.1}\"/>\
                 <line class=\"ci\" x1=\"{l:.1}\" y1=\"{:.1}\" x2=\"{l:.1}\" y2=\"{:.1}\"/>\
                 <line class=\"ci\" x1=\"{h:.1}\" y1=\"{:.1}\" x2=\"{h:.1}\" y2=\"{:.1}\"/>",
                mid - 5.0,
                mid + 5.0,
                mid - 5.0,
                mid + 5.0,
            );
        }
        for m in row.marks.iter().filter(|m| m.is_finite()) {
            let _ = write!(
                svg,
                "<circle class=\"run\" cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"3\"/>",
                x(*m),
            );
        }
        if row.value.is_finite() {
            let _ = write!(
                svg,
                "<circle class=\"est\" cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"4.5\"/>",
                x(row.value)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            label_width + span + 8.0,
            mid + 4.0,
            escape(&row.shown)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: f64, low: f64, high: f64) -> Interval {
        Interval {
            label: "m".into(),
            value,
            low,
            high,
            marks: vec![value - 0.01, value + 0.01],
            shown: "shown".into(),
        }
    }

    /// The x of the first `<circle`.
    fn dot_x(svg: &str) -> f64 {
        let at = svg.find("<circle class=\"est\" cx=\"").expect("a dot") + 24;
        svg[at..].split('"').next().unwrap().parse().unwrap()
    }

    #[test]
    fn estimates_sit_where_their_values_are() {
        let half = intervals("a", "A", &[row(0.5, 0.4, 0.6)], Scale::unit(true));
        let high = intervals("a", "A", &[row(0.9, 0.8, 1.0)], Scale::unit(true));
        assert!(dot_x(&high) > dot_x(&half));
        assert!(half.contains(">40%<") && half.contains(">100%<"));
        assert_eq!(half.matches("class=\"run\"").count(), 2);
        assert_eq!(half.matches("class=\"ci\"").count(), 3);
        assert!(!half.contains("class=\"zero\""));
    }

    #[test]
    fn differences_get_an_axis_around_zero() {
        let rows = [row(-0.12, -0.2, -0.03), row(0.05, -0.01, 0.1)];
        let scale = Scale::fit(&rows, true);
        assert!(scale.min <= -0.2 + 1e-12 && scale.min > -0.5, "{scale:?}");
        assert!(scale.max >= 0.1 - 1e-12 && scale.max < 0.5, "{scale:?}");
        let svg = intervals("d", "D", &rows, scale);
        assert_eq!(svg.matches("class=\"zero\"").count(), 1, "{svg}");
        assert!(svg.contains(">-10%<") || svg.contains(">-20%<"), "{svg}");
    }

    #[test]
    fn equal_scores_get_an_axis_and_zero_is_dashed_when_all_differences_are_positive() {
        let none = [row(0.0, 0.0, 0.0)];
        let scale = Scale::fit(&none, true);
        assert!(scale.min <= -0.05 && scale.max >= 0.05, "{scale:?}");
        let svg = intervals("d", "D", &none, scale);
        assert_eq!(svg.matches(">0%<").count(), 1, "{svg}");
        let positive = [row(0.187, 0.137, 0.237)];
        let svg = intervals("d", "D", &positive, Scale::fit(&positive, true));
        assert_eq!(svg.matches("class=\"zero\"").count(), 1, "{svg}");
    }

    #[test]
    fn hostile_values_are_never_written_as_numbers_they_are_not() {
        let rows = [
            row(f64::NAN, f64::NEG_INFINITY, f64::INFINITY),
            row(7.0, -3.0, 12.0),
        ];
        let svg = intervals("h", "H", &rows, Scale::unit(false));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let broken = Scale {
            min: f64::NAN,
            max: 1.0,
            percent: false,
            zero: true,
        };
        assert!(!intervals("h", "H", &rows, broken).contains("NaN"));
        // Near f64::MAX the fitted axis's span overflows.
        let huge = [row(8e307, -8e307, 8e307)];
        let svg = intervals("h", "H", &huge, Scale::fit(&huge, false));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(intervals("h", "H", &[], Scale::unit(true)).contains("nothing to show"));
    }
}
