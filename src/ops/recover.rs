//! A journal left behind: folded into the state by a command that holds
//! the lock, or overlaid for one that only reads while an apply runs.

use super::Ui;
use crate::backend::{Backend, Holder};
use crate::error::Failure;
use crate::model::address::Address;
use crate::model::journal::FoldSummary;
use crate::model::state::State;

/// Loads the state for a command holding the lock, first recording in it
/// any journal an interrupted apply left behind.
pub fn load_locked(
    store: &dyn Backend,
    host: Option<&str>,
    ui: &mut dyn Ui,
) -> Result<Option<State>, Failure> {
    let state = store.load()?;
    let Some((stored, summary)) = store.recover(state.as_ref(), host)? else {
        return Ok(state);
    };
    note_recovered(&summary, ui);
    Ok(stored)
}

/// The state as a reading command sees it.
pub struct ForReading {
    pub state: Option<State>,
    /// The creates an apply running right now has under way.
    pub in_progress: Vec<Address>,
}

/// Loads the state for reading. A journal left by a crash is recorded
/// first; one that a running apply is writing is only overlaid.
pub fn load_for_reading(
    store: &dyn Backend,
    holder: &Holder,
    host: Option<&str>,
    ui: &mut dyn Ui,
) -> Result<ForReading, Failure> {
    let reading = store.read(holder, host)?;
    if let Some(summary) = &reading.recovered {
        note_recovered(summary, ui);
    }
    if let Some(holder) = &reading.running {
        ui.warn(&format!(
            "an apply is running ({holder}); what this shows includes what its journal has recorded so far, and its creates under way show as in progress"
        ));
    }
    Ok(ForReading {
        state: reading.state,
        in_progress: reading.in_progress,
    })
}

fn note_recovered(summary: &FoldSummary, ui: &mut dyn Ui) {
    ui.note(&format!(
        "recorded the journal of an interrupted apply in the state: {} created, {} failed, {} in doubt",
        summary.created, summary.failed, summary.in_doubt
    ));
}
