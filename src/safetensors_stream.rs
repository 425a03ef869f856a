//! Streaming reader and writer of the safetensors format.

/// Errors of [`convert_file`].
#[derive(Debug)]
pub enum ConvertError {}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for ConvertError {}
