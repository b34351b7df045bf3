//! petnas-train: candle training of parameter-efficient fine-tuning (PET) encoders and the pruning
//! search of Lawton et al., "Neural Architecture Search for Parameter-Efficient Fine-tuning of Large
//! Pre-trained Language Models" (ACL Findings 2023).
//!
//! Layout: [`model`] (our BERT/RoBERTa encoder with PET modules), [`tokenize`] and [`batch`]
//! (inputs), [`glue`] and [`metrics`] (data), [`train`] (the loop), [`run`] (one run written to
//! disk), [`search`] (train maximal → prune → re-init → retrain), [`verify`] (parity with PyTorch).
#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod device;
pub mod error;
pub mod export;
pub mod glue;
pub mod metrics;
pub mod model;
pub mod options;
pub mod run;
pub mod search;
pub mod sweep;
pub mod table;
pub mod task;
pub mod tokenize;
pub mod train;
pub mod verify;

pub use error::{Result, TrainError};
