//! The built-in demo: UCI handwritten digits and three small MLPs trained on them.

/// Keys of the built-in models, as named in `data/digits_mlp.json`.
pub const MODEL_KEYS: [&str; 3] = ["plain", "folded_off100", "folded_off1000"];
