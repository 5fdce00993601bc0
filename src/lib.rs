//! tokenctl: declarative management of Logz.io sub-account API tokens.
//!
//! The core is pure — [`manifest`] parses, [`plan`] diffs, [`render`]
//! writes — and the effects sit at the edges behind small interfaces:
//! [`api`] (the Logz.io client), [`store`] (the state file), [`sink`]
//! (where secrets go). [`apply`] sequences them; [`cli`] is the front door.

pub mod address;
pub mod api;
pub mod apply;
pub mod backend;
pub mod cli;
pub mod error;
mod failpoint;
mod fsutil;
pub mod journal;
pub mod lifecycle;
pub mod lock;
pub mod manifest;
pub mod plan;
pub mod planfile;
pub mod render;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod state;
pub mod store;
