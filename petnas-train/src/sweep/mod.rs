//! `petnas-train sweep`: the whole study from one TOML file, resumable and shardable.
//!
//! Layout of a sweep directory:
//! ```text
//! <out>/sweep.toml          the config as given (a copy)
//! <out>/plan.json           the planned runs (id, spec hash)
//! <out>/runs/<run-id>/      one folder per finished run: record.json, architecture.json, ...
//! <out>/index.jsonl         one record per line, rebuilt atomically after every run
//!                           (index.<K>-of-<N>.jsonl for shard K of N)
//! <out>/sweep.log           tracing log
//! ```
//! A run counts as done when `runs/<id>/record.json` exists with the planned spec's hash. Run
//! folders appear by rename only when complete, so `kill -9` at any moment loses nothing finished
//! and leaves only `.partial-*` folders, which analysis ignores and the next start removes.

mod config;
mod execute;
mod plan;
mod store;

pub use config::*;
pub use execute::*;
pub use plan::*;
pub use store::*;
