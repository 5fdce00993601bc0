//! The pure core: what the manifest says, what the state records, the plan
//! between them, saved plans, the journal's records and their fold, and
//! the lifecycle's planning. Nothing here touches a file, the network, the
//! clock or the environment: time and findings come in as arguments, so
//! every function is tested from strings and values.

pub mod address;
pub mod journal;
pub mod lifecycle;
pub mod manifest;
pub mod plan;
pub mod planfile;
pub mod schema;
pub mod state;
