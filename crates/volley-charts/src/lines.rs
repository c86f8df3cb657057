//! Line charts: counts over time, drawn as steps, thinned to about a point per pixel.

use std::fmt::Write;

use crate::text::{escape, nice_step, text_width, tick_label};
use crate::{WIDTH, empty, figure_start};

/// Height of a line chart.
const HEIGHT: f64 = 260.0;
/// Room left of the y axis for its tick labels.
const LEFT: f64 = 64.0;
/// Room right of, below and above the plot.
const RIGHT: f64 = 24.0;
const BOTTOM: f64 = 44.0;
const TOP: f64 = 28.0;
/// Points drawn per line at most: about one per pixel, however many requests ran, so
/// the page of a million-request run stays small and quick to open.
pub const MAX_POINTS: usize = 1_000;

/// `(seconds, count)` points of a line plot.
pub type Points = Vec<(f64, f64)>;

/// At most [`MAX_POINTS`] of `points`, evenly spread, the first and last kept.
pub fn thin(points: Points) -> Points {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..MAX_POINTS)
        .map(|i| points[i * last / (MAX_POINTS - 1)])
        .collect()
}

/// One series of a line plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub points: Points,
}

/// Step lines through `(x, count)` points, with ticks and grid lines on both axes and a
/// legend when there is more than one series.
pub fn lines(id: &str, title: &str, series: &[Series<'_>], x_label: &str, y_label: &str) -> String {
    // Points that are not finite numbers are left out, never written as NaN.
    let finite: Vec<Series<'_>> = series
        .iter()
        .map(|s| Series {
            name: s.name,
            class: s.class,
            points: s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
        })
        .collect();
    let series = &finite[..];
    if series.iter().all(|s| s.points.len() < 2) {
        return empty(id, title, "not enough data to plot");
    }
    let mut svg = figure_start(id, title);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_x = all().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let max_y = all().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let x_step = nice_step(max_x, 8.0);
    // The y values are counts: no tick between two whole numbers.
    let y_step = nice_step(max_y, 5.0).max(1.0);
    // The axes end on the first tick at or past the data.
    let x_end = (max_x / x_step).ceil() * x_step;
    let y_end = (max_y / y_step).ceil() * y_step;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_end * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_end * plot_h;
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">"
    );
    // Ticks by index, not by adding steps up: no float drift in the labels.
    for y in (0..=(y_end / y_step).round() as usize).map(|i| i as f64 * y_step) {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            sy(y) + 4.0,
            tick_label(y),
            py = sy(y),
        );
    }
    for x in (0..=(x_end / x_step).round() as usize).map(|i| i as f64 * x_step) {
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{px:.1}\" y1=\"{b:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h + 4.0,
            TOP + plot_h + 18.0,
            tick_label(x),
            px = sx(x),
            b = TOP + plot_h,
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        LEFT + plot_w,
        LEFT + plot_w,
        HEIGHT - 6.0,
        escape(x_label),
        LEFT - 6.0 - text_width("0"),
        TOP - 12.0,
        escape(y_label),
        b = TOP + plot_h,
    );
    for s in series.iter().filter(|s| s.points.len() >= 2) {
        // A count changes in steps: draw it as one.
        let mut path = Vec::with_capacity(s.points.len() * 2);
        let mut last_y = None;
        for (x, y) in &s.points {
            if let Some(prev) = last_y {
                path.push(format!("{:.1},{:.1}", sx(*x), sy(prev)));
            }
            path.push(format!("{:.1},{:.1}", sx(*x), sy(*y)));
            last_y = Some(*y);
        }
        let _ = write!(
            svg,
            "<polyline class=\"{}\" points=\"{}\"><title>{}</title></polyline>",
            s.class,
            path.join(" "),
            escape(s.name)
        );
    }
    if series.len() > 1 {
        // Top right, above the plot, level with the y axis title.
        let entry = |s: &Series<'_>| 40.0 + text_width(s.name);
        let mut x = WIDTH - RIGHT - series.iter().map(entry).sum::<f64>() + 16.0;
        let y = TOP - 16.0;
        for s in series {
            let _ = write!(
                svg,
                "<line class=\"{}\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                s.class,
                x + 18.0,
                x + 24.0,
                y + 4.0,
                escape(s.name)
            );
            x += entry(s);
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_point_is_not_a_line() {
        let one = Series {
            name: "n",
            class: "line",
            points: vec![(0.0, 0.0)],
        };
        assert!(lines("l", "L", &[one], "s", "n").contains("not enough data"));
    }

    #[test]
    fn points_that_are_not_numbers_are_left_out() {
        let s = Series {
            name: "n",
            class: "line",
            points: vec![
                (0.0, 1.0),
                (1.0, f64::NAN),
                (f64::INFINITY, 2.0),
                (2.0, 3.0),
            ],
        };
        let svg = lines("l", "L", &[s], "s", "n");
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn long_lines_are_thinned_to_their_shape() {
        let points: Points = (0..=10_000).map(|i| (i as f64, i as f64)).collect();
        let thinned = thin(points);
        assert_eq!(thinned.len(), MAX_POINTS);
        assert_eq!(thinned[0], (0.0, 0.0));
        assert_eq!(thinned[MAX_POINTS - 1], (10_000.0, 10_000.0));
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        let few: Points = vec![(0.0, 0.0), (1.0, 1.0)];
        assert_eq!(thin(few.clone()), few);
    }
}
