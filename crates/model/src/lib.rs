//! The pure core: what the manifest says, what the state records, the plan
//! between them, saved plans, the journal's records and their fold, and
//! the lifecycle's planning. Nothing here touches a file, the network, the
//! clock or the environment, or draws a random number: time, lineages and
//! findings come in as arguments, so every function is tested from strings
//! and values. The crate's dependencies leave no way to do otherwise, and
//! its clippy.toml refuses what the standard library would allow.

pub mod address;
pub mod journal;
pub mod lifecycle;
pub mod manifest;
pub mod plan;
pub mod planfile;
pub mod schema;
pub mod state;
