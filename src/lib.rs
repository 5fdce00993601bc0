//! tokenctl: declarative management of Logz.io sub-account API tokens.
//!
//! The layers, from the inside out (see ARCHITECTURE.md):
//! - [`model`]: the pure core (manifest, state, plan, journal fold), a
//!   crate of its own (`crates/model`) so that the compiler keeps it free
//!   of effects;
//! - [`ops`]: the operations, sequenced over the effects;
//! - the effects, each behind a small interface: [`api`] (the Logz.io
//!   client), [`backend`] (where the state, journal and lock live),
//!   [`sink`] (where secrets go);
//! - [`render`]: text, JSON and Markdown for people and pipelines;
//! - [`cli`]: the front door, the only owner of stdout and stderr.

pub mod api;
pub mod backend;
pub mod cli;
pub mod error;
mod failpoint;
mod fsutil;
pub mod lineage;
pub use tokenctl_model as model;
pub mod net;
pub mod ops;
pub mod redact;
mod render;
pub mod secret;
pub mod sink;
pub mod time;
pub mod vars;
