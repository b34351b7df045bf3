//! Figures (plotters, each as PNG and SVG) of what the search keeps and how scores scale with the
//! budget (Lawton et al., 2023, Section 4: module-type × layer maps of kept parameters, and the
//! observation that the search prefers middle layers).
//!
//! - `bias_heatmap_structured` / `bias_heatmap_unstructured`: fraction of bias entries kept per
//!   module type × layer for S-BitFit / U-BitFit (mean criterion);
//! - `lora_rank_heatmap` (S-MaM: kept rank / max rank) and `lora_entries_heatmap` (U-MaM: kept
//!   fraction of LoRA entries);
//! - `score_vs_budget_<task>`: median score (min–max band over seeds) against the budget, with
//!   BitFit's median as a dashed line;
//! - `layer_profile`: kept fraction per layer for each searched method.
//!
//! A figure whose runs are absent is skipped (and reported), never drawn empty.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::aggregate::{
    chosen_budget, f64_values, heatmap_frame, heatmap_support, i64_values, labels_in_group,
    layer_profile, medians, str_values, HeatValue, Metric,
};
use crate::error::{AnalyzeError, Result};
use crate::load::Sweep;
use crate::tables::{humanize, task_display, task_order};

/// DejaVu Sans 2.37 (see `assets/README.md`), embedded so figures need no system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The font family name figures use.
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters' `ab_glyph` text renderer (once per process).
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font (a test draws text with it), so this cannot fail.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Size in pixels of heat-map figures.
pub const HEATMAP_SIZE: (u32, u32) = (1100, 620);
/// Size in pixels of line plots.
pub const LINE_SIZE: (u32, u32) = (900, 600);

/// A figure written to disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// File stem, e.g. `"bias_heatmap_structured"`.
    pub stem: String,
    /// Human-readable caption.
    pub caption: String,
    /// The PNG file.
    pub png: PathBuf,
    /// The SVG file.
    pub svg: PathBuf,
}

/// What [`draw_figures`] produced and skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FigureSet {
    /// Figures written.
    pub figures: Vec<Figure>,
    /// Why figures were skipped (one line each).
    pub skipped: Vec<String>,
}

type PlotResult = std::result::Result<(), Box<dyn Error>>;

/// Something that can draw itself on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static;
}

/// Draws `d` into `<out>/<stem>.png` and `<out>/<stem>.svg`.
fn render<D: Draw>(
    d: &D,
    out: &Path,
    stem: &str,
    caption: &str,
    size: (u32, u32),
) -> Result<Figure> {
    register_fonts();
    std::fs::create_dir_all(out).map_err(|e| AnalyzeError::io(out, e))?;
    let plot_err = |e: Box<dyn Error>| AnalyzeError::Plot {
        figure: stem.to_string(),
        message: e.to_string(),
    };
    let png = out.join(format!("{stem}.png"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        d.draw(&root).map_err(plot_err)?;
        root.present().map_err(|e| plot_err(Box::new(e)))?;
    }
    let svg = out.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        d.draw(&root).map_err(plot_err)?;
        root.present().map_err(|e| plot_err(Box::new(e)))?;
    }
    Ok(Figure {
        stem: stem.to_string(),
        caption: caption.to_string(),
        png,
        svg,
    })
}

/// The viridis colour map at `v` in [0, 1] (linear interpolation between nine anchors of
/// matplotlib's viridis); plotters' own colour maps sit behind a feature we do not enable.
pub fn viridis(v: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let x = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    } * (ANCHORS.len() - 1) as f64;
    let i = (x.floor() as usize).min(ANCHORS.len() - 2);
    let t = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Rows of the bias heat maps, top to bottom, in the encoder's order.
pub const BIAS_ROWS: [&str; 9] = [
    "embeddings_layer_norm",
    "query",
    "key",
    "value",
    "attention_output",
    "attention_layer_norm",
    "intermediate",
    "output",
    "output_layer_norm",
];

/// Rows of the LoRA heat maps (the modules of the paper's search start, `mam16`).
pub const LORA_ROWS: [&str; 4] = ["query", "key", "intermediate", "output"];

/// Row labels as the paper's Fig. 1 names the module types.
pub fn module_row_label(t: &str) -> &'static str {
    match t {
        "embeddings_layer_norm" => "embeddings.layernorm",
        "query" => "query",
        "key" => "key",
        "value" => "value",
        "attention_output" => "attention.output",
        "attention_layer_norm" => "attention.layernorm",
        "intermediate" => "intermediate",
        "output" => "output",
        "output_layer_norm" => "output.layernorm",
        _ => "?",
    }
}

/// A heat map ready to draw: values by (row, column), None for cells without a module.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatGrid {
    /// Title.
    pub title: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// Column labels, left to right (`"emb"` first when the embeddings LayerNorm is a row).
    pub cols: Vec<String>,
    /// `values[row][col]`.
    pub values: Vec<Vec<Option<f64>>>,
    /// Colour-bar caption.
    pub scale: String,
}

/// Turns a [`heatmap_frame`] into a grid over `row_types` × (`emb`? + layers `0..num_layers`).
pub fn heat_grid(
    frame: &polars::prelude::DataFrame,
    row_types: &[&str],
    num_layers: usize,
    title: String,
    scale: &str,
) -> Result<HeatGrid> {
    let types = str_values(frame, "module_type")?;
    let layers = i64_values(frame, "layer")?;
    let values = f64_values(frame, "value")?;
    let has_emb = row_types.contains(&"embeddings_layer_norm");
    let mut cols: Vec<String> = Vec::new();
    if has_emb {
        cols.push("emb".to_string());
    }
    cols.extend((0..num_layers).map(|l| l.to_string()));
    let offset = usize::from(has_emb);
    let mut grid = vec![vec![None; cols.len()]; row_types.len()];
    for i in 0..frame.height() {
        let (Some(t), Some(v)) = (&types[i], values[i]) else {
            continue;
        };
        let Some(r) = row_types.iter().position(|x| x == t) else {
            continue;
        };
        let c = match layers[i] {
            None if has_emb => 0,
            None => continue,
            Some(l) if (l as usize) < num_layers => l as usize + offset,
            Some(_) => continue,
        };
        grid[r][c] = Some(v);
    }
    Ok(HeatGrid {
        title,
        rows: row_types
            .iter()
            .map(|t| module_row_label(t).to_string())
            .collect(),
        cols,
        values: grid,
        scale: scale.to_string(),
    })
}

impl Draw for HeatGrid {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let vmax = colour_max(self.values.iter().flatten().flatten().copied());
        let (w, _) = root.dim_in_pixel();
        let (main, bar) = root.split_horizontally(w.saturating_sub(120));
        let nr = self.rows.len() as i32;
        let nc = self.cols.len() as i32;
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(170)
            .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())?;
        let cols = self.cols.clone();
        let rows = self.rows.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(self.cols.len())
            .y_labels(self.rows.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => cols.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            // Row 0 is drawn at the top.
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => rows
                    .get((nr - 1 - *i) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("layer")
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 16))
            .draw()?;
        let plot = chart.plotting_area();
        for (r, row) in self.values.iter().enumerate() {
            let y = nr - 1 - r as i32;
            for (c, v) in row.iter().enumerate() {
                let c = c as i32;
                let corners = [
                    (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                ];
                let centre = (SegmentValue::CenterOf(c), SegmentValue::CenterOf(y));
                let style = TextStyle::from((FAMILY, 14).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Center));
                match v {
                    Some(v) => {
                        let colour = viridis(*v / vmax);
                        plot.draw(&Rectangle::new(corners.clone(), colour.filled()))?;
                        let text = if *v / vmax < 0.55 { WHITE } else { BLACK };
                        plot.draw(&Text::new(format!("{v:.2}"), centre, style.color(&text)))?;
                    }
                    None => {
                        plot.draw(&Rectangle::new(
                            corners.clone(),
                            RGBColor(235, 235, 235).filled(),
                        ))?;
                    }
                }
                plot.draw(&Rectangle::new(corners, WHITE.stroke_width(1)))?;
            }
        }
        draw_colour_bar(&bar, &self.scale, vmax)
    }
}

/// The top of the colour scale: the smallest of 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1 that
/// holds every value, so that small kept fractions at low budgets still show contrast (the cells
/// print their values, and the bar says where the scale ends).
pub fn colour_max(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]
        .into_iter()
        .find(|&s| m <= s + 1e-12)
        .unwrap_or(1.0)
}

fn draw_colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    vmax: f64,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 14))
        .margin_top(50)
        .margin_bottom(62)
        .margin_right(20)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0f64..1.0, 0.0f64..vmax)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| {
            if vmax < 0.1 {
                format!("{v:.3}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style((FAMILY, 13))
        .draw()?;
    let steps = 100;
    for i in 0..steps {
        let lo = i as f64 / steps as f64;
        let hi = (i + 1) as f64 / steps as f64;
        let colour = viridis((lo + hi) / 2.0);
        chart.plotting_area().draw(&Rectangle::new(
            [(0.0, lo * vmax), (1.0, hi * vmax)],
            colour.filled(),
        ))?;
    }
    Ok(())
}

/// One line of a line plot, with an optional min–max band.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// `(x, y, y_min, y_max)` points, x ascending.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A line plot (score vs budget, layer profile).
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    /// Title.
    pub title: String,
    /// X-axis caption.
    pub x_desc: String,
    /// Y-axis caption.
    pub y_desc: String,
    /// Whether the x axis is logarithmic.
    pub log_x: bool,
    /// Whether x values are integer categories (layers).
    pub integer_x: bool,
    /// Lines.
    pub lines: Vec<Line>,
    /// Horizontal dashed reference lines `(label, y)`.
    pub references: Vec<(String, f64)>,
    /// Whether to draw the min–max bands.
    pub bands: bool,
}

/// `(x, median, min, max)` points of one line.
type Points = Vec<(f64, f64, f64, f64)>;

/// Distinct colours for lines, in order.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

impl LinePlot {
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let xs = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let ys = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().flat_map(|p| [p.1, p.2, p.3]))
            .chain(self.references.iter().map(|r| r.1));
        let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if self.log_x {
            x0 /= 1.6;
            x1 *= 1.6;
        } else {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.1).max(0.5);
        if self.integer_x {
            // Fractions: keep 0 in view so that levels compare honestly.
            y0 = 0.0;
            y1 = (y1 * 1.1).clamp(0.05, 1.0);
        } else {
            y0 -= pad;
            y1 += pad;
        }
        ((x0, x1), (y0, y1))
    }
}

impl Draw for LinePlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(&self.title, (FAMILY, 20))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(65);
        if self.log_x {
            // Ticks at the budgets that were run, not at log-scale round numbers.
            let mut ticks: Vec<f64> = self
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.0))
                .collect();
            ticks.sort_by(f64::total_cmp);
            ticks.dedup();
            let mut chart =
                builder.build_cartesian_2d((x0..x1).log_scale().with_key_points(ticks), y0..y1)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .x_label_formatter(&|x| humanize(*x))
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 16))
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            self.draw_series(&mut chart, x0, x1)?;
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 14))
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        } else {
            let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
            let integer = self.integer_x;
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .x_label_formatter(&|x| {
                    if integer {
                        if (x - x.round()).abs() < 1e-9 {
                            format!("{}", x.round() as i64)
                        } else {
                            String::new()
                        }
                    } else {
                        format!("{x}")
                    }
                })
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 16))
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            self.draw_series(&mut chart, x0, x1)?;
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 14))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        Ok(())
    }
}

impl LinePlot {
    fn draw_series<'a, DB, X>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
        x0: f64,
        x1: f64,
    ) -> PlotResult
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        X: Ranged<ValueType = f64>,
    {
        for (i, line) in self.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            if self.bands && line.points.iter().any(|p| p.3 > p.2) {
                let mut poly: Vec<(f64, f64)> = line.points.iter().map(|p| (p.0, p.3)).collect();
                poly.extend(line.points.iter().rev().map(|p| (p.0, p.2)));
                chart.draw_series(std::iter::once(Polygon::new(
                    poly,
                    colour.mix(0.18).filled(),
                )))?;
            }
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().map(|p| (p.0, p.1)),
                    colour.stroke_width(2),
                ))?
                .label(line.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                line.points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 4, colour.filled())),
            )?;
        }
        for (label, y) in &self.references {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, *y), (x1, *y)],
                    8,
                    6,
                    BLACK.stroke_width(2),
                ))?
                .label(label.clone())
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
        }
        Ok(())
    }
}

/// The number of encoder layers seen in the modules frame (max layer + 1), at least 1.
fn num_layers(sweep: &Sweep) -> Result<usize> {
    let layers = i64_values(&sweep.modules, "layer")?;
    Ok(layers
        .into_iter()
        .flatten()
        .max()
        .map(|l| l as usize + 1)
        .unwrap_or(1))
}

/// Heat-map figure specs: (stem, label, value, rows, what the colour means).
const HEATMAPS: [(&str, &str, HeatValue, bool, &str); 4] = [
    (
        "bias_heatmap_structured",
        "S-BitFit",
        HeatValue::BiasFraction,
        true,
        "fraction of bias entries kept",
    ),
    (
        "bias_heatmap_unstructured",
        "U-BitFit",
        HeatValue::BiasFraction,
        true,
        "fraction of bias entries kept",
    ),
    (
        "lora_rank_heatmap",
        "S-MaM",
        HeatValue::LoraRank,
        false,
        "kept LoRA rank / max rank",
    ),
    (
        "lora_entries_heatmap",
        "U-MaM",
        HeatValue::LoraEntries,
        false,
        "fraction of LoRA entries kept",
    ),
];

/// The heat-map grids the sweep supports: `(stem, caption, grid)`; absent ones are reported in
/// `skipped`.
pub fn heat_grids(
    sweep: &Sweep,
    budgets: &[i64],
    skipped: &mut Vec<String>,
) -> Result<Vec<(String, String, HeatGrid)>> {
    let layers = num_layers(sweep)?;
    let mut out = Vec::new();
    for (stem, label, what, bias_rows, scale) in HEATMAPS {
        let b = chosen_budget(&sweep.runs, label, budgets)?;
        let (runs, tasks) = heatmap_support(&sweep.modules, label, b, what)?;
        if runs == 0 {
            skipped.push(format!(
                "{stem}: no completed {label} runs{}",
                b.map(|b| format!(" at budget {b}")).unwrap_or_default()
            ));
            continue;
        }
        let frame = heatmap_frame(&sweep.modules, label, b, what)?;
        let budget_text = b
            .map(|b| format!(", budget {}", humanize(b as f64)))
            .unwrap_or_default();
        let title = format!("{label}: {scale}{budget_text} (mean of {runs} runs, {tasks} tasks)");
        let rows: &[&str] = if bias_rows { &BIAS_ROWS } else { &LORA_ROWS };
        let grid = heat_grid(&frame, rows, layers, title.clone(), "kept")?;
        out.push((stem.to_string(), title, grid));
    }
    Ok(out)
}

/// Score-vs-budget plots, one per task with searched runs.
pub fn score_plots(sweep: &Sweep, metric: &Metric) -> Result<Vec<(String, LinePlot)>> {
    let med = medians(&sweep.runs, metric)?;
    let tasks = str_values(&med, "task")?;
    let labels = str_values(&med, "label")?;
    let groups = str_values(&med, "group")?;
    let budgets = i64_values(&med, "budget")?;
    let m = f64_values(&med, "median")?;
    let lo = f64_values(&med, "min")?;
    let hi = f64_values(&med, "max")?;
    // task -> label -> points
    let mut by_task: BTreeMap<String, BTreeMap<String, Points>> = BTreeMap::new();
    let mut bitfit: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..med.height() {
        let (Some(t), Some(l), Some(v)) = (&tasks[i], &labels[i], m[i]) else {
            continue;
        };
        if l == "BitFit" {
            bitfit.insert(t.clone(), v);
        }
        if groups[i].as_deref() != Some("searched") || l.contains(" [") {
            continue;
        }
        let Some(b) = budgets[i] else { continue };
        by_task
            .entry(t.clone())
            .or_default()
            .entry(l.clone())
            .or_default()
            .push((b as f64, v, lo[i].unwrap_or(v), hi[i].unwrap_or(v)));
    }
    let mut tasks: Vec<String> = by_task.keys().cloned().collect();
    tasks.sort_by_key(|t| task_order(t));
    let mut out = Vec::new();
    for t in tasks {
        let mut labels: Vec<(String, Points)> =
            by_task.remove(&t).unwrap_or_default().into_iter().collect();
        labels.sort_by_key(|(l, _)| crate::label::label_order(l));
        let lines = labels
            .into_iter()
            .map(|(label, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line { label, points }
            })
            .collect();
        let references = bitfit
            .get(&t)
            .map(|v| vec![("BitFit (median)".to_string(), *v)])
            .unwrap_or_default();
        out.push((
            format!("score_vs_budget_{t}"),
            LinePlot {
                title: format!(
                    "{}: {} vs budget (median, band = min–max over seeds)",
                    task_display(&t),
                    metric.name()
                ),
                x_desc: "parameter budget (log scale)".into(),
                y_desc: format!("{} × 100", metric.name()),
                log_x: true,
                integer_x: false,
                lines,
                references,
                bands: true,
            },
        ));
    }
    Ok(out)
}

/// The layer profile plot (kept fraction per layer for each searched method), if any searched
/// run has per-layer modules.
pub fn layer_plot(sweep: &Sweep, budgets: &[i64]) -> Result<Option<LinePlot>> {
    let mut lines = Vec::new();
    for label in labels_in_group(&sweep.runs, "searched")? {
        if label.contains(" [") {
            continue;
        }
        let b = chosen_budget(&sweep.runs, &label, budgets)?;
        let df = layer_profile(&sweep.modules, &label, b)?;
        let layers = i64_values(&df, "layer")?;
        let values = f64_values(&df, "value")?;
        let points: Vec<(f64, f64, f64, f64)> = layers
            .into_iter()
            .zip(values)
            .filter_map(|(l, v)| Some((l? as f64, v?, v?, v?)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let name = match b {
            Some(b) => format!("{label} ({})", humanize(b as f64)),
            None => label,
        };
        lines.push(Line {
            label: name,
            points,
        });
    }
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(LinePlot {
        title: "Kept fraction of PET entries by layer (mean over module types, tasks, seeds)"
            .into(),
        x_desc: "layer".into(),
        y_desc: "fraction kept".into(),
        log_x: false,
        integer_x: true,
        lines,
        references: vec![],
        bands: false,
    }))
}

/// Draws every figure the sweep supports into `out` (PNG + SVG each).
pub fn draw_figures(
    sweep: &Sweep,
    out: &Path,
    budgets: &[i64],
    metric: &Metric,
) -> Result<FigureSet> {
    let mut set = FigureSet::default();
    for (stem, caption, grid) in heat_grids(sweep, budgets, &mut set.skipped)? {
        set.figures
            .push(render(&grid, out, &stem, &caption, HEATMAP_SIZE)?);
    }
    let plots = score_plots(sweep, metric)?;
    if plots.is_empty() {
        set.skipped
            .push("score_vs_budget_<task>: no searched runs with a budget".to_string());
    }
    for (stem, plot) in plots {
        set.figures
            .push(render(&plot, out, &stem, &plot.title, LINE_SIZE)?);
    }
    match layer_plot(sweep, budgets)? {
        Some(plot) => {
            set.figures
                .push(render(&plot, out, "layer_profile", &plot.title, LINE_SIZE)?)
        }
        None => set
            .skipped
            .push("layer_profile: no searched runs with per-layer modules".to_string()),
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_middle() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(0.5), RGBColor(33, 144, 141));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
    }

    #[test]
    fn colour_scale_top() {
        assert_eq!(colour_max([0.03, 0.01].into_iter()), 0.05);
        assert_eq!(colour_max([0.1].into_iter()), 0.1);
        assert_eq!(colour_max([0.6, f64::NAN].into_iter()), 1.0);
        assert_eq!(colour_max(std::iter::empty()), 0.01);
    }

    #[test]
    fn row_labels_cover_every_module_type() {
        for t in petnas_core::ModuleType::ALL {
            assert_ne!(module_row_label(t.as_str()), "?");
            assert!(BIAS_ROWS.contains(&t.as_str()));
        }
    }
}
