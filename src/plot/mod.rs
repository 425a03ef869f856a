//! Pictures of what `mixprec bench` and `mixprec tune` measured, as SVG text.
//!
//! * [`roofline_svg`]: a roofline of this machine (compute and memory
//!   ceilings) with every measured kernel placed at its arithmetic intensity
//!   and achieved rate; [`points_from`] turns `bench` rows into points and
//!   [`measure_bandwidth`] measures the memory ceilings.
//! * [`tuning_svg`]: the metric after each evaluation against the tolerance,
//!   and the graph's nodes coloured by final dtype with their sensitivity
//!   and share of fp32 time.
//!
//! The functions return the SVG document as a `String`; writing it is the
//! caller's job, so a CLI can write its plan and report first and a picture
//! that fails to render or write never loses them.
//!
//! Text is written as SVG `<text>` elements and laid out by the viewer's
//! fonts: `plotters` is built without its font-loading features, so nothing
//! here reads system fonts or links system libraries; label widths are
//! estimated at about 0.6 em per character.

mod bandwidth;
mod roofline;
mod tuning;

use std::fmt;

pub use bandwidth::{BandwidthCeilings, measure_bandwidth, read_bandwidth_gbps};
pub use roofline::{PointFamily, RooflineInput, RooflinePoint, points_from, roofline_svg};
pub use tuning::tuning_svg;

/// Why a picture could not be drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum PlotError {
    /// There is nothing to draw (e.g. a roofline with neither ceilings nor
    /// points).
    Empty(&'static str),
    /// A value that must be finite and positive (log axes) is not.
    InvalidValue {
        /// What the value belongs to, e.g. a point's or a ceiling's label.
        what: String,
        /// The offending value.
        value: f64,
    },
    /// The drawing library failed (a bug here or in `plotters`, not bad data).
    Drawing(String),
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Empty(what) => write!(f, "nothing to plot: {what}"),
            PlotError::InvalidValue { what, value } => write!(
                f,
                "cannot plot {what}: value {value} is not finite and positive (log axis)"
            ),
            PlotError::Drawing(msg) => write!(f, "drawing the SVG failed: {msg}"),
        }
    }
}

impl std::error::Error for PlotError {}

/// Any `plotters` drawing error, as a [`PlotError::Drawing`].
fn drawing<E: fmt::Display>(e: E) -> PlotError {
    PlotError::Drawing(e.to_string())
}

/// `v` with about three significant digits and no exponent for the ranges
/// plotted here (1e-4 .. 1e6).
fn fmt_sig(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        // Three significant digits (all the integer digits from 1000 up),
        // trailing zeros dropped.
        let digits = (2 - a.log10().floor() as i32).clamp(0, 12) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// Estimated width in pixels of `text` at `size` px (the viewer's font is
/// unknown; 0.6 em per character fits common sans-serif fonts).
fn text_width(text: &str, size: f64) -> f64 {
    0.6 * size * text.chars().count() as f64
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_sig_keeps_three_digits() {
        assert_eq!(fmt_sig(1234.4), "1234");
        assert_eq!(fmt_sig(12.34), "12.3");
        assert_eq!(fmt_sig(1.234), "1.23");
        assert_eq!(fmt_sig(0.1667), "0.167");
        assert_eq!(fmt_sig(0.001), "0.001");
        assert_eq!(fmt_sig(0.0), "0");
        assert_eq!(fmt_sig(40.0), "40");
        assert_eq!(fmt_sig(120.0), "120");
        assert_eq!(fmt_sig(2.5), "2.5");
    }

    #[test]
    fn ellipsize_cuts_long_names() {
        assert_eq!(ellipsize("abc", 3), "abc");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
    }
}
