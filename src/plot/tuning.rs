//! The picture of a tuning run: what each evaluation scored, and which
//! nodes ended in which dtype, how sensitive they are and what they cost.

use std::collections::BTreeSet;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{PlotError, drawing, ellipsize, fmt_sig};
use crate::tune::{Tolerance, TuningReport};

const WIDTH: u32 = 1200;
/// Height of the metric panel; the node panel takes the rest.
const METRIC_HEIGHT: u32 = 400;
/// Heights of the node rows: sensitivity bars, time bars, dtype strip.
const SENS_HEIGHT: u32 = 210;
const TIME_HEIGHT: u32 = 170;
const STRIP_HEIGHT: u32 = 50;
/// Longest node name written, in characters.
const NAME_CHARS: usize = 22;

/// Font size of the node names: larger while the nodes are few.
fn name_size(n: usize) -> i32 {
    if n <= 40 { 14 } else { 11 }
}

/// Room under the strip for the (rotated) node names.
fn names_height(r: &TuningReport) -> u32 {
    let longest = r
        .nodes
        .iter()
        .map(|n| n.name.chars().count().min(NAME_CHARS))
        .max()
        .unwrap_or(0);
    (longest as f64 * 0.6 * f64::from(name_size(r.nodes.len())) + 14.0).clamp(30.0, 200.0) as u32
}

/// Left label area of every node row, the same so their x axes align.
const Y_LABELS: u32 = 80;
const MARGIN: u32 = 16;
/// Room on the right of the node rows for the dtype legend.
const LEGEND_WIDTH: u32 = 150;

const BASELINE: RGBColor = RGBColor(0x29, 0x80, 0xb9);
const PASS: RGBColor = RGBColor(0x27, 0xae, 0x60);
const FAIL: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const GREY: RGBColor = RGBColor(0x77, 0x77, 0x77);

/// Colour of a node in final dtype `d`.
fn dtype_colour(d: &str) -> RGBColor {
    match d {
        "f32" => RGBColor(0xe6, 0x7e, 0x22),
        "bf16" => RGBColor(0x29, 0x80, 0xb9),
        "f16" => RGBColor(0x16, 0xa0, 0x85),
        _ => RGBColor(0x95, 0xa5, 0xa6),
    }
}

/// The report's `tolerance` text back as a [`Tolerance`]: the report keeps
/// it in words, written by `Tolerance`'s `Display` (`"1% relative"`,
/// `"0.5 absolute"`).
fn parse_tolerance(s: &str) -> Option<Tolerance> {
    if let Some(p) = s.strip_suffix("% relative") {
        return p
            .trim()
            .parse::<f64>()
            .ok()
            .map(|p| Tolerance::Relative(p / 100.0));
    }
    s.strip_suffix(" absolute")
        .and_then(|a| a.trim().parse::<f64>().ok())
        .map(Tolerance::Absolute)
}

/// The metric that just passes, if the tolerance text can be read.
fn threshold(r: &TuningReport) -> Option<f64> {
    parse_tolerance(&r.tolerance)?.threshold(r.baseline, r.higher_is_better)
}

/// Which evaluation produced the returned plan: 0 for the baseline, `i` for
/// trial `i`, `None` when it cannot be told. The trial whose fp32 nodes are
/// the plan's and whose metric is the final metric (the tuner caches plans,
/// so a plan is evaluated once).
fn chosen_evaluation(r: &TuningReport) -> Option<usize> {
    let fp32: BTreeSet<&str> = r.fallbacks().map(|n| n.name.as_str()).collect();
    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    if let Some(t) = r.trials.iter().find(|t| {
        same(t.metric, r.final_metric)
            && t.fp32_nodes
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>()
                == fp32
    }) {
        return Some(t.index);
    }
    (r.nodes.iter().all(|n| n.dtype == "f32") && same(r.baseline, r.final_metric)).then_some(0)
}

/// Draws a tuning report as an SVG document.
///
/// Top: the metric of every evaluation (0 = the fp32 baseline, then each
/// trial; green passed, red failed, a `NaN` metric at the bottom edge), the
/// tolerance line (the worst passing metric, from the report's tolerance and
/// `higher_is_better`), and a ring on the evaluation that gave the returned
/// plan. Bottom, the lowerable nodes in execution order: each node's
/// sensitivity (log scale, the relative L2 change of the outputs with that
/// node alone in the low dtype), its share of the fp32 time per pass (bar)
/// with the time in the low dtype on the same scale (tick), and a strip
/// coloured by final dtype with the node names (thinned out when they do not
/// fit; fallen-back nodes are named first).
///
/// A report without trials or without nodes still gives a picture; the only
/// error is [`PlotError::Drawing`].
pub fn tuning_svg(report: &TuningReport) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let height = METRIC_HEIGHT
            + if report.nodes.is_empty() {
                120
            } else {
                SENS_HEIGHT + TIME_HEIGHT + STRIP_HEIGHT + names_height(report) + 12
            };
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (top, bottom) = root.split_vertically(METRIC_HEIGHT);
        draw_metric_panel(&top, report)?;
        draw_node_panel(&bottom, report)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn text_style(size: i32, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&c)
        .pos(Pos::new(h, v))
}

fn draw_metric_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    r: &TuningReport,
) -> Result<(), PlotError> {
    let thr = threshold(r);
    let evals: Vec<(usize, f64, RGBColor)> = std::iter::once((0, r.baseline, BASELINE))
        .chain(
            r.trials
                .iter()
                .map(|t| (t.index, t.metric, if t.passed { PASS } else { FAIL })),
        )
        .collect();
    let mut ys: Vec<f64> = evals.iter().map(|e| e.1).collect();
    ys.push(r.final_metric);
    ys.extend(thr);
    let ys: Vec<f64> = ys.into_iter().filter(|v| v.is_finite()).collect();
    let (mut y_lo, mut y_hi) = match (
        ys.iter().copied().reduce(f64::min),
        ys.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => (0.0, 1.0),
    };
    let pad = if y_hi > y_lo {
        0.12 * (y_hi - y_lo)
    } else {
        0.05 * y_hi.abs().max(1e-3)
    };
    y_lo -= pad;
    y_hi += 1.6 * pad; // room for the trial descriptions above the points
    let last = evals.last().map_or(0, |e| e.0);
    let x_hi = last as f64 + 0.5;

    let title = format!(
        "Tuning: {} ({} strategy, tolerance {}), baseline {} -> final {}, {} evaluations",
        r.status,
        r.strategy,
        r.tolerance,
        fmt_metric(r.baseline),
        fmt_metric(r.final_metric),
        r.evaluations
    );
    let mut chart = ChartBuilder::on(area)
        .caption(ellipsize(&title, 110), ("sans-serif", 18))
        .margin(MARGIN)
        .margin_right(LEGEND_WIDTH)
        .x_label_area_size(44)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(-0.5..x_hi.max(1.5), y_lo..y_hi)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("evaluation (0 = fp32 baseline)")
        .y_desc(if r.higher_is_better {
            "metric (higher is better)"
        } else {
            "metric (lower is better)"
        })
        .x_labels((last + 2).min(25))
        .x_label_formatter(&|v| {
            if *v >= 0.0 && v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| fmt_metric(*v))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(drawing)?;

    let x_right = x_hi.max(1.5);
    if r.baseline.is_finite() {
        chart
            .draw_series(LineSeries::new(
                [(-0.5, r.baseline), (x_right, r.baseline)],
                BASELINE.mix(0.5).stroke_width(1),
            ))
            .map_err(drawing)?;
    }
    if let Some(t) = thr.filter(|t| t.is_finite()) {
        chart
            .draw_series(DashedLineSeries::new(
                [(-0.5, t), (x_right, t)],
                8,
                5,
                FAIL.stroke_width(2),
            ))
            .map_err(drawing)?;
    }
    // The labels of the two lines, in the right margin.
    let label_at = |y: f64| {
        let (_, py) = chart.backend_coord(&(x_right, y));
        let (px, _) = chart.backend_coord(&(x_right, y_lo));
        (px + 6, py)
    };
    let mut right_labels: Vec<(i32, String, RGBColor)> = Vec::new();
    if r.baseline.is_finite() {
        right_labels.push((
            label_at(r.baseline).1,
            format!("fp32 baseline {}", fmt_metric(r.baseline)),
            BASELINE,
        ));
    }
    match thr.filter(|t| t.is_finite()) {
        Some(t) => right_labels.push((label_at(t).1, format!("tolerance {}", fmt_metric(t)), FAIL)),
        None => right_labels.push((label_at(y_lo).1 - 8, "no tolerance line".to_string(), GREY)),
    }
    // Keep the two labels apart when the lines are close.
    if right_labels.len() == 2 && (right_labels[0].0 - right_labels[1].0).abs() < 16 {
        let (a, b) = if right_labels[0].0 <= right_labels[1].0 {
            (0, 1)
        } else {
            (1, 0)
        };
        let mid = (right_labels[a].0 + right_labels[b].0) / 2;
        right_labels[a].0 = mid - 8;
        right_labels[b].0 = mid + 8;
    }
    let px = label_at(y_lo).0;
    for (py, s, c) in right_labels {
        area.draw(&Text::new(
            s,
            (px - area.get_base_pixel().0, py - area.get_base_pixel().1),
            text_style(12, c, HPos::Left, VPos::Center),
        ))
        .map_err(drawing)?;
    }

    // The evaluations in order, a NaN metric drawn on the bottom edge.
    let plotted: Vec<(f64, f64)> = evals
        .iter()
        .map(|&(i, m, _)| (i as f64, if m.is_finite() { m } else { y_lo }))
        .collect();
    if plotted.len() > 1 {
        chart
            .draw_series(LineSeries::new(
                plotted.clone(),
                GREY.mix(0.6).stroke_width(1),
            ))
            .map_err(drawing)?;
    }
    chart
        .draw_series(
            evals
                .iter()
                .zip(&plotted)
                .map(|(e, &p)| Circle::new(p, 5, e.2.filled())),
        )
        .map_err(drawing)?;
    for (e, &p) in evals.iter().zip(&plotted) {
        if !e.1.is_finite() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "NaN",
                    p,
                    text_style(11, FAIL, HPos::Left, VPos::Bottom),
                )))
                .map_err(drawing)?;
        }
    }
    // Trial descriptions, when they have room: above the point, alternating
    // heights so neighbours do not collide.
    let (x0, _) = chart.backend_coord(&(0.0, y_lo));
    let (x1, _) = chart.backend_coord(&(1.0, y_lo));
    let spacing = f64::from(x1 - x0);
    let max_chars = ((2.0 * spacing - 8.0) / (0.6 * 11.0)).clamp(0.0, 34.0) as usize;
    if max_chars >= 6 {
        for (j, t) in r.trials.iter().enumerate() {
            let p = plotted[j + 1];
            let (px, py) = chart.backend_coord(&p);
            let lift = if j % 2 == 0 { 10 } else { 24 };
            area.draw(&Text::new(
                ellipsize(&t.description, max_chars),
                (
                    px - area.get_base_pixel().0,
                    py - lift - area.get_base_pixel().1,
                ),
                text_style(11, RGBColor(0x33, 0x33, 0x33), HPos::Center, VPos::Bottom),
            ))
            .map_err(drawing)?;
        }
    }
    match chosen_evaluation(r) {
        Some(i) => {
            let p = plotted[evals.iter().position(|e| e.0 == i).unwrap_or(0)];
            chart
                .draw_series(std::iter::once(Circle::new(p, 11, BLACK.stroke_width(2))))
                .map_err(drawing)?;
            let (px, py) = chart.backend_coord(&p);
            let (bx, by) = (
                px + 14 - area.get_base_pixel().0,
                py + 12 - area.get_base_pixel().1,
            );
            area.draw(&Rectangle::new(
                [(bx - 2, by - 1), (bx + 74, by + 14)],
                WHITE.mix(0.85).filled(),
            ))
            .map_err(drawing)?;
            area.draw(&Text::new(
                "chosen plan",
                (bx, by),
                text_style(12, BLACK, HPos::Left, VPos::Top),
            ))
            .map_err(drawing)?;
        }
        None => {
            area.draw(&Text::new(
                "returned plan: not among the evaluations shown",
                (Y_LABELS as i32 + 30, 40),
                text_style(12, GREY, HPos::Left, VPos::Top),
            ))
            .map_err(drawing)?;
        }
    }
    if r.trials.is_empty() {
        area.draw(&Text::new(
            "no trials: the tuner stopped after the baseline",
            (Y_LABELS as i32 + 30, 58),
            text_style(12, GREY, HPos::Left, VPos::Top),
        ))
        .map_err(drawing)?;
    }
    // Marker legend, in the x label row on the right.
    let (w, h) = area.dim_in_pixel();
    let mut lx = w as i32 - LEGEND_WIDTH as i32 - 330;
    let y = h as i32 - 22;
    for (c, s) in [
        (BASELINE, "fp32 baseline"),
        (PASS, "passed"),
        (FAIL, "failed"),
    ] {
        area.draw(&Rectangle::new([(lx, y - 5), (lx + 10, y + 5)], c.filled()))
            .map_err(drawing)?;
        area.draw(&Text::new(
            s,
            (lx + 16, y),
            text_style(12, BLACK, HPos::Left, VPos::Center),
        ))
        .map_err(drawing)?;
        lx += 30 + (s.len() as i32) * 7;
    }
    let (ox, oy) = (lx + 4, y);
    area.draw(&Circle::new((ox, oy), 6, BLACK.stroke_width(2)))
        .map_err(drawing)?;
    area.draw(&Text::new(
        "chosen plan",
        (ox + 12, oy),
        text_style(12, BLACK, HPos::Left, VPos::Center),
    ))
    .map_err(drawing)?;
    Ok(())
}

/// A metric with enough digits to tell trials apart (accuracies like
/// 0.9815 need four).
fn fmt_metric(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn draw_node_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    r: &TuningReport,
) -> Result<(), PlotError> {
    let n = r.nodes.len();
    let (w, h) = area.dim_in_pixel();
    if n == 0 {
        area.draw(&Text::new(
            "no lowerable nodes in this graph",
            (w as i32 / 2, h as i32 / 3),
            text_style(16, GREY, HPos::Center, VPos::Center),
        ))
        .map_err(drawing)?;
        return Ok(());
    }
    let (sens_area, rest) = area.split_vertically(SENS_HEIGHT);
    let (time_area, strip_area) = rest.split_vertically(TIME_HEIGHT);
    let x_range = -0.5..(n as f64 - 0.5);
    let half = if n > 150 { 0.5 } else { 0.36 };

    // Sensitivity, log scale; zero or unmeasured nodes get no bar.
    let sens: Vec<Option<f64>> = r
        .nodes
        .iter()
        .map(|nd| nd.sensitivity.filter(|s| s.is_finite() && *s > 0.0))
        .collect();
    let pos: Vec<f64> = sens.iter().flatten().copied().collect();
    let (s_lo, s_hi) = match (
        pos.iter().copied().reduce(f64::min),
        pos.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) => (a / 4.0, (b * 2.0).max(a * 100.0)),
        _ => (1e-4, 1.0),
    };
    let mut chart = ChartBuilder::on(&sens_area)
        .caption(
            "Nodes in execution order: sensitivity, share of fp32 time, final dtype",
            ("sans-serif", 16),
        )
        .margin_left(MARGIN)
        .margin_right(LEGEND_WIDTH)
        .margin_top(8)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(x_range.clone(), (s_lo..s_hi).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("sensitivity")
        .y_label_formatter(&|v| fmt_sig(*v))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(drawing)?;
    chart
        .draw_series(
            r.nodes
                .iter()
                .zip(&sens)
                .enumerate()
                .filter_map(|(i, (nd, s))| {
                    s.map(|s| {
                        Rectangle::new(
                            [(i as f64 - half, s_lo), (i as f64 + half, s)],
                            dtype_colour(&nd.dtype).filled(),
                        )
                    })
                }),
        )
        .map_err(drawing)?;
    if pos.is_empty() {
        sens_area
            .draw(&Text::new(
                "sensitivity not measured (or zero) for every node",
                (Y_LABELS as i32 + 40, 60),
                text_style(12, GREY, HPos::Left, VPos::Center),
            ))
            .map_err(drawing)?;
    }

    // Share of the fp32 time per pass, with the low-dtype time as a tick.
    let total: f64 = r.nodes.iter().filter_map(|nd| nd.time_f32_s).sum();
    let share = |t: Option<f64>| {
        t.filter(|_| total > 0.0)
            .map(|t| 100.0 * t / total)
            .filter(|v| v.is_finite())
    };
    let top = r
        .nodes
        .iter()
        .flat_map(|nd| [share(nd.time_f32_s), share(nd.time_low_s)])
        .flatten()
        .fold(0.0f64, f64::max);
    let y_top = if top > 0.0 {
        (top * 1.15).min(100.0).max(top)
    } else {
        100.0
    };
    let mut chart = ChartBuilder::on(&time_area)
        .margin_left(MARGIN)
        .margin_right(LEGEND_WIDTH)
        .margin_top(10)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(x_range.clone(), 0.0..y_top)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(5)
        .y_desc("% of fp32 time")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(drawing)?;
    chart
        .draw_series(r.nodes.iter().enumerate().filter_map(|(i, nd)| {
            share(nd.time_f32_s).map(|s| {
                Rectangle::new(
                    [(i as f64 - half, 0.0), (i as f64 + half, s)],
                    dtype_colour(&nd.dtype).mix(0.55).filled(),
                )
            })
        }))
        .map_err(drawing)?;
    chart
        .draw_series(r.nodes.iter().enumerate().filter_map(|(i, nd)| {
            share(nd.time_low_s).map(|s| {
                PathElement::new(
                    [(i as f64 - half, s), (i as f64 + half, s)],
                    BLACK.stroke_width(2),
                )
            })
        }))
        .map_err(drawing)?;
    if total <= 0.0 {
        time_area
            .draw(&Text::new(
                "per-node times not measured",
                (Y_LABELS as i32 + 40, 40),
                text_style(12, GREY, HPos::Left, VPos::Center),
            ))
            .map_err(drawing)?;
    }

    // The dtype strip and the node names.
    let mut chart = ChartBuilder::on(&strip_area)
        .margin_left(MARGIN)
        .margin_right(LEGEND_WIDTH)
        .margin_top(6)
        .margin_bottom(h - SENS_HEIGHT - TIME_HEIGHT - STRIP_HEIGHT + 6)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(x_range, 0.0..1.0)
        .map_err(drawing)?;
    let gap = if n <= 100 { 0.04 } else { 0.0 };
    chart
        .draw_series(r.nodes.iter().enumerate().map(|(i, nd)| {
            Rectangle::new(
                [(i as f64 - 0.5 + gap, 0.0), (i as f64 + 0.5 - gap, 1.0)],
                dtype_colour(&nd.dtype).filled(),
            )
        }))
        .map_err(drawing)?;
    let (sx0, sy0) = chart.backend_coord(&(-0.5, 1.0));
    strip_area
        .draw(&Text::new(
            "final dtype",
            (
                sx0 - 8 - strip_area.get_base_pixel().0,
                sy0 + 12 - strip_area.get_base_pixel().1,
            ),
            text_style(13, BLACK, HPos::Right, VPos::Center),
        ))
        .map_err(drawing)?;
    // Names: fallen-back nodes first, then the rest in order, each where it
    // keeps 13 px from every name already placed.
    let xs: Vec<i32> = (0..n)
        .map(|i| chart.backend_coord(&(i as f64, 0.0)).0)
        .collect();
    let (_, y_bottom) = chart.backend_coord(&(0.0, 0.0));
    let mut order: Vec<usize> = (0..n).filter(|&i| r.nodes[i].dtype == "f32").collect();
    order.extend((0..n).filter(|&i| r.nodes[i].dtype != "f32"));
    let mut placed: Vec<i32> = Vec::new();
    let mut named = 0usize;
    for i in order {
        if placed.iter().any(|&p| (p - xs[i]).abs() < 13) {
            continue;
        }
        placed.push(xs[i]);
        named += 1;
        strip_area
            .draw(&Text::new(
                ellipsize(&r.nodes[i].name, NAME_CHARS),
                (
                    xs[i] - strip_area.get_base_pixel().0,
                    y_bottom + 6 - strip_area.get_base_pixel().1,
                ),
                ("sans-serif", name_size(n))
                    .into_font()
                    .transform(FontTransform::Rotate90)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(drawing)?;
    }
    // dtype legend and how to read the bars, right of the rows.
    let lx = (w - LEGEND_WIDTH) as i32 + 12;
    let mut y = 40;
    let mut dtypes: Vec<&str> = vec!["f32", "bf16", "f16"];
    for nd in &r.nodes {
        if !dtypes.contains(&nd.dtype.as_str()) {
            dtypes.push(&nd.dtype);
        }
    }
    area.draw(&Text::new(
        "final dtype",
        (lx, y),
        text_style(13, BLACK, HPos::Left, VPos::Center),
    ))
    .map_err(drawing)?;
    for d in dtypes {
        y += 20;
        let count = r.nodes.iter().filter(|nd| nd.dtype == d).count();
        area.draw(&Rectangle::new(
            [(lx, y - 6), (lx + 14, y + 6)],
            dtype_colour(d).filled(),
        ))
        .map_err(drawing)?;
        area.draw(&Text::new(
            format!("{d} ({count})"),
            (lx + 20, y),
            text_style(12, BLACK, HPos::Left, VPos::Center),
        ))
        .map_err(drawing)?;
    }
    let notes = [
        "sensitivity: output",
        "change (rel. L2) with",
        "only this node low",
        "",
        "time: bar = fp32,",
        "tick = low dtype,",
        "% of total fp32 time",
    ];
    y += 30;
    for line in notes {
        area.draw(&Text::new(
            line,
            (lx, y),
            text_style(11, GREY, HPos::Left, VPos::Center),
        ))
        .map_err(drawing)?;
        y += 14;
    }
    if named < n {
        y += 10;
        for line in [
            format!("{named} of {n} names shown"),
            "(fp32 nodes first)".to_string(),
        ] {
            area.draw(&Text::new(
                line,
                (lx, y),
                text_style(11, GREY, HPos::Left, VPos::Center),
            ))
            .map_err(drawing)?;
            y += 14;
        }
    }
    if let Some(s) = r.speedup {
        y += 10;
        area.draw(&Text::new(
            format!("speedup {s:.2}x"),
            (lx, y),
            text_style(12, BLACK, HPos::Left, VPos::Center),
        ))
        .map_err(drawing)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_text_round_trips() {
        for t in [
            Tolerance::Relative(0.01),
            Tolerance::Relative(0.005),
            Tolerance::Absolute(0.5),
            Tolerance::Absolute(1e-3),
        ] {
            assert_eq!(parse_tolerance(&t.to_string()), Some(t), "{t}");
        }
        assert_eq!(parse_tolerance("whatever"), None);
    }
}
