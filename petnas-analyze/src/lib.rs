//! `petnas-analyze`: aggregation of `petnas` run records into the tables, figures and report of
//! Lawton et al. (2023), "Neural Architecture Search for Parameter-Efficient Fine-tuning of Large
//! Pre-trained Language Models" (Findings of ACL 2023), Section 4.
//!
//! Data flow: [`load`] walks a runs directory and flattens every
//! [`RunRecord`](petnas_core::RunRecord) into two polars frames (runs, modules); [`aggregate`]
//! holds the lazy queries (medians over seeds, kept fractions per module type × layer);
//! [`tables`], [`figures`] and [`report`] format them. Labels of methods come from one function,
//! [`label::method_label`]. No candle here: the run record is the whole contract.
#![warn(missing_docs)]

pub mod aggregate;
pub mod bench;
pub mod cost;
pub mod error;
pub mod figures;
pub mod label;
pub mod load;
pub mod report;
pub mod synth;
pub mod tables;

pub use aggregate::Metric;
pub use error::{AnalyzeError, Result};
pub use label::{method_label, MethodLabel};
pub use load::{load_sweep, Sweep};
