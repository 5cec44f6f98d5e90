//! Training: run configuration and presets, the optimiser, and the loop that fills a run
//! directory.

pub mod config;
pub mod diffusion;
pub mod optim;
pub mod parallel;
pub mod presets;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::{Event, Outcome, TrainError, Trainer};
