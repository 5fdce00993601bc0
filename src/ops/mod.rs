//! Operations: what the commands do, sequenced over the effects (the API,
//! the backend, the sinks) through their interfaces. `create` is the
//! concurrent create loop with its journal protocol, `limiter` its
//! adaptive concurrency, `refresh` the liveness checks.

pub mod create;
pub mod limiter;
pub mod refresh;
