//! Per-step timing of a compiled model.

use super::dtype::DType;

/// One executed step of a profiled run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileEntry {
    /// The node name, or for an inserted cast `cast:<value>-><dtype>`.
    pub name: String,
    /// ONNX op type (`"Cast"` for inserted casts).
    pub op_type: &'static str,
    /// Whether this step is a cast the compiler inserted (not a graph node).
    pub inserted_cast: bool,
    /// Storage dtype of the step's (first) output.
    pub dtype: DType,
    /// Wall-clock time of the step in seconds.
    pub seconds: f64,
    /// Bytes of all inputs read plus outputs written.
    pub bytes: usize,
}

/// What `run_profiled` measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Steps in execution order.
    pub entries: Vec<ProfileEntry>,
    /// Wall-clock time of the whole run in seconds.
    pub total_seconds: f64,
}

impl Profile {
    /// Seconds spent in a node (0 if it did not run).
    pub fn node_seconds(&self, name: &str) -> f64 {
        self.entries
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.seconds)
            .sum()
    }

    /// Seconds spent in inserted casts.
    pub fn cast_seconds(&self) -> f64 {
        self.entries
            .iter()
            .filter(|e| e.inserted_cast)
            .map(|e| e.seconds)
            .sum()
    }
}
