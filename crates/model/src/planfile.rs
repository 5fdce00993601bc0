//! Saved plans: what `plan -o` writes and `apply PLANFILE` checks.
//!
//! A plan file pins the inputs it was made from (the state's lineage and
//! serial, a digest of the manifest, the tool version), so applying it later
//! does exactly what was reviewed, or refuses. It never holds a secret.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::address::Address;
use crate::plan::Plan;
use crate::state::{State, TOOL_VERSION};

/// The plan file format version.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// A saved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFile {
    pub format_version: u32,
    pub tool_version: String,
    /// `sha256:` digest of the manifest's bytes.
    pub manifest_digest: String,
    /// The state the plan was made against; `None` when there was none.
    pub state: Option<StateRef>,
    /// The addresses the plan creates.
    pub creates: Vec<Address>,
}

/// Which state, at which write, a plan was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    pub lineage: String,
    pub serial: u64,
}

/// Why a saved plan cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanFileError {
    #[error("the plan file is not a tokenctl plan: {0}")]
    Unreadable(String),
    #[error("the plan was made by tokenctl {plan}, this is tokenctl {tool}")]
    ToolVersion { plan: String, tool: String },
    #[error("the plan was made for another state (lineage {plan}, this state has {state})")]
    Lineage { plan: String, state: String },
    #[error("the plan is stale: the state changed since it was made ({0})")]
    Stale(String),
    #[error("the manifest changed since the plan was made")]
    Manifest,
}

impl PlanFileError {
    /// Returns what the user can do about it.
    /// Returns what to do about the refusal.
    pub fn advice(&self) -> &'static str {
        match self {
            PlanFileError::Unreadable(_) => "pass a file written by `tokenctl plan -o FILE`",
            PlanFileError::ToolVersion { .. } => {
                "make a new plan with this tokenctl, or apply with the version that made it"
            }
            PlanFileError::Lineage { .. } => {
                "check --state: the plan belongs to another state file; make a new plan against this one"
            }
            PlanFileError::Stale(_) => {
                "another apply or command wrote the state; run `tokenctl plan -o FILE` again and review the new plan"
            }
            PlanFileError::Manifest => "run `tokenctl plan -o FILE` again and review the new plan",
        }
    }
}

/// Returns the `sha256:` digest of a manifest's bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl PlanFile {
    /// Returns the saved form of `plan`, made from these inputs.
    pub fn new(plan: &Plan, manifest_bytes: &[u8], state: Option<&State>) -> Self {
        PlanFile {
            format_version: PLAN_FORMAT_VERSION,
            tool_version: TOOL_VERSION.to_string(),
            manifest_digest: digest(manifest_bytes),
            state: state.map(|s| StateRef {
                lineage: s.lineage.clone(),
                serial: s.serial,
            }),
            creates: plan.creates(),
        }
    }

    /// Returns the file's text.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses a plan file.
    pub fn from_json(text: &str) -> Result<Self, PlanFileError> {
        let file: PlanFile =
            serde_json::from_str(text).map_err(|e| PlanFileError::Unreadable(e.to_string()))?;
        if file.format_version != PLAN_FORMAT_VERSION {
            return Err(PlanFileError::Unreadable(format!(
                "plan format {} is not supported",
                file.format_version
            )));
        }
        // A plan never creates one address twice; a file that does was
        // edited or damaged, and applying it would send a create twice.
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = file.creates.iter().find(|a| !seen.insert(*a)) {
            return Err(PlanFileError::Unreadable(format!(
                "it lists the create of {twice} more than once"
            )));
        }
        Ok(file)
    }

    /// Checks that the plan was made from these very inputs.
    pub fn check(&self, manifest_bytes: &[u8], state: Option<&State>) -> Result<(), PlanFileError> {
        if self.tool_version != TOOL_VERSION {
            return Err(PlanFileError::ToolVersion {
                plan: self.tool_version.clone(),
                tool: TOOL_VERSION.to_string(),
            });
        }
        match (&self.state, state) {
            (Some(planned), Some(current)) if planned.lineage != current.lineage => {
                return Err(PlanFileError::Lineage {
                    plan: planned.lineage.clone(),
                    state: current.lineage.clone(),
                });
            }
            (Some(planned), Some(current)) if planned.serial != current.serial => {
                return Err(PlanFileError::Stale(format!(
                    "serial {} then, {} now",
                    planned.serial, current.serial
                )));
            }
            (None, Some(current)) => {
                return Err(PlanFileError::Stale(format!(
                    "there was no state then, now there is one at serial {}",
                    current.serial
                )));
            }
            (Some(_), None) => {
                return Err(PlanFileError::Stale("the state file is gone".into()));
            }
            _ => {}
        }
        if self.manifest_digest != digest(manifest_bytes) {
            return Err(PlanFileError::Manifest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;

    fn saved(state: Option<&State>) -> PlanFile {
        let desired = [Address::new(1, "a")];
        PlanFile::new(&plan(&desired, state), b"manifest", state)
    }

    #[test]
    fn round_trips_and_accepts_the_same_inputs() {
        let mut state = State::new("l1".into());
        state.serial = 4;
        let file = saved(Some(&state));
        let back = PlanFile::from_json(&file.to_json()).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.check(b"manifest", Some(&state)), Ok(()));
        assert_eq!(back.creates, [Address::new(1, "a")]);
    }

    #[test]
    fn refuses_each_kind_of_mismatch_distinctly() {
        let mut state = State::new("l1".into());
        state.serial = 4;
        let file = saved(Some(&state));

        let mut later = state.clone();
        later.serial = 5;
        assert!(matches!(
            file.check(b"manifest", Some(&later)),
            Err(PlanFileError::Stale(_))
        ));

        let other = State::new("l2".into());
        assert!(matches!(
            file.check(b"manifest", Some(&other)),
            Err(PlanFileError::Lineage { .. })
        ));

        assert_eq!(
            file.check(b"changed", Some(&state)),
            Err(PlanFileError::Manifest)
        );

        let mut old = file.clone();
        old.tool_version = "0.0.1".into();
        assert!(matches!(
            old.check(b"manifest", Some(&state)),
            Err(PlanFileError::ToolVersion { .. })
        ));

        assert!(matches!(
            file.check(b"manifest", None),
            Err(PlanFileError::Stale(_))
        ));
        let fresh = saved(None);
        assert!(matches!(
            fresh.check(b"manifest", Some(&state)),
            Err(PlanFileError::Stale(_))
        ));
        assert_eq!(fresh.check(b"manifest", None), Ok(()));
    }

    #[test]
    fn refuses_a_create_listed_twice() {
        let mut file = saved(None);
        file.creates = vec![
            Address::new(1, "a"),
            Address::new(2, "b"),
            Address::new(1, "a"),
        ];
        let err = PlanFile::from_json(&file.to_json()).unwrap_err();
        assert!(
            matches!(&err, PlanFileError::Unreadable(m) if m.contains("1/a more than once")),
            "{err}"
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            PlanFile::from_json("{"),
            Err(PlanFileError::Unreadable(_))
        ));
    }
}
