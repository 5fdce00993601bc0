//! The sinks of a run: opened for an apply (each runs its checks first),
//! or as readers for `resolve` and a refresh.

use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHashSet};

use super::Ui;
use crate::error::Failure;
use crate::model::address::Address;
use crate::secret::Secret;
use crate::sink::{ForApply, FoundSecret, Rescue, SecretLookup, SecretSink, SinkContext, SinkSpec};
use crate::time::SharedClock;
use crate::vars::Vars;

/// A sink of this run, with the folder its relative paths start from.
#[derive(Debug, Clone)]
pub struct ConfiguredSink {
    pub base_dir: PathBuf,
    pub spec: SinkSpec,
}

impl ConfiguredSink {
    fn context<'a>(&'a self, vars: &'a Vars) -> SinkContext<'a> {
        SinkContext {
            base_dir: &self.base_dir,
            home: vars.get("HOME").map(Path::new),
            vars,
        }
    }
}

/// Opens every sink and runs its checks, so that a sink that would refuse
/// a secret does so before anything is created.
pub fn open(
    sinks: &[ConfiguredSink],
    vars: &Vars,
    rescue: &Rescue,
    creates: &[Address],
    predecessors: &FxHashMap<Address, u64>,
    clock: &SharedClock,
) -> Result<Vec<Box<dyn SecretSink>>, Failure> {
    let apply = ForApply {
        rescue_dir: rescue.dir(),
        creates,
        predecessors,
        clock,
    };
    sinks
        .iter()
        .map(|sink| {
            sink.spec
                .kind()
                .open(&sink.context(vars), &apply)
                .map_err(|err| {
                    let failure = Failure::from(err);
                    let message = format!("{}; nothing was created", failure.message);
                    Failure { message, ..failure }
                })
        })
        .collect()
}

/// Where each of `addresses` has a home in the configured sinks (the fixed
/// places consumers read, which a successor replaces in place); an
/// address with none is left out.
pub fn homes(sinks: &[ConfiguredSink], addresses: &[Address]) -> Homes {
    let mut homes = Homes::default();
    for address in addresses {
        let found: Vec<Home> = sinks
            .iter()
            .filter_map(|sink| sink.spec.kind().home(address))
            .map(Home::unread)
            .collect();
        if !found.is_empty() {
            homes.insert(address.clone(), found);
        }
    }
    homes
}

pub use crate::render::{Home, Homes};

/// Returns the addresses `plan` makes a successor for, each with its
/// predecessor, and the homes of those and of the state's superseded
/// tokens, with what each home holds now: for a successor, against its
/// predecessor; for a superseded token, whether its consumers already read
/// the address's current token there. Read from files always, from
/// servers only with `remote`.
pub fn consumers(
    sinks: &[ConfiguredSink],
    plan: &crate::model::plan::Plan,
    state: Option<&crate::model::state::State>,
    vars: &Vars,
    remote: bool,
) -> (Vec<(Address, Option<u64>)>, Homes) {
    let successors: Vec<(Address, Option<u64>)> = plan
        .successions()
        .map(|c| (c.address.clone(), c.id))
        .collect();
    let mut addresses: Vec<Address> = successors.iter().map(|(a, _)| a.clone()).collect();
    addresses.extend(
        state
            .into_iter()
            .flat_map(|s| s.superseded.iter().map(|o| o.address.clone())),
    );
    let mut homes = homes(sinks, &addresses);
    let known: Vec<(Address, u64)> = successors
        .iter()
        .filter_map(|(address, id)| id.map(|id| (address.clone(), id)))
        .collect();
    // Each superseded token, with the token its address holds now.
    let superseded: Vec<(Address, u64, u64)> = state
        .into_iter()
        .flat_map(|s| {
            s.superseded.iter().filter_map(|old| {
                let current = s.token(&old.address)?;
                Some((old.address.clone(), old.id, current.id))
            })
        })
        .filter(|(address, _, _)| homes.contains_key(address))
        .collect();
    for sink in sinks {
        let kind = sink.spec.kind();
        let ctx = sink.context(vars);
        if !known.is_empty() {
            for (address, holds) in kind.read_homes(&ctx, &known, remote) {
                if let Some(home) = home_in(&mut homes, kind, &address) {
                    home.holds = Some(holds);
                }
            }
        }
        if !superseded.is_empty() {
            for (address, old, handover) in kind.read_handovers(&ctx, &superseded, remote) {
                if let Some(home) = home_in(&mut homes, kind, &address) {
                    home.handovers.push((old, handover));
                }
            }
        }
    }
    (successors, homes)
}

/// Returns the home of `address` in the sink of kind `kind`, among `homes`.
fn home_in<'h>(
    homes: &'h mut Homes,
    kind: &dyn crate::sink::SinkKind,
    address: &Address,
) -> Option<&'h mut Home> {
    let place = kind.home(address)?;
    homes
        .get_mut(address)?
        .iter_mut()
        .find(|home| home.place == place)
}

/// Removes what the sinks kept of tokens `state` shows a person dropped,
/// after an apply that went through: what was removed is noted, what could
/// not be is warned about (it stays, which is safe).
pub fn tidy(
    sinks: &[ConfiguredSink],
    vars: &Vars,
    state: &crate::model::state::State,
    ui: &mut dyn Ui,
) {
    for sink in sinks {
        match sink.spec.kind().tidy(&sink.context(vars), state) {
            Ok(removed) => {
                for file in removed {
                    ui.note(&format!(
                        "removed {file}: the kept copy of a token this state retired or forgot"
                    ));
                }
            }
            Err(err) => ui.warn(&format!("{err}; the kept copies stay")),
        }
    }
}

/// Warns, for each of `addresses` of which `reader` found nothing it
/// could read, what it could not read.
fn warn_unread(
    reader: &dyn SecretLookup,
    found: &[(Address, FoundSecret)],
    unread: Vec<(Address, String)>,
    addresses: &[&Address],
    ui: &mut dyn Ui,
) {
    let mut by_address: FxHashMap<Address, Vec<String>> = FxHashMap::default();
    for (address, why) in unread {
        by_address.entry(address).or_default().push(why);
    }
    for address in addresses {
        if found.iter().any(|(a, _)| a == *address) {
            continue;
        }
        if let Some(why) = by_address.get(*address) {
            ui.warn(&format!(
                "secret sink {}: {}",
                reader.describe(),
                why.join("; ")
            ));
        }
    }
}

/// The sinks that can read secrets back, and why others could not.
#[derive(Default)]
pub struct Readers {
    pub readers: Vec<Box<dyn SecretLookup>>,
    pub problems: Vec<String>,
}

/// Returns a reader for every sink that can read secrets back, and why any
/// of them could not be set up (say, no `VAULT_ADDR`), which need not stop
/// a search of the others.
pub fn readers(sinks: &[ConfiguredSink], vars: &Vars) -> Readers {
    let mut readers = Vec::new();
    let mut problems = Vec::new();
    for sink in sinks {
        match sink.spec.kind().reader(&sink.context(vars)) {
            Some(Ok(reader)) => readers.push(reader),
            Some(Err(err)) => problems.push(match &err.hint {
                Some(hint) => format!("{err} ({hint})"),
                None => err.to_string(),
            }),
            None => {}
        }
    }
    Readers { readers, problems }
}

/// Returns the readers a refresh or `retire --verify` uses: when no sink
/// can read back, none,
/// and every token is unverifiable without a warning per sink.
pub fn refresh_readers(sinks: &[ConfiguredSink], vars: &Vars) -> Readers {
    let found = readers(sinks, vars);
    match found.readers.is_empty() {
        true => Readers::default(),
        false => found,
    }
}

/// Returns the secrets of `wanted` tokens that some reader holds, by
/// address and id. A sink that cannot be read is warned about; its tokens
/// stay unverifiable.
pub fn readable_secrets(
    readers: &Readers,
    wanted: &[(Address, u64)],
    ui: &mut dyn Ui,
) -> Result<FxHashMap<(Address, u64), Secret>, Failure> {
    let mut secrets = FxHashMap::default();
    for problem in &readers.problems {
        ui.warn(&format!("a sink cannot be read: {problem}"));
    }
    for reader in &readers.readers {
        for warning in reader.warnings() {
            ui.warn(&warning);
        }
    }
    let wanted_set: FxHashSet<&(Address, u64)> = wanted.iter().collect();
    let mut addresses: Vec<&Address> = wanted.iter().map(|(a, _)| a).collect();
    addresses.sort();
    addresses.dedup();
    for reader in &readers.readers {
        let found: Vec<(Address, FoundSecret)> = match reader.lookup_all_noting() {
            Some(all) => {
                let (found, unread) = all.map_err(Failure::from)?;
                warn_unread(reader.as_ref(), &found, unread, &addresses, ui);
                found
            }
            // A sink that reads by id is asked for exactly the tokens wanted.
            None if reader.reads_by_id() => {
                let mut found = Vec::new();
                for (address, id) in wanted {
                    match reader.lookup_id(address, *id) {
                        Some(Ok(Some(secret))) => found.push((address.clone(), secret)),
                        Some(Ok(None)) | None => {}
                        Some(Err(err)) => {
                            ui.warn(&err.to_string());
                            break;
                        }
                    }
                }
                found
            }
            None => {
                let mut found = Vec::new();
                for address in &addresses {
                    match reader.lookup(address) {
                        Ok(list) => found.extend(list.into_iter().map(|f| ((*address).clone(), f))),
                        Err(err) => {
                            ui.warn(&err.to_string());
                            break;
                        }
                    }
                }
                found
            }
        };
        for (address, secret) in found {
            let key = (address, secret.id);
            if wanted_set.contains(&key) {
                secrets.insert(key, secret.token);
            }
        }
    }
    Ok(secrets)
}
