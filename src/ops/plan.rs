//! What plan and apply share: the plan of a manifest against a state, and
//! the checks a plan must pass before anything is created.

use super::Ui;
use crate::error::Failure;
use crate::model::lifecycle::{self, Refresh};
use crate::model::manifest::Manifest;
use crate::model::plan::{self, Plan, Targeting};
use crate::model::state::State;

/// Returns the plan of `manifest` against `state`: the creates, orphans
/// and creates in doubt, narrowed by `targeting`, with the rotations and
/// re-creations the lifecycle asks for (re-creations held back with
/// `hold_back`, when a refresh looks like a stampede), tokens' ages taken
/// at `now` (epoch seconds).
pub fn plan_for(
    manifest: &Manifest,
    state: Option<&State>,
    targeting: &Targeting,
    refresh: Option<&Refresh>,
    hold_back: bool,
    now: i64,
) -> Plan {
    lifecycle::plan_successors(
        plan::plan(&manifest.tokens, state).restrict(targeting),
        state,
        &manifest.lifecycle,
        now,
        refresh,
        hold_back,
    )
}

/// Fails on what a refresh found that must stop a plan: a token that
/// answers for another account, or a stampede of revocations that would be
/// re-created (unless `force`).
pub fn check_refresh(refresh: &Refresh, manifest: &Manifest, force: bool) -> Result<(), Failure> {
    let counts = refresh.counts();
    if counts.misdelivered > 0 {
        return Err(Failure::new(format!(
            "{} token(s) answer for another account than their address says (see above)",
            counts.misdelivered
        ))
        .hint("the secret recorded for that address belongs elsewhere: check the sink's records and the Logz.io UI before anything else"));
    }
    if let Some(stampede) = refresh.stampede()
        && manifest.lifecycle.recreates_any()
        && !force
    {
        return Err(Failure::new(format!(
            "{} of {} tokens that answered came back revoked; that many looks like a wrong region, a wrong API URL or a broken proxy, so no re-creation is planned",
            stampede.revoked, stampede.checked
        ))
        .hint("check the region and the network; if the tokens really were revoked, run `tokenctl apply --refresh --force`"));
    }
    Ok(())
}

/// Fails a refresh that verified too little to be a check: none of the
/// tokens it asked about could be verified (all unknown or unverifiable),
/// or more than a third of those it could ask gave no definite answer. A
/// drift check that checked nothing must not pass.
pub fn check_verified(refresh: &Refresh) -> Result<(), Failure> {
    let counts = refresh.counts();
    let verified = counts.alive + counts.revoked + counts.misdelivered;
    let asked = verified + counts.unknown;
    let total = asked + counts.unverifiable;
    if total == 0 {
        return Ok(());
    }
    if verified == 0 {
        return Err(Failure::new(format!(
            "the refresh verified none of the {total} token(s): {} unknown, {} unverifiable; nothing was checked",
            counts.unknown, counts.unverifiable
        ))
        .hint("unknown: the API gave no definite answer (see above; try again later). Unverifiable: no sink holds a secret with the fingerprint recorded at creation; configure a sink that can read secrets back"));
    }
    if counts.unknown * 3 > asked {
        return Err(Failure::new(format!(
            "the refresh could not verify {} of the {asked} token(s) it asked about (no definite answer); a check that verified so few is not a pass",
            counts.unknown
        ))
        .hint("see the unknown tokens above and try again later; a network problem or a rate limit often explains it"));
    }
    Ok(())
}

/// Refuses a plan with more creates than the budget.
pub fn check_budget(plan: &Plan, max_creates: usize) -> Result<(), Failure> {
    let creates = plan.summary().create;
    if creates > max_creates {
        return Err(Failure::new(format!(
            "the plan creates {creates} tokens, more than the safety budget of {max_creates}; nothing was sent"
        ))
        .hint(format!("if this many tokens are intended, pass --max-creates {creates}")));
    }
    Ok(())
}

/// Warns when the manifest keeps none of the state's tokens.
pub fn warn_if_all_orphaned(plan: &Plan, manifest_name: &str, ui: &mut dyn Ui) {
    let summary = plan.summary();
    if summary.orphaned > 0 && summary.unchanged == 0 && summary.in_doubt == 0 {
        ui.warn(&format!(
            "the manifest keeps none of the {} token(s) in the state: every one is orphaned. \
             Tokens cannot be deleted through the API, so nothing is revoked, but check that \
             `tokens` in {manifest_name} is the list you meant",
            summary.orphaned,
        ));
    }
}
