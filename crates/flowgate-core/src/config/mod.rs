//! Pipeline files: model, loading with spans, interpolation, diagnostics.

pub mod diagnostic;
pub mod interpolate;
pub mod load;
pub mod model;

pub use diagnostic::Diagnostic;
pub use interpolate::Variables;
pub use load::{LoadOptions, Loaded, load_file, load_file_text, load_str};
pub use model::PipelineFile;

/// The JSON Schema of pipeline files, for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineFile)).unwrap_or_default()
}
