//! A new state's lineage: the one random value a state records, drawn
//! here so that the model only receives it.

use crate::model::state::State;

/// Returns a fresh random lineage.
pub fn new_lineage() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Returns an empty state with a fresh random lineage.
pub fn fresh_state() -> State {
    State::new(new_lineage())
}
