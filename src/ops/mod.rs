//! Operations: what the commands do, sequenced over the effects (the API,
//! the backend, the sinks) through their interfaces, and reporting to a
//! [`Ui`] instead of a terminal. The CLI builds each operation's options,
//! calls it, and renders what it returns.
//!
//! - `apply`: plan, confirm, open the sinks, create, fold, retire;
//! - `create`: the concurrent create loop with its journal protocol, and
//!   `limiter`, its adaptive concurrency;
//! - `edit`: the state's hand edits (resolve, import, forget, retire);
//! - `plan`: the plan of a manifest against a state, and its checks;
//! - `recover`: a journal left by a dead run, folded or overlaid;
//! - `refresh`: each token's own whoami, and what it says;
//! - `sinks`: the configured sinks, opened for an apply or for reading.

pub mod apply;
pub mod create;
pub mod edit;
pub mod limiter;
pub mod plan;
pub mod recover;
pub mod refresh;
pub mod sinks;

/// Where an operation reports what the user should know while it runs.
pub trait Ui {
    /// Something the user should look at; the operation goes on.
    fn warn(&mut self, text: &str);

    /// Something the operation did that the user did not ask for by name.
    fn note(&mut self, text: &str);
}
