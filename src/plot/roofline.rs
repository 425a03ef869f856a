//! The roofline picture of `mixprec bench`.
//!
//! Conversions do no arithmetic, so they are placed by the bytes they move:
//! one conversion counts as one "op" per element, its arithmetic intensity
//! is 1 op / (bytes read + bytes written per element), e.g. 1/6 for
//! f32 -> bf16, and its height is its Gelem/s (= Gop/s). A conversion point
//! therefore sits exactly where its achieved bandwidth (GB/s) meets that
//! intensity: its distance below a memory roof is the fraction of that
//! bandwidth it reaches. The y axis reads "GFLOP/s" with that convention
//! stated in the picture's notes.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{PlotError, drawing, ellipsize, fmt_sig, text_width};

/// What kind of kernel a point is (its colour in the picture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointFamily {
    /// A dtype conversion (placed by bytes moved, see the module docs).
    Conversion,
    /// A matrix multiplication (m > 1).
    Gemm,
    /// A matrix-vector product (m = 1), memory-bound.
    Gemv,
    /// Anything else.
    Other,
}

/// One measured kernel on the roofline.
#[derive(Clone, Debug, PartialEq)]
pub struct RooflinePoint {
    /// Its name in the key, e.g. `gemm bf16 1024x1024x1024`.
    pub label: String,
    /// Its colour.
    pub family: PointFamily,
    /// Arithmetic intensity, FLOP per byte of memory traffic (for
    /// conversions, ops per byte, one op per element).
    pub intensity: f64,
    /// Achieved GFLOP/s (for conversions, Gelem/s).
    pub gflops: f64,
    /// Extra words for the key, e.g. the figure in its own unit.
    pub detail: String,
}

/// Everything a roofline picture shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RooflineInput {
    /// CPU model for the title.
    pub cpu_model: String,
    /// ISA level the kernels ran at, for the title.
    pub isa: String,
    /// Compute ceilings: label and GFLOP/s, `None` for an instruction this
    /// CPU cannot run (listed in the legend as "not available on this CPU").
    pub compute_ceilings: Vec<(String, Option<f64>)>,
    /// Memory ceilings: label and GB/s.
    pub memory_ceilings: Vec<(String, f64)>,
    /// The measured kernels.
    pub points: Vec<RooflinePoint>,
    /// Footnotes (how things were measured), shown under the legend.
    pub notes: Vec<String>,
}

/// Bytes of one element of the dtype named `d` (`f32`, `bf16`, `f16`).
fn dtype_bytes(d: &str) -> Option<usize> {
    match d {
        "f32" => Some(4),
        "bf16" | "f16" => Some(2),
        _ => None,
    }
}

/// `n=16777216` as `n=16M`, `n=4096` as `n=4K`.
fn short_size(shape: &str) -> String {
    let Some(n) = shape
        .strip_prefix("n=")
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return shape.to_string();
    };
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("n={}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("n={}K", n >> 10)
    } else {
        format!("n={n}")
    }
}

/// Turns `mixprec bench` rows `(kernel, shape, value, unit)` into roofline
/// points; rows it cannot place (copy references, peaks, model latency) are
/// left out.
///
/// * `convert A->B`, `n=N`, `Gelem/s`: intensity 1 / (bytes of A + bytes of
///   B), height the Gelem/s (see the module docs).
/// * `gemm T` / `gemv T`, `MxKxN`, `GFLOP/s` (inputs of dtype T, f32
///   output): intensity 2·m·n·k / (bytes of A + B + C) with A m×k and B k×n
///   in T and C m×n in f32, i.e. the traffic if each matrix crosses memory
///   once. For a GEMV that is about 2 FLOP per weight element / weight bytes.
///
/// Pass the rows of one ISA level: rows of several levels give several
/// points per kernel with the same label.
pub fn points_from(rows: &[(&str, &str, f64, &str)]) -> Vec<RooflinePoint> {
    let mut out = Vec::new();
    for &(kernel, shape, value, unit) in rows {
        if let Some(conv) = kernel.strip_prefix("convert ") {
            if unit != "Gelem/s" {
                continue;
            }
            let Some((a, b)) = conv.split_once("->") else {
                continue;
            };
            let (Some(sa), Some(sb)) = (dtype_bytes(a.trim()), dtype_bytes(b.trim())) else {
                continue;
            };
            let bytes = (sa + sb) as f64;
            out.push(RooflinePoint {
                label: format!("{conv} {}", short_size(shape)),
                family: PointFamily::Conversion,
                intensity: 1.0 / bytes,
                gflops: value,
                detail: format!(
                    "{} Gelem/s = {} GB/s",
                    fmt_sig(value),
                    fmt_sig(value * bytes)
                ),
            });
            continue;
        }
        let Some((op, dtype)) = kernel.split_once(' ') else {
            continue;
        };
        if !(op == "gemm" || op == "gemv") || unit != "GFLOP/s" {
            continue;
        }
        let Some(e) = dtype_bytes(dtype.trim()) else {
            continue;
        };
        let dims: Vec<usize> = shape
            .split('x')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let [m, k, n] = dims[..] else {
            continue;
        };
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let bytes = e as f64 * (m * k + k * n) + 4.0 * m * n;
        if bytes <= 0.0 {
            continue;
        }
        out.push(RooflinePoint {
            label: format!("{kernel} {shape}"),
            family: if m == 1.0 {
                PointFamily::Gemv
            } else {
                PointFamily::Gemm
            },
            intensity: 2.0 * m * n * k / bytes,
            gflops: value,
            detail: format!("{} GFLOP/s", fmt_sig(value)),
        });
    }
    out
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 760;
/// Width of the chart; the legend and key take the rest.
const CHART_WIDTH: u32 = 820;

const COMPUTE_COLOURS: [RGBColor; 4] = [
    RGBColor(0xc0, 0x39, 0x2b),
    RGBColor(0x8e, 0x44, 0xad),
    RGBColor(0xd3, 0x54, 0x00),
    RGBColor(0x7f, 0x8c, 0x8d),
];
const MEMORY_COLOURS: [RGBColor; 4] = [
    RGBColor(0x1e, 0x6f, 0x3a),
    RGBColor(0x27, 0xae, 0x60),
    RGBColor(0x16, 0xa0, 0x85),
    RGBColor(0x2c, 0x3e, 0x50),
];

fn family_colour(f: PointFamily) -> RGBColor {
    match f {
        PointFamily::Conversion => RGBColor(0xe6, 0x7e, 0x22),
        PointFamily::Gemm => RGBColor(0x29, 0x80, 0xb9),
        PointFamily::Gemv => RGBColor(0x8e, 0x44, 0xad),
        PointFamily::Other => RGBColor(0x55, 0x55, 0x55),
    }
}

fn check(what: &str, v: f64) -> Result<(), PlotError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(PlotError::InvalidValue {
            what: what.to_string(),
            value: v,
        })
    }
}

/// Axis-aligned box in pixels: (x0, y0, x1, y1).
type Bbox = (f64, f64, f64, f64);

/// Boxes of 6 x 6 px every 6 px along the pixel segment `a`-`b`.
fn segment_boxes(a: (i32, i32), b: (i32, i32)) -> Vec<Bbox> {
    let (ax, ay, bx, by) = (
        f64::from(a.0),
        f64::from(a.1),
        f64::from(b.0),
        f64::from(b.1),
    );
    let len = ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt();
    let steps = (len / 6.0).ceil().max(1.0) as usize;
    (0..=steps)
        .map(|i| {
            let t = i as f64 / steps as f64;
            let (x, y) = (ax + t * (bx - ax), ay + t * (by - ay));
            (x - 3.0, y - 3.0, x + 3.0, y + 3.0)
        })
        .collect()
}

fn overlaps(a: Bbox, b: Bbox) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Draws the roofline as an SVG document: log-log axes (arithmetic
/// intensity in FLOP/byte, GFLOP/s), each memory ceiling as a diagonal
/// `bandwidth × intensity` up to the highest compute ceiling, each compute
/// ceiling as a horizontal line from where it meets the highest memory
/// ceiling, every point as a numbered dot, and on the right a legend of the
/// ceilings, a key of the points and the notes.
///
/// Errors: [`PlotError::Empty`] with neither ceilings nor points;
/// [`PlotError::InvalidValue`] for a ceiling, intensity or rate that is not
/// finite and positive.
pub fn roofline_svg(input: &RooflineInput) -> Result<String, PlotError> {
    let peaks: Vec<(usize, &str, f64)> = input
        .compute_ceilings
        .iter()
        .enumerate()
        .filter_map(|(i, (l, v))| v.map(|v| (i, l.as_str(), v)))
        .collect();
    for &(_, l, v) in &peaks {
        check(l, v)?;
    }
    for (l, v) in &input.memory_ceilings {
        check(l, *v)?;
    }
    for p in &input.points {
        check(&format!("{} (intensity)", p.label), p.intensity)?;
        check(&format!("{} (rate)", p.label), p.gflops)?;
    }
    if peaks.is_empty() && input.memory_ceilings.is_empty() && input.points.is_empty() {
        return Err(PlotError::Empty(
            "a roofline needs at least one ceiling or one point",
        ));
    }

    let top_peak = peaks.iter().map(|p| p.2).reduce(f64::max);
    let max_bw = input.memory_ceilings.iter().map(|m| m.1).reduce(f64::max);
    let mut xs: Vec<f64> = input.points.iter().map(|p| p.intensity).collect();
    if let Some(top) = top_peak {
        xs.extend(input.memory_ceilings.iter().map(|m| top / m.1));
    }
    if let Some(bw) = max_bw {
        xs.extend(peaks.iter().map(|p| p.2 / bw));
    }
    let (mut x_lo, mut x_hi) = min_max(&xs).unwrap_or((1.0, 1.0));
    x_lo /= 4.0;
    x_hi *= 4.0;
    widen(&mut x_lo, &mut x_hi, 1e3);

    let mut ys: Vec<f64> = input.points.iter().map(|p| p.gflops).collect();
    ys.extend(peaks.iter().map(|p| p.2));
    if let Some(top) = top_peak {
        // The memory roofs start at the left edge; show where they enter
        // unless that is far below everything else.
        ys.extend(
            input
                .memory_ceilings
                .iter()
                .map(|m| (m.1 * x_lo).max(top * 1e-4)),
        );
    } else {
        ys.extend(input.memory_ceilings.iter().map(|m| m.1 * x_lo));
        ys.extend(input.memory_ceilings.iter().map(|m| m.1 * x_hi));
    }
    let (mut y_lo, mut y_hi) = min_max(&ys).unwrap_or((1.0, 1.0));
    y_lo /= 2.0;
    y_hi *= 3.0;
    widen(&mut y_lo, &mut y_hi, 1e2);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (left, right) = root.split_horizontally(CHART_WIDTH);
        let title = format!(
            "Roofline: {}, ISA level {}",
            if input.cpu_model.is_empty() {
                "unknown CPU"
            } else {
                &input.cpu_model
            },
            if input.isa.is_empty() {
                "unknown"
            } else {
                &input.isa
            }
        );
        let mut chart = ChartBuilder::on(&left)
            .caption(ellipsize(&title, 80), ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP/byte)")
            .y_desc("GFLOP/s")
            .x_label_formatter(&|v| fmt_sig(*v))
            .y_label_formatter(&|v| fmt_sig(*v))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xd8, 0xd8, 0xd8))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(drawing)?;

        let (px_range, py_range) = chart.plotting_area().get_pixel_range();
        let inside = |b: Bbox| {
            b.0 >= f64::from(px_range.start) + 2.0
                && b.2 <= f64::from(px_range.end) - 2.0
                && b.1 >= f64::from(py_range.start) + 2.0
                && b.3 <= f64::from(py_range.end) - 2.0
        };
        // Labels go where they overlap no dot and no other label.
        let centres: Vec<(f64, f64)> = input
            .points
            .iter()
            .map(|p| {
                let (x, y) = chart.backend_coord(&(p.intensity, p.gflops));
                (f64::from(x), f64::from(y))
            })
            .collect();
        let mut taken: Vec<Bbox> = centres
            .iter()
            .map(|&(x, y)| (x - 7.0, y - 7.0, x + 7.0, y + 7.0))
            .collect();
        let mut labels: Vec<(Bbox, String, RGBColor, i32)> = Vec::new();
        let place = |candidates: &[(f64, f64)], w: f64, h: f64, taken: &mut Vec<Bbox>| {
            let boxes = candidates.iter().map(|&(x, y)| (x, y, x + w, y + h));
            let chosen = boxes
                .clone()
                .find(|&b| inside(b) && !taken.iter().any(|&t| overlaps(t, b)))
                .or_else(|| boxes.clone().find(|&b| inside(b)))
                .unwrap_or((
                    candidates[0].0,
                    candidates[0].1,
                    candidates[0].0 + w,
                    candidates[0].1 + h,
                ));
            taken.push(chosen);
            chosen
        };

        // Keep labels off the roofs too: small boxes along every roof line.
        for (_, bw) in &input.memory_ceilings {
            let x0 = x_lo.max(y_lo / bw);
            let x1 = top_peak.map_or(x_hi, |p| p / bw).min(x_hi).min(y_hi / bw);
            if x1 > x0 {
                let a = chart.backend_coord(&(x0, bw * x0));
                let b = chart.backend_coord(&(x1, bw * x1));
                taken.extend(segment_boxes(a, b));
            }
        }
        for &(_, _, peak) in &peaks {
            let x0 = max_bw.map_or(x_lo, |bw| peak / bw).max(x_lo);
            let a = chart.backend_coord(&(x0, peak));
            let b = chart.backend_coord(&(x_hi, peak));
            taken.extend(segment_boxes(a, b));
        }

        // Memory roofs: y = bw * x from the left edge (or the bottom) up to
        // the highest compute roof (or the right edge), labelled beside the
        // line at the first place along it that is free.
        for (i, (label, bw)) in input.memory_ceilings.iter().enumerate() {
            let colour = MEMORY_COLOURS[i % MEMORY_COLOURS.len()];
            let x0 = x_lo.max(y_lo / bw);
            let x1 = top_peak.map_or(x_hi, |p| p / bw).min(x_hi).min(y_hi / bw);
            if x1 <= x0 {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    [(x0, bw * x0), (x1, bw * x1)],
                    colour.stroke_width(2),
                ))
                .map_err(drawing)?;
            let text = format!("{label} {} GB/s", fmt_sig(*bw));
            let (w, h) = (text_width(&text, 13.0), 14.0);
            let mut candidates = Vec::new();
            for f in [0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.05] {
                let xm = x0 * (x1 / x0).powf(f);
                let (px, py) = chart.backend_coord(&(xm, bw * xm));
                let (px, py) = (f64::from(px), f64::from(py));
                // Above-left of a rising line, then below-right of it.
                candidates.push((px - 4.0 - w, py - 4.0 - h));
                candidates.push((px + 6.0, py + 2.0));
            }
            let b = place(&candidates, w, h, &mut taken);
            labels.push((b, text, colour, 13));
        }
        // Compute roofs: horizontal from where they meet the highest memory roof.
        for (i, label, peak) in peaks.iter().copied() {
            let colour = COMPUTE_COLOURS[i % COMPUTE_COLOURS.len()];
            let x0 = max_bw.map_or(x_lo, |bw| peak / bw).max(x_lo);
            chart
                .draw_series(LineSeries::new(
                    [(x0, peak), (x_hi, peak)],
                    colour.stroke_width(2),
                ))
                .map_err(drawing)?;
            let text = format!("{label} {} GFLOP/s", fmt_sig(peak));
            let (w, h) = (text_width(&text, 13.0), 14.0);
            let (xe, py) = chart.backend_coord(&(x_hi, peak));
            let (xs, _) = chart.backend_coord(&(x0, peak));
            let (xe, xs, py) = (f64::from(xe), f64::from(xs), f64::from(py));
            // Right end above, right end below, then leftwards along the line.
            let mut candidates = Vec::new();
            for f in [1.0, 0.8, 0.6, 0.4, 0.2, 0.0] {
                let x = xs + 6.0 + f * (xe - xs - 12.0 - w).max(0.0);
                candidates.push((x, py - 3.0 - h));
                candidates.push((x, py + 3.0));
            }
            let b = place(&candidates, w, h, &mut taken);
            labels.push((b, text, colour, 13));
        }

        chart
            .draw_series(
                input.points.iter().map(|p| {
                    Circle::new((p.intensity, p.gflops), 5, family_colour(p.family).filled())
                }),
            )
            .map_err(drawing)?;
        // Each point's number, next to it.
        for (i, (&(cx, cy), p)) in centres.iter().zip(&input.points).enumerate() {
            let text = format!("{}", i + 1);
            let (w, h) = (text_width(&text, 12.0) + 2.0, 13.0);
            let mut candidates = Vec::new();
            for d in [0.0, 9.0, 18.0] {
                candidates.extend([
                    (cx + 7.0 + d, cy - h - 1.0 - d),
                    (cx + 7.0 + d, cy + 1.0 + d),
                    (cx - 7.0 - w - d, cy - h - 1.0 - d),
                    (cx - 7.0 - w - d, cy + 1.0 + d),
                    (cx - w / 2.0, cy - h - 7.0 - d),
                    (cx - w / 2.0, cy + 7.0 + d),
                    (cx + 8.0 + d, cy - h / 2.0),
                    (cx - 8.0 - w - d, cy - h / 2.0),
                ]);
            }
            let b = place(&candidates, w, h, &mut taken);
            labels.push((b, text, family_colour(p.family), 12));
        }
        for (b, text, colour, size) in labels {
            root.draw(&Text::new(
                text,
                (b.0 as i32, b.1 as i32),
                ("sans-serif", size)
                    .into_font()
                    .color(&colour)
                    .pos(Pos::new(HPos::Left, VPos::Top)),
            ))
            .map_err(drawing)?;
        }

        draw_key(&right, input)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// The legend of ceilings, the key of points and the notes, on the right.
fn draw_key(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    input: &RooflineInput,
) -> Result<(), PlotError> {
    let text = |s: &str, x: i32, y: i32, size: i32, c: RGBColor| {
        area.draw(&Text::new(
            s.to_string(),
            (x, y),
            ("sans-serif", size)
                .into_font()
                .color(&c)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(drawing)
    };
    let max_chars = ((f64::from(WIDTH - CHART_WIDTH) - 40.0) / (0.6 * 12.0)) as usize;
    let mut y = 56;
    text("Ceilings (measured in this run)", 8, y, 15, BLACK)?;
    y += 22;
    for (i, (label, v)) in input.compute_ceilings.iter().enumerate() {
        let colour = COMPUTE_COLOURS[i % COMPUTE_COLOURS.len()];
        match v {
            Some(v) => {
                area.draw(&PathElement::new([(8, y), (30, y)], colour.stroke_width(2)))
                    .map_err(drawing)?;
                let s = format!("{label}: {} GFLOP/s", fmt_sig(*v));
                text(&ellipsize(&s, max_chars), 38, y, 12, BLACK)?;
            }
            None => {
                let s = format!("{label}: not available on this CPU");
                text(
                    &ellipsize(&s, max_chars),
                    38,
                    y,
                    12,
                    RGBColor(0x88, 0x88, 0x88),
                )?;
            }
        }
        y += 18;
    }
    for (i, (label, bw)) in input.memory_ceilings.iter().enumerate() {
        let colour = MEMORY_COLOURS[i % MEMORY_COLOURS.len()];
        area.draw(&PathElement::new([(8, y), (30, y)], colour.stroke_width(2)))
            .map_err(drawing)?;
        let s = format!("{label}: {} GB/s", fmt_sig(*bw));
        text(&ellipsize(&s, max_chars), 38, y, 12, BLACK)?;
        y += 18;
    }
    y += 12;
    if !input.points.is_empty() {
        text("Kernels", 8, y, 15, BLACK)?;
        y += 22;
    }
    // Shrink the key's line height when there are many points.
    let room = (HEIGHT as i32 - y - 24 - 15 * input.notes.len().min(8) as i32).max(40);
    let step = (room / input.points.len().max(1) as i32).clamp(9, 18);
    let size = (step - 4).clamp(8, 12);
    for (i, p) in input.points.iter().enumerate() {
        if y > HEIGHT as i32 - 8 {
            break;
        }
        let colour = family_colour(p.family);
        area.draw(&Circle::new((18, y), 4, colour.filled()))
            .map_err(drawing)?;
        let s = format!("{:>2}  {}: {}", i + 1, p.label, p.detail);
        text(&ellipsize(&s, max_chars), 28, y, size, BLACK)?;
        y += step;
    }
    y += 8;
    for note in &input.notes {
        for line in wrap(note, max_chars + 6) {
            if y > HEIGHT as i32 - 6 {
                break;
            }
            text(&line, 8, y, 11, RGBColor(0x55, 0x55, 0x55))?;
            y += 14;
        }
    }
    Ok(())
}

/// Smallest and largest of `v` (`None` when empty).
fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().reduce(f64::min)?;
    let hi = v.iter().copied().reduce(f64::max)?;
    Some((lo, hi))
}

/// Widens `[lo, hi]` about its geometric middle to span at least `ratio`.
fn widen(lo: &mut f64, hi: &mut f64, ratio: f64) {
    if *hi / *lo < ratio {
        let mid = (*lo * *hi).sqrt();
        *lo = mid / ratio.sqrt();
        *hi = mid * ratio.sqrt();
    }
}

/// `s` split into lines of at most `width` characters at spaces.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensities_follow_the_traffic_model() {
        let pts = points_from(&[
            ("convert f32->bf16", "n=4096", 10.0, "Gelem/s"),
            ("gemm f32", "1024x1024x1024", 100.0, "GFLOP/s"),
            ("gemv bf16", "1x4096x4096", 20.0, "GFLOP/s"),
            ("memcpy (reference)", "bytes=16384", 50.0, "GB/s"),
            ("vfmadd231ps zmm", "threads=2", 200.0, "GFLOP/s (peak)"),
        ]);
        assert_eq!(pts.len(), 3);
        assert!((pts[0].intensity - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(pts[0].label, "f32->bf16 n=4K");
        assert_eq!(pts[0].family, PointFamily::Conversion);
        // 2 * 1024^3 / (3 * 4 * 1024^2) = 1024 / 6
        assert!((pts[1].intensity - 1024.0 / 6.0).abs() < 1e-9);
        assert_eq!(pts[1].family, PointFamily::Gemm);
        // 2 * 4096^2 / (2 * (4096 + 4096^2) + 4 * 4096): just under 1
        let want = 2.0 * 4096.0 * 4096.0 / (2.0 * (4096.0 + 4096.0 * 4096.0) + 4.0 * 4096.0);
        assert!((pts[2].intensity - want).abs() < 1e-12);
        assert_eq!(pts[2].family, PointFamily::Gemv);
    }

    #[test]
    fn wrap_respects_width() {
        let lines = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(lines, ["aaa bbb", "ccc ddd"]);
    }

    #[test]
    fn short_sizes() {
        assert_eq!(short_size("n=16777216"), "n=16M");
        assert_eq!(short_size("n=4096"), "n=4K");
        assert_eq!(short_size("n=100"), "n=100");
    }
}
