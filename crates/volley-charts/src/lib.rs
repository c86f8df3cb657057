//! volley's charts: plain SVG written on the server, with no script and nothing fetched,
//! so that one code path draws `volley report --html`, `volley experiment report
//! --html` and the live dashboard, which asks the server for a fresh figure instead of
//! running a chart library of its own.
//!
//! Every chart is a `<figure id=…>` holding a caption and an `<svg>`; colours come from
//! the CSS variables of [`STYLE`], so a page follows the reader's light or dark mode.
//! Text widths are estimated from character counts (there is no font metric without a
//! browser), generously, so that labels are never clipped.

mod bars;
mod intervals;
mod lines;
mod page;
mod text;

pub use bars::{Bar, bars};
pub use intervals::{Interval, Scale, intervals};
pub use lines::{MAX_POINTS, Points, Series, lines, thin};
pub use page::{STYLE, page};
pub use text::{escape, nice_step, tick_label};

/// Width of every chart, in CSS pixels.
const WIDTH: f64 = 760.0;
/// An upper bound on the width of one character of the 12 px chart font.
const CHAR_WIDTH: f64 = 7.2;
/// One row of a bar or interval chart, with its gap.
const ROW: f64 = 24.0;
/// Labels longer than this are cut (the full text stays in the tooltip).
const MAX_LABEL_CHARS: usize = 44;

/// `<figure id=… ><figcaption>…` : the start every chart shares.
fn figure_start(id: &str, title: &str) -> String {
    format!(
        "<figure id=\"{}\"><figcaption>{}</figcaption>",
        escape(id),
        escape(title)
    )
}

/// The figure of a chart with nothing to draw, saying why.
fn empty(id: &str, title: &str, why: &str) -> String {
    format!(
        "{}<p class=\"empty\">{}</p></figure>",
        figure_start(id, title),
        escape(why)
    )
}
