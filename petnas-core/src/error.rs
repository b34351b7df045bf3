//! The typed error of `petnas-core`.
//!
//! Every variant says what was wrong and where: the file, the field, the module path or the
//! offending text. Binaries add their own context with `anyhow`.

use std::path::PathBuf;

/// Everything that can go wrong in `petnas-core`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Reading, writing or renaming a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed (the serde error carries line, column and field).
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file that was parsed.
        path: PathBuf,
        /// The serde error (line/column/field).
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be encoded as JSON.
    #[error("could not encode {what} as JSON: {source}")]
    JsonEncode {
        /// What was being encoded.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file could not be written or read.
    #[error("safetensors error on {path}: {message}")]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file was written by an unsupported version of this crate.
    #[error("{path}: unsupported {what} version {found} (this build reads version {supported})")]
    Version {
        /// The file.
        path: PathBuf,
        /// Which kind of file.
        what: &'static str,
        /// The version found in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// `config.json` names a `hidden_act` the encoder does not implement.
    #[error("hidden_act {name:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish)")]
    UnknownActivation {
        /// The name found.
        name: String,
    },
    /// `config.json` names a `model_type` this crate does not know.
    #[error("unsupported model_type {model_type:?}: expected one of bert, roberta, xlm-roberta, camembert")]
    UnknownFamily {
        /// The `model_type` field as found.
        model_type: String,
    },
    /// A search-space preset name is unknown.
    #[error("unknown search space {name:?}: valid presets are {valid}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The valid preset names, comma-separated.
        valid: String,
    },
    /// A module-type name is unknown.
    #[error("unknown module type {name:?}: valid names are {valid}")]
    UnknownModuleType {
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A search-space specification string could not be parsed.
    #[error("bad search-space spec {spec:?}: {reason}")]
    BadSpec {
        /// The whole specification.
        spec: String,
        /// What was wrong, quoting the offending clause.
        reason: String,
    },
    /// A search space names a module path the model does not have.
    #[error("search space {space:?} names module {path:?}, which the model does not have")]
    UnknownModule {
        /// The space name.
        space: String,
        /// The missing module path.
        path: String,
    },
    /// An architecture was made for a different model.
    #[error("architecture is for another model: {field} is {arch} in the architecture but {model} in the model config")]
    ModelMismatch {
        /// The field that differs.
        field: String,
        /// The value recorded in the architecture.
        arch: String,
        /// The value of the model config.
        model: String,
    },
    /// An architecture is internally inconsistent (mask lengths, rank indices...).
    #[error("invalid architecture at module {module:?}: {reason}")]
    InvalidArch {
        /// The module path.
        module: String,
        /// What is inconsistent.
        reason: String,
    },
    /// Two buffers that must have the same length do not.
    #[error("length mismatch for {name:?}: expected {expected} entries, got {found}")]
    LengthMismatch {
        /// The tensor name.
        name: String,
        /// The expected length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A score tensor needed for pruning is missing.
    #[error("no criterion score for PET tensor {name:?}")]
    MissingScore {
        /// The PET tensor name.
        name: String,
    },
    /// A score is NaN, so no pruning order exists.
    #[error("criterion score of {name:?} at index {index} is NaN")]
    NanScore {
        /// The PET tensor name.
        name: String,
        /// The entry index.
        index: usize,
    },
    /// A parameter budget could not be parsed.
    #[error("bad parameter budget {text:?}: {reason}")]
    BadBudget {
        /// The text given.
        text: String,
        /// What was wrong.
        reason: String,
    },
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
