//! The typed error of `petnas-analyze`: every variant names the file, directory, figure or
//! column involved. The binary adds context with `anyhow`.

use std::path::PathBuf;

use petnas_core::CoreError;

/// Everything that can go wrong while loading and aggregating run records.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A record could not be read, parsed or has an unsupported version (the core error names
    /// the file and, for JSON, serde's line and column).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A file or directory could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No record under the folder could be read.
    #[error("none of the {count} run record(s) could be read; the first: {reason}")]
    Unreadable {
        /// The first unreadable file.
        path: PathBuf,
        /// Why (names the file).
        reason: String,
        /// How many there were.
        count: usize,
    },
    /// The runs directory does not exist or is not a directory.
    #[error("runs directory {path} does not exist or is not a directory")]
    NoRunsDir {
        /// The directory given.
        path: PathBuf,
    },
    /// The runs directory holds no `record.json` (up to 3 levels deep).
    #[error("no run records (record.json, up to 3 levels deep) found under {path}")]
    NoRecords {
        /// The directory searched.
        path: PathBuf,
    },
    /// A polars query failed.
    #[error("polars error while {context}: {source}")]
    Polars {
        /// What was being computed.
        context: String,
        /// The polars error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// A metric name given on the command line is not one the records carry.
    #[error("unknown metric {name:?}: expected primary or one of {valid}")]
    UnknownMetric {
        /// The name given.
        name: String,
        /// The valid names.
        valid: String,
    },
    /// Drawing a figure failed.
    #[error("could not draw figure {figure}: {message}")]
    Plot {
        /// The figure's file stem.
        figure: String,
        /// The plotters error, as text (its type is generic over the backend).
        message: String,
    },
}

impl AnalyzeError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AnalyzeError::Io {
            path: path.into(),
            source,
        }
    }

    /// A polars error with what was being computed.
    pub fn polars(context: impl Into<String>) -> impl FnOnce(polars::error::PolarsError) -> Self {
        let context = context.into();
        move |source| AnalyzeError::Polars { context, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = AnalyzeError> = std::result::Result<T, E>;
