//! Training: run configuration and presets, the optimiser, the one training loop (`session`)
//! and its tasks (`mlm`: BiGS / BERT masked-LM pretraining; `diffusion`: DiffuSSM), with the
//! evaluation helpers beside them (`cas`: the classification accuracy score; `samples`: sample
//! grids).

pub mod cas;
pub mod config;
pub mod diffusion;
pub mod mlm;
pub mod optim;
pub mod parallel;
pub mod presets;
pub mod samples;
pub mod session;

pub use config::RunConfig;
pub use mlm::Trainer;
pub use session::{Event, Outcome, TrainError};
