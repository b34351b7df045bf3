//! `petnas-analyze bench`: times loading and aggregation on a synthetic sweep, so that a
//! regression from seconds to minutes is caught.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::aggregate::{heatmap_frame, medians, HeatValue, Metric};
use crate::error::Result;
use crate::load::load_sweep;
use crate::tables::build_tables;

/// Seconds per phase of one benchmark run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchTimes {
    /// Records generated.
    pub records: usize,
    /// Module rows in the modules frame.
    pub module_rows: usize,
    /// Writing the synthetic sweep (not part of the analysis).
    pub generate_s: f64,
    /// Finding, parsing and flattening the records into frames.
    pub load_s: f64,
    /// Medians over seeds and Tables 1–2.
    pub tables_s: f64,
    /// The four heat-map frames.
    pub heatmaps_s: f64,
    /// load + tables + heat maps.
    pub total_s: f64,
}

/// Generates `n` records under `dir` and times the analysis.
pub fn bench(dir: &Path, n: usize) -> Result<BenchTimes> {
    let t = Instant::now();
    crate::synth::write_synthetic_sweep(dir, n)?;
    let generate_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let sweep = load_sweep(dir)?;
    let load_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let metric = Metric::Primary;
    let _ = medians(&sweep.runs, &metric)?;
    let tables = build_tables(&sweep, &metric)?;
    let _ = tables.markdown();
    let tables_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for (label, what) in [
        ("S-BitFit", HeatValue::BiasFraction),
        ("U-BitFit", HeatValue::BiasFraction),
        ("S-MaM", HeatValue::LoraRank),
        ("U-MaM", HeatValue::LoraEntries),
    ] {
        let _ = heatmap_frame(&sweep.modules, label, None, what)?;
    }
    let heatmaps_s = t.elapsed().as_secs_f64();
    Ok(BenchTimes {
        records: n,
        module_rows: sweep.modules.height(),
        generate_s,
        load_s,
        tables_s,
        heatmaps_s,
        total_s: load_s + tables_s + heatmaps_s,
    })
}
