//! Typed errors of the tuner.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;

/// A [`super::TuningConfig`] or [`super::MixedPrecisionConfig`] that cannot
/// be used.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigError {
    /// `config_set` is empty.
    EmptyConfigSet,
    /// A `MixedPrecisionConfig` has an empty `dtype` list.
    EmptyDtype,
    /// A node-name pattern is not a valid regex.
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex crate's message.
        message: String,
    },
    /// A tolerance that is negative, NaN or infinite.
    InvalidTolerance {
        /// The value given.
        value: f64,
    },
    /// `max_trials` is 0: not even the all-low trial could run.
    ZeroMaxTrials,
    /// An override names a node the graph does not have.
    UnknownOverrideNode {
        /// The name.
        name: String,
    },
    /// A strategy name that is not `default`, `sequential` or `opwise`.
    UnknownStrategy {
        /// The name.
        name: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyConfigSet => f.write_str("config_set is empty"),
            ConfigError::EmptyDtype => {
                f.write_str("a mixed-precision config has an empty dtype list")
            }
            ConfigError::BadRegex { pattern, message } => {
                write!(f, "invalid node-name regex {pattern:?}: {message}")
            }
            ConfigError::InvalidTolerance { value } => {
                write!(f, "tolerance must be finite and >= 0, got {value}")
            }
            ConfigError::ZeroMaxTrials => f.write_str("max_trials must be at least 1"),
            ConfigError::UnknownOverrideNode { name } => {
                write!(
                    f,
                    "override names node {name:?}, which the graph does not have"
                )
            }
            ConfigError::UnknownStrategy { name } => write!(
                f,
                "unknown strategy {name:?} (expected default, sequential or opwise)"
            ),
        }
    }
}

impl Error for ConfigError {}

/// Why `autotune` could not return a model.
///
/// `E` is the evaluation function's error type ([`Infallible`] for the
/// plain `autotune`).
#[derive(Debug)]
pub enum TuneError<E = Infallible> {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A relative tolerance needs a baseline > 0 (a loss of x% of a
    /// non-positive number is meaningless); use `Tolerance::Absolute`.
    NonPositiveBaseline {
        /// The fp32 baseline metric.
        baseline: f64,
    },
    /// The fp32 baseline metric is NaN or infinite.
    NonFiniteBaseline {
        /// The fp32 baseline metric.
        baseline: f64,
    },
    /// Compiling or running the model failed (e.g. calibration inputs that
    /// do not match the graph).
    Model {
        /// What the tuner was doing.
        during: String,
        /// The model's error.
        source: Box<dyn Error + Send + Sync + 'static>,
    },
    /// The evaluation function failed.
    Eval(E),
}

impl<E: fmt::Display> fmt::Display for TuneError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TuneError::Config(e) => write!(f, "invalid tuning config: {e}"),
            TuneError::NonPositiveBaseline { baseline } => write!(
                f,
                "the fp32 baseline metric is {baseline}; a relative tolerance needs a baseline > 0 (use an absolute tolerance)"
            ),
            TuneError::NonFiniteBaseline { baseline } => {
                write!(
                    f,
                    "the fp32 baseline metric is {baseline}, not a finite number"
                )
            }
            TuneError::Model { during, source } => write!(f, "{during}: {source}"),
            TuneError::Eval(e) => write!(f, "evaluation function failed: {e}"),
        }
    }
}

impl<E: Error + 'static> Error for TuneError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TuneError::Config(e) => Some(e),
            TuneError::Model { source, .. } => Some(source.as_ref()),
            TuneError::Eval(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<ConfigError> for TuneError<E> {
    fn from(e: ConfigError) -> Self {
        TuneError::Config(e)
    }
}

impl<E> TuneError<E> {
    pub(crate) fn model(
        during: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> Self {
        TuneError::Model {
            during: during.into(),
            source: source.into(),
        }
    }
}
