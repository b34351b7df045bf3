//! `petnas-core`: the search space, PET architectures and masks, the pruning criterion, pruning
//! to a budget, and run-record types for neural architecture search over parameter-efficient
//! fine-tuning (Lawton et al., 2023, "Neural Architecture Search for Parameter-Efficient
//! Fine-tuning of Large Pre-trained Language Models", Findings of ACL 2023).
//!
//! Pure Rust + serde: no candle, no polars. The training side (`petnas-train`) builds the
//! maximal architecture of a [`SearchSpace`], feeds parameters and gradients to a
//! [`CriterionAccumulator`], calls [`prune()`] and retrains the result; the analysis side
//! (`petnas-analyze`) reads [`RunRecord`]s and [`Architecture`]s.
#![warn(missing_docs)]

pub mod arch;
pub mod criterion;
pub mod error;
pub mod inventory;
pub mod io;
pub mod mask;
pub mod names;
pub mod prune;
pub mod record;
pub mod rng;
pub mod space;
pub mod task;

pub use arch::{
    Architecture, BiasArch, LoraArch, LoraKeep, Mask, ModelFingerprint, ModuleArch, ModuleCount,
    PruneMode,
};
pub use criterion::{CriterionAccumulator, CriterionKind};
pub use error::CoreError;
pub use inventory::{
    bias_delta_name, inventory, lora_u_name, lora_v_name, EncoderConfig, Family, ModuleInfo,
    ModuleKind, ModuleType,
};
pub use io::write_atomic;
pub use prune::{iterative_budgets, parse_budget, prune, RankGroup};
pub use record::{LoraInit, Recipe, Reinit, RunRecord, RunResult, RunSpec, RunStatus};
pub use rng::{counter_uniform, Rng};
pub use space::SearchSpace;
pub use task::{Metric, TaskDef, TaskKind};
