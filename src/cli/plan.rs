//! The reading commands of the manifest and the plan: `validate` and `plan`.

use std::io;

use super::{CommandResult, Failure, PlanArgs, PlanFormat, Session};
use crate::backend::Backend;
use crate::error::ExitStatus;
use crate::model::lifecycle::Refresh;
use crate::model::plan::Plan;
use crate::model::planfile::PlanFile;
use crate::model::state::{Origin, State, TokenRecord};
use crate::ops::Ui;
use crate::ops::plan::{
    check_budget, check_refresh, check_verified, plan_for, warn_if_all_orphaned,
};
use crate::render;

/// Longest Markdown plan, to fit a pull-request comment (GitHub allows 65,536).
const MARKDOWN_LIMIT: usize = 60_000;

impl Session<'_, '_> {
    pub(super) fn validate(&mut self) -> CommandResult {
        let loaded = self.load_manifest()?;
        let tokens = &loaded.manifest.tokens;
        let mut accounts: Vec<u64> = tokens.iter().map(|a| a.account_id).collect();
        accounts.sort_unstable();
        accounts.dedup();
        writeln!(
            self.io.stdout,
            "{} {}: {} tokens in {} sub-accounts.",
            self.style.good("The manifest is valid."),
            self.cli.manifest.display(),
            tokens.len(),
            accounts.len()
        )?;
        Ok(ExitStatus::Success)
    }

    pub(super) fn plan(&mut self, args: &PlanArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store_for(Some(&loaded.manifest))?;
        let reading = self.load_state_for_reading(&*store)?;
        let (state, under_way) = (reading.state, reading.in_progress);
        let targeting = self.targeting(&args.targeting);
        let refresh = match args.refresh.refresh {
            true => Some(self.refresh_tokens(
                &args.refresh.connect,
                args.refresh.secrets_out.as_deref(),
                args.refresh.refresh_timeout,
                &loaded,
                state.as_ref(),
            )?),
            false => None,
        };
        let stampede = refresh.as_ref().and_then(Refresh::stampede);
        let plan = plan_for(
            &loaded.manifest,
            state.as_ref(),
            &targeting,
            refresh.as_ref(),
            stampede.is_some(),
            self.env.clock.epoch_seconds(),
        )
        .mark_in_progress(&under_way);
        let manifest_name = self.cli.manifest.display().to_string();
        warn_if_all_orphaned(&plan, &manifest_name, self);
        let configured = self.configured_sinks(Some(&loaded), args.refresh.secrets_out.as_deref());
        // A refresh reads the sinks anyway; a plain plan stays local.
        let (successors, homes) = crate::ops::sinks::consumers(
            &configured,
            &plan,
            state.as_ref(),
            &self.env.vars,
            args.refresh.refresh,
        );
        let extras = render::Extras {
            refresh: refresh.as_ref(),
            state: state.as_ref(),
            homes: Some(&homes),
            successors: &successors,
        };
        match args.output {
            PlanFormat::Text => {
                render::plan_text(&plan, self.style, self.io.stdout)?;
                render::lifecycle_text(&extras, self.style, self.io.stdout)?;
            }
            PlanFormat::Json => {
                render::plan_json(&plan, args.budget.max_creates, &extras, self.io.stdout)?
            }
            PlanFormat::Markdown => {
                render::plan_markdown(&plan, &extras, MARKDOWN_LIMIT, self.io.stdout)?
            }
        }
        if args.diff {
            if args.output == PlanFormat::Text {
                self.preview_diff(&*store, state.as_ref(), &plan)?;
            } else {
                self.warn("--diff is shown with --output text only; the document stays parseable");
            }
        }
        check_budget(&plan, args.budget.max_creates)?;
        if let Some(refresh) = &refresh {
            check_refresh(refresh, &loaded.manifest, false)?;
            // A drift check that verified nothing fails, whatever the plan.
            check_verified(refresh)?;
        }
        // Only a plan that passed its checks is saved to be applied.
        if let Some(out) = &args.out {
            let file = PlanFile::new(&plan, &loaded.bytes, state.as_ref());
            crate::fsutil::write_atomic(out, file.to_json().as_bytes(), 0o644).map_err(|err| {
                Failure::new(format!("cannot write plan file {}: {err}", out.display()))
            })?;
            let saved = format!(
                "Saved the plan to {0}. To apply exactly this plan: tokenctl apply {0}",
                out.display()
            );
            if args.output == PlanFormat::Text {
                writeln!(self.io.stdout, "\n{saved}")?;
            } else {
                writeln!(self.io.stderr, "{saved}")?;
            }
        }
        let revoked = refresh.as_ref().is_some_and(|r| r.counts().revoked > 0);
        Ok(
            if args.detailed_exitcode && (plan.has_changes() || revoked) {
                ExitStatus::Changes
            } else {
                ExitStatus::Success
            },
        )
    }

    /// Shows the state document as it would be after the plan, with ids
    /// that only the API can tell marked as such.
    fn preview_diff(
        &mut self,
        store: &dyn Backend,
        state: Option<&State>,
        plan: &Plan,
    ) -> io::Result<()> {
        const UNKNOWN_ID: u64 = u64::MAX;
        let before = state.map(State::to_json).unwrap_or_default();
        let mut after = state.cloned().unwrap_or_else(|| State::new("(new)".into()));
        if plan.has_changes() {
            after.serial += 1;
        }
        for address in plan.creates() {
            after.record_created(TokenRecord::new(
                address,
                UNKNOWN_ID,
                None,
                Origin::Created,
                None,
            ));
        }
        let after = after.to_json().replace(
            &format!("\"id\": {UNKNOWN_ID}"),
            "\"id\": (known after apply)",
        );
        writeln!(self.io.stdout)?;
        render::state_diff(
            &store.location(),
            &before,
            &after,
            self.style,
            self.io.stdout,
        )
    }
}
