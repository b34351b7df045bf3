//! Typed errors of the training library; the binary adds context with `anyhow`.

use std::path::PathBuf;

/// What went wrong while loading a model, data or an architecture, or while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A petnas-core rule was violated (bad budget, architecture, record...).
    #[error(transparent)]
    Core(#[from] petnas_core::CoreError),
    /// A GLUE file could not be read.
    #[error(transparent)]
    Glue(#[from] crate::glue::GlueError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model folder lacks a file.
    #[error("model folder {dir}: missing {file} ({hint})")]
    MissingModelFile {
        /// The folder.
        dir: PathBuf,
        /// The missing file's name.
        file: String,
        /// What to do about it.
        hint: String,
    },
    /// A tensor the config calls for is not in the weights file.
    #[error("{file}: missing tensor `{name}` (config.json describes a {family} model with {layers} layers; is this the right weights file?)")]
    MissingTensor {
        /// The weights file.
        file: PathBuf,
        /// The tensor's HF name.
        name: String,
        /// Model family from config.json.
        family: String,
        /// Layer count from config.json.
        layers: usize,
    },
    /// A weight does not have the shape config.json implies.
    #[error("{file}: tensor `{name}` has shape {found:?} but config.json implies {expected:?} (hidden_size / intermediate_size / vocab_size mismatch?)")]
    ShapeMismatch {
        /// The weights file.
        file: PathBuf,
        /// The tensor's HF name.
        name: String,
        /// Shape implied by config.json.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// tokenizer.json
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The training loss became NaN or infinite.
    #[error("training diverged: loss is {loss} at step {step} (lower the learning rate?)")]
    Diverged {
        /// The step at which it happened.
        step: usize,
        /// The loss value.
        loss: f32,
    },
    /// Anything else that a user can fix, in words.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Maps an I/O error to one naming its file.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
