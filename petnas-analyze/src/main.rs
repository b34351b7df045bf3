//! `petnas-analyze`: tables, figures, reports and exports from a directory of run records.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use petnas_analyze::{figures, load_sweep, report, tables, Metric};

#[derive(Parser)]
#[command(
    name = "petnas-analyze",
    version,
    about = "Aggregate petnas run records into tables, figures and reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Median-over-seeds score tables (Table 1 and Table 2 layouts) as markdown on stdout.
    Tables {
        /// The runs directory (`<runs>/**/record.json`, up to 3 levels deep).
        #[arg(long)]
        runs: PathBuf,
        /// Also write tables.md, table1.csv and table2.csv here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `primary` (each task's GLUE metric) or accuracy, f1, mcc, pearson, spearman.
        #[arg(long, default_value = "primary")]
        metric: String,
    },
    /// Heat maps, score-vs-budget curves and the layer profile (PNG + SVG).
    Figures {
        /// The runs directory.
        #[arg(long)]
        runs: PathBuf,
        /// Output directory for the figures.
        #[arg(long)]
        out: PathBuf,
        /// Budget shown in heat maps and profiles, as in sweep configs: 5000, 5k, 2.5k, 3.4M.
        /// Repeat it for methods of different spaces (`--budget 5k --budget 270912`): each method
        /// shows the first one it has runs at. Default: each method's most common budget.
        #[arg(long = "budget", value_parser = parse_budget_arg)]
        budget: Vec<i64>,
        /// Metric of the score-vs-budget curves.
        #[arg(long, default_value = "primary")]
        metric: String,
    },
    /// A README.md with tables, figures, provenance and findings, plus the exported frames.
    Report {
        /// The runs directory.
        #[arg(long)]
        runs: PathBuf,
        /// Output directory, e.g. reports/NAME.
        #[arg(long)]
        out: PathBuf,
        /// Budget shown in heat maps and profiles, as in sweep configs: 5000, 5k, 2.5k, 3.4M.
        /// Repeat it for methods of different spaces (`--budget 5k --budget 270912`): each method
        /// shows the first one it has runs at. Default: each method's most common budget.
        #[arg(long = "budget", value_parser = parse_budget_arg)]
        budget: Vec<i64>,
        /// Metric of tables and curves.
        #[arg(long, default_value = "primary")]
        metric: String,
    },
    /// The runs, modules and medians frames as parquet and CSV.
    Export {
        /// The runs directory.
        #[arg(long)]
        runs: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Metric of the medians frame.
        #[arg(long, default_value = "primary")]
        metric: String,
    },
    /// Times load + aggregation on a synthetic sweep; prints one JSON line.
    Bench {
        /// Number of synthetic records.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Keep the synthetic sweep in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn load(runs: &Path) -> anyhow::Result<petnas_analyze::Sweep> {
    let sweep =
        load_sweep(runs).with_context(|| format!("loading runs from {}", runs.display()))?;
    for (p, e) in &sweep.unreadable {
        eprintln!("warning: skipped unreadable record {}: {e}", p.display());
    }
    eprintln!(
        "read {} run record(s) from {}{}",
        sweep.records,
        runs.display(),
        if sweep.unreadable.is_empty() {
            String::new()
        } else {
            format!(", skipped {} unreadable", sweep.unreadable.len())
        }
    );
    if !sweep.failed.is_empty() {
        eprintln!(
            "note: {} failed run(s) excluded from scores: {}",
            sweep.failed.len(),
            sweep
                .failed
                .iter()
                .map(|f| f.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(sweep)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Tables { runs, out, metric } => {
            let metric = Metric::parse(&metric)?;
            let sweep = load(&runs)?;
            let t = tables::build_tables(&sweep, &metric)?;
            print!("{}", t.markdown());
            if let Some(out) = out {
                t.write(&out)
                    .with_context(|| format!("writing tables to {}", out.display()))?;
            }
        }
        Command::Figures {
            runs,
            out,
            budget,
            metric,
        } => {
            let metric = Metric::parse(&metric)?;
            let sweep = load(&runs)?;
            let set = figures::draw_figures(&sweep, &out, &budget, &metric)
                .with_context(|| format!("drawing figures into {}", out.display()))?;
            for s in &set.skipped {
                eprintln!("skipped {s}");
            }
            for f in &set.figures {
                println!("{}", f.png.display());
                println!("{}", f.svg.display());
            }
        }
        Command::Report {
            runs,
            out,
            budget,
            metric,
        } => {
            let metric = Metric::parse(&metric)?;
            let sweep = load(&runs)?;
            let r = report::write_report(&sweep, &out, &metric, &budget)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            for s in &r.figures.skipped {
                eprintln!("skipped {s}");
            }
            println!("{}", r.readme.display());
        }
        Command::Export { runs, out, metric } => {
            let metric = Metric::parse(&metric)?;
            let sweep = load(&runs)?;
            for p in report::export(&sweep, &out, &metric)? {
                println!("{}", p.display());
            }
        }
        Command::Bench { records, dir } => {
            let tmp;
            let dir = match dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir().context("creating a temporary directory")?;
                    tmp.path().to_path_buf()
                }
            };
            let times = petnas_analyze::bench::bench(&dir, records)?;
            println!("{}", serde_json::to_string(&times)?);
        }
    }
    Ok(())
}

/// `--budget` with the sweep configs' spelling (`petnas_core::prune::parse_budget`).
fn parse_budget_arg(s: &str) -> Result<i64, String> {
    let n = petnas_core::prune::parse_budget(s).map_err(|e| e.to_string())?;
    i64::try_from(n).map_err(|_| format!("budget {s} is too large"))
}
