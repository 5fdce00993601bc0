//! The integration tests, in one binary: each module covers one area, and
//! the helpers in `support` compile once for all of them.

mod support;

mod action;
mod api;
mod cli;
mod faults;
mod gitops;
mod hardening;
mod lifecycle;
mod ops;
mod output;
mod pipeline;
mod postgres;
mod sinks;
mod storage;
mod trust;
