//! `ops::apply` in-process, against a scripted API: each test says what the
//! server answers to each create, and checks what the apply reports and
//! what the state, the journal and the sink hold afterwards.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokenctl::api::{
    AssociatedAccount, CheckError, CreateError, CreatedToken, Owner, OwnerApi, PreflightError,
    Timeouts, TokenApi, TokenCheck,
};
use tokenctl::backend::file::FileBackend;
use tokenctl::backend::{Backend, Holder};
use tokenctl::error::Failure;
use tokenctl::model::lifecycle::Refresh;
use tokenctl::model::manifest::Manifest;
use tokenctl::model::plan::{Plan, Targeting};
use tokenctl::model::state::State;
use tokenctl::ops::Ui;
use tokenctl::ops::apply::{self, Applied, ApplyOptions, ApplyUi, Finished};
use tokenctl::ops::create::{Event, Outcome, RetryPolicy, StopReason};
use tokenctl::ops::sinks::ConfiguredSink;
use tokenctl::secret::Secret;
use tokenctl::sink::{FileSpec, Secrets, SinkSpec};
use tokenctl::time::{SharedClock, TestClock};

/// What the server does with one create.
#[derive(Clone)]
enum Answer {
    Create,
    Throttle,
    ServerError,
    Unauthorized,
    /// Waits, then answers.
    Slow(Duration, Box<Answer>),
}

/// A Logz.io stand-in: answers creates from a script (then `Create` once
/// it runs out), owns sub-account 1, and counts what it was sent.
struct ScriptedApi {
    script: Mutex<VecDeque<Answer>>,
    sent: Mutex<Vec<String>>,
    handed_out: Mutex<Vec<String>>,
    /// Tokens answer their own whoami with 200 once set (401 before).
    answers_again: Arc<AtomicBool>,
}

impl ScriptedApi {
    fn new(script: &[Answer]) -> Self {
        ScriptedApi {
            script: Mutex::new(script.iter().cloned().collect()),
            sent: Mutex::default(),
            handed_out: Mutex::default(),
            answers_again: Arc::default(),
        }
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

impl TokenApi for ScriptedApi {
    fn create(
        &self,
        account_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<CreatedToken, CreateError>> + Send {
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Create);
        let mut sent = self.sent.lock().unwrap();
        sent.push(format!("{account_id}/{name}"));
        let id = 1000 + sent.len() as u64;
        let secret = format!("scripted-secret-{id}");
        let name = name.to_string();
        let handed_out = &self.handed_out;
        async move {
            let mut answer = answer;
            while let Answer::Slow(wait, then) = answer {
                tokio::time::sleep(wait).await;
                answer = *then;
            }
            match answer {
                Answer::Create => {
                    handed_out.lock().unwrap().push(secret.clone());
                    Ok(CreatedToken {
                        id,
                        name,
                        token: Secret::new(secret),
                        created_at: MADE_AT,
                    })
                }
                Answer::Throttle => Err(CreateError::RateLimited {
                    retry_after: Some(Duration::ZERO),
                    message: "Too Many Requests".into(),
                }),
                Answer::ServerError => Err(CreateError::Ambiguous {
                    detail: "the server answered 502".into(),
                }),
                Answer::Unauthorized => Err(CreateError::Unauthorized {
                    status: 401,
                    message: "bad token".into(),
                }),
                Answer::Slow(..) => unreachable!(),
            }
        }
    }
}

impl TokenCheck for ScriptedApi {
    fn whoami_as(&self, _token: &Secret) -> impl Future<Output = Result<Owner, CheckError>> + Send {
        std::future::ready(match self.answers_again.load(Ordering::SeqCst) {
            true => Ok(Owner {
                account_id: 1,
                account_name: "sub".into(),
            }),
            false => Err(CheckError::Revoked),
        })
    }
}

impl OwnerApi for ScriptedApi {
    fn whoami(&self) -> impl Future<Output = Result<Owner, PreflightError>> + Send {
        std::future::ready(Ok(Owner {
            account_id: 100,
            account_name: "owner".into(),
        }))
    }

    fn associated_accounts(
        &self,
    ) -> impl Future<Output = Result<Vec<AssociatedAccount>, PreflightError>> + Send {
        std::future::ready(Ok(vec![AssociatedAccount {
            account_id: 1,
            account_name: "sub".into(),
            kind: "SUB_ACCOUNT".into(),
        }]))
    }
}

/// Records what an apply reports, and answers its question.
#[derive(Default)]
struct Recorder {
    lines: Vec<String>,
    refuse_confirmation: bool,
    /// Set the interrupt flag once this many creates finished.
    interrupt_after: Option<usize>,
    interrupt: Option<Arc<AtomicBool>>,
    finished: usize,
    /// Set when the person answers the question (as time passes).
    on_confirm: Option<Arc<AtomicBool>>,
}

impl Ui for Recorder {
    fn warn(&mut self, text: &str) {
        self.lines.push(format!("warning: {text}"));
    }

    fn note(&mut self, text: &str) {
        self.lines.push(format!("note: {text}"));
    }
}

impl ApplyUi for Recorder {
    fn refresh_refused(&mut self, _refresh: &Refresh) -> Result<(), Failure> {
        self.lines.push("refresh refused".into());
        Ok(())
    }

    fn planned(
        &mut self,
        plan: &Plan,
        _refresh: Option<&Refresh>,
        _state: Option<&State>,
    ) -> Result<(), Failure> {
        self.lines
            .push(format!("planned {} create(s)", plan.summary().create));
        Ok(())
    }

    fn confirm(&mut self, creates: usize) -> Result<(), Failure> {
        self.lines.push(format!("asked about {creates}"));
        if let Some(flag) = &self.on_confirm {
            flag.store(true, Ordering::SeqCst);
        }
        match self.refuse_confirmation {
            true => Err(Failure::new("apply cancelled; nothing was created")),
            false => Ok(()),
        }
    }

    fn creating(
        &mut self,
        _plan: &Plan,
        creates: usize,
        interrupt: &Arc<AtomicBool>,
    ) -> Result<(), Failure> {
        self.lines.push(format!("creating {creates}"));
        self.interrupt = Some(interrupt.clone());
        Ok(())
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Finished(address, outcome) => {
                let text = match outcome {
                    Outcome::Created { .. } => "created".to_string(),
                    Outcome::Failed { .. } => "failed".into(),
                    Outcome::InDoubt { .. } => "in doubt".into(),
                    Outcome::Skipped => "skipped".into(),
                };
                self.lines.push(format!("{address}: {text}"));
                self.finished += 1;
                if Some(self.finished) == self.interrupt_after
                    && let Some(flag) = &self.interrupt
                {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            Event::RateLimited(address, _) => self.lines.push(format!("{address}: throttled")),
            Event::Stopping(reason) => self.lines.push(format!("stopping: {reason}")),
            _ => {}
        }
    }

    fn created(&mut self) {
        self.lines.push("creates over".into());
    }
}

/// A project folder: a manifest of `1/t0`…, a state file, a secrets file.
struct Project {
    dir: tempfile::TempDir,
    manifest: Manifest,
    bytes: Vec<u8>,
    /// The time every apply of the project reads.
    clock: Arc<TestClock>,
}

/// When the scripted API says each token was made (its createdAt).
const MADE_AT: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

impl Project {
    fn new(tokens: usize) -> Project {
        Project::with_settings(tokens, "")
    }

    /// A project whose manifest has `settings` above its tokens.
    fn with_settings(tokens: usize, settings: &str) -> Project {
        let mut text = format!("version: 1\nregion: eu\n{settings}tokens:\n");
        for i in 0..tokens {
            text.push_str(&format!("  - name: t{i}\n    accountId: 1\n"));
        }
        let manifest = Manifest::parse::<Secrets>(&text, "tokens.yaml")
            .unwrap()
            .manifest;
        Project {
            dir: tempfile::tempdir().unwrap(),
            manifest,
            bytes: text.into_bytes(),
            clock: Arc::new(TestClock::at(MADE_AT + 60)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn backend(&self) -> FileBackend {
        FileBackend::new(self.path("state.json"))
    }

    /// Runs one apply with `ui`; the state is read under the lock first.
    fn apply(&self, api: &ScriptedApi, ui: &mut Recorder) -> Result<Applied, Failure> {
        self.apply_refreshing(api, ui, false)
    }

    /// Runs one apply, refreshing first (`apply --refresh`) when `refresh`.
    fn apply_refreshing(
        &self,
        api: &ScriptedApi,
        ui: &mut Recorder,
        refresh: bool,
    ) -> Result<Applied, Failure> {
        let backend = self.backend();
        let holder = Holder {
            user: "test".into(),
            host: "test-host".into(),
            pid: std::process::id(),
            command: "apply".into(),
            started: 0,
            ci_job_url: None,
        };
        let lock = backend.lock(&holder, Duration::ZERO)?;
        let state = tokenctl::ops::recover::load_locked(&backend, Some("test-host"), ui)?;
        let sinks = [ConfiguredSink {
            base_dir: self.dir.path().to_path_buf(),
            spec: SinkSpec::File(FileSpec {
                path: "secrets.jsonl".into(),
            }),
        }];
        let targeting = Targeting::default();
        let vars = tokenctl::vars::Vars::default();
        let readers = tokenctl::ops::sinks::refresh_readers(&sinks, &vars);
        let options = ApplyOptions {
            manifest: &self.manifest,
            manifest_bytes: &self.bytes,
            manifest_name: "tokens.yaml",
            targeting: &targeting,
            saved_plan: None,
            refresh: refresh.then_some(&readers),
            force: false,
            max_creates: 50,
            sinks: &sinks,
            vars: &tokenctl::vars::Vars::default(),
            rescue_dir: Some(self.path("rescue")),
            parallelism: 4,
            preflight: true,
            confirm: true,
            timeouts: Timeouts::default(),
            retry: RetryPolicy {
                base_delay: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                ..RetryPolicy::default()
            },
            refresh_deadline: Duration::from_secs(60),
            host: Some("test-host"),
            clock: &SharedClock::from(self.clock.clone()),
        };
        let mut connect = |_: Timeouts, _: &mut dyn Ui| Ok(api);
        apply::apply(&backend, &*lock, state, &options, &mut connect, ui)
    }

    fn state(&self) -> Option<State> {
        self.backend().load().unwrap()
    }

    /// Checks that no secret the API handed out is anywhere but the
    /// secrets file, and that every one of them is in it.
    fn assert_secrets_only_in_sink(&self, api: &ScriptedApi) {
        let sink = std::fs::read_to_string(self.path("secrets.jsonl")).unwrap_or_default();
        for secret in api.handed_out.lock().unwrap().iter() {
            assert!(
                sink.contains(secret.as_str()),
                "{secret} is not in the sink"
            );
            for file in walk(self.dir.path()) {
                if file.ends_with("secrets.jsonl") {
                    continue;
                }
                let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
                assert!(
                    !text.contains(secret.as_str()),
                    "{secret} leaked into {file:?}"
                );
            }
        }
    }
}

impl TokenApi for &ScriptedApi {
    fn create(
        &self,
        account_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<CreatedToken, CreateError>> + Send {
        (*self).create(account_id, name)
    }
}

impl TokenCheck for &ScriptedApi {
    fn whoami_as(&self, token: &Secret) -> impl Future<Output = Result<Owner, CheckError>> + Send {
        (*self).whoami_as(token)
    }
}

impl OwnerApi for &ScriptedApi {
    fn whoami(&self) -> impl Future<Output = Result<Owner, PreflightError>> + Send {
        (*self).whoami()
    }

    fn associated_accounts(
        &self,
    ) -> impl Future<Output = Result<Vec<AssociatedAccount>, PreflightError>> + Send {
        (*self).associated_accounts()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn finished(applied: Applied) -> Box<Finished> {
    match applied {
        Applied::Ran(finished) => finished,
        Applied::NothingToCreate(_) => panic!("nothing was created"),
    }
}

#[test]
fn creates_every_token_and_records_it() {
    let project = Project::new(3);
    let api = ScriptedApi::new(&[]);
    let mut ui = Recorder::default();
    let done = finished(project.apply(&api, &mut ui).unwrap());
    let counts = done.report.counts();
    assert_eq!((counts.created, counts.failed, counts.in_doubt), (3, 0, 0));
    assert_eq!(
        &ui.lines[..3],
        ["planned 3 create(s)", "asked about 3", "creating 3"]
    );
    assert_eq!(ui.lines.last().unwrap(), "creates over");
    let state = project.state().unwrap();
    assert_eq!(state.tokens.len(), 3);
    assert!(state.pending.is_empty());
    // The journal was folded into the state and removed.
    let journals: Vec<PathBuf> = walk(project.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("journal"))
        .collect();
    assert!(journals.is_empty(), "{journals:?}");
    project.assert_secrets_only_in_sink(&api);

    // The next apply has nothing to do and sends nothing.
    let again = ScriptedApi::new(&[]);
    let applied = project.apply(&again, &mut Recorder::default()).unwrap();
    assert!(matches!(applied, Applied::NothingToCreate(_)));
    assert!(again.sent().is_empty());
}

#[test]
fn a_throttled_create_is_sent_again_and_counted() {
    let project = Project::new(1);
    let api = ScriptedApi::new(&[Answer::Throttle, Answer::Throttle]);
    let mut ui = Recorder::default();
    let done = finished(project.apply(&api, &mut ui).unwrap());
    assert_eq!(done.report.counts().created, 1);
    assert_eq!(done.report.throttled, 2);
    assert_eq!(api.sent(), ["1/t0", "1/t0", "1/t0"]);
    assert!(ui.lines.contains(&"1/t0: throttled".to_string()));
    project.assert_secrets_only_in_sink(&api);
}

#[test]
fn a_server_error_leaves_the_create_in_doubt_and_it_is_not_sent_again() {
    let project = Project::new(2);
    let api = ScriptedApi::new(&[Answer::ServerError]);
    let done = finished(project.apply(&api, &mut Recorder::default()).unwrap());
    let counts = done.report.counts();
    assert_eq!((counts.created, counts.in_doubt), (1, 1));
    let state = project.state().unwrap();
    assert_eq!(state.pending.len(), 1);
    assert_eq!(state.tokens.len(), 1);

    // The address in doubt is never sent again by an apply.
    let again = ScriptedApi::new(&[]);
    let applied = project.apply(&again, &mut Recorder::default()).unwrap();
    assert!(matches!(applied, Applied::NothingToCreate(_)));
    assert!(again.sent().is_empty());
}

/// The apply reads the time from its clock: a create in doubt is pending
/// since then, and a token is rotated once the clock says it is old
/// enough, with no waiting.
#[test]
fn the_apply_reads_the_time_from_its_clock() {
    let project = Project::with_settings(2, "rotate_after: 2d\n");
    let api = ScriptedApi::new(&[Answer::ServerError]);
    finished(project.apply(&api, &mut Recorder::default()).unwrap());
    let state = project.state().unwrap();
    assert_eq!(state.pending.len(), 1);
    assert_eq!(state.pending[0].since, MADE_AT + 60);
    assert_eq!(state.tokens.len(), 1);
    assert_eq!(state.tokens[0].created_at, Some(MADE_AT));

    // A day later the token is young enough: nothing to do.
    project.clock.advance(DAY);
    let young = ScriptedApi::new(&[]);
    let applied = project.apply(&young, &mut Recorder::default()).unwrap();
    assert!(matches!(applied, Applied::NothingToCreate(_)));
    assert!(young.sent().is_empty());

    // Two days after it was made, its successor is created.
    project.clock.advance(DAY);
    let old = ScriptedApi::new(&[]);
    let done = finished(project.apply(&old, &mut Recorder::default()).unwrap());
    assert_eq!(done.report.counts().created, 1);
    assert_eq!(old.sent(), [state.tokens[0].address.to_string()]);
    let rotated = project.state().unwrap();
    assert_eq!(rotated.superseded.len(), 1);
    assert_eq!(rotated.superseded[0].id, state.tokens[0].id);
}

#[test]
fn an_outage_stops_the_run_after_three_doubts_in_a_row() {
    let project = Project::new(8);
    // One at a time, so the streak is counted in order.
    let api = ScriptedApi::new(&vec![Answer::ServerError; 8]);
    let mut ui = Recorder::default();
    let done = finished(project.apply(&api, &mut ui).unwrap());
    let counts = done.report.counts();
    assert_eq!(counts.created, 0);
    assert!(counts.in_doubt >= 3, "{counts:?}");
    assert!(counts.not_attempted > 0, "{counts:?}");
    assert!(matches!(
        done.report.stopped,
        Some(StopReason::NoDefiniteAnswers { .. })
    ));
    // Nothing more was sent than came back in doubt.
    assert_eq!(api.sent().len(), counts.in_doubt);
    assert_eq!(project.state().unwrap().pending.len(), counts.in_doubt);
}

#[test]
fn a_rejected_owner_token_stops_every_later_create() {
    let project = Project::new(4);
    let api = ScriptedApi::new(&vec![Answer::Unauthorized; 4]);
    let done = finished(project.apply(&api, &mut Recorder::default()).unwrap());
    assert!(matches!(
        done.report.stopped,
        Some(StopReason::Unauthorized(_))
    ));
    let counts = done.report.counts();
    assert_eq!(counts.created, 0);
    // A refused create made nothing: the next plan has it again.
    assert!(
        project
            .state()
            .is_none_or(|s| s.tokens.is_empty() && s.pending.is_empty())
    );
}

#[test]
fn a_refused_confirmation_sends_nothing_and_writes_nothing() {
    let project = Project::new(2);
    let api = ScriptedApi::new(&[]);
    let mut ui = Recorder {
        refuse_confirmation: true,
        ..Recorder::default()
    };
    let err = project.apply(&api, &mut ui).err().unwrap();
    assert!(err.message.contains("cancelled"), "{}", err.message);
    assert!(api.sent().is_empty());
    assert!(project.state().is_none());
    assert!(!project.path("secrets.jsonl").exists());
    assert!(!project.path("rescue").exists());
}

#[test]
fn slow_answers_finish_in_any_order_and_are_reported_in_plan_order() {
    let project = Project::new(4);
    let slow = |ms| Answer::Slow(Duration::from_millis(ms), Box::new(Answer::Create));
    let api = ScriptedApi::new(&[slow(80), slow(10), slow(40), slow(1)]);
    let done = finished(project.apply(&api, &mut Recorder::default()).unwrap());
    let order: Vec<String> = done
        .report
        .outcomes
        .iter()
        .map(|(address, _)| address.to_string())
        .collect();
    assert_eq!(order, ["1/t0", "1/t1", "1/t2", "1/t3"]);
    assert_eq!(done.report.counts().created, 4);
    project.assert_secrets_only_in_sink(&api);
}

#[test]
fn an_interrupt_starts_no_more_creates_and_records_the_ones_done() {
    let project = Project::new(6);
    let slow = || Answer::Slow(Duration::from_millis(20), Box::new(Answer::Create));
    let api = ScriptedApi::new(&vec![slow(); 6]);
    let mut ui = Recorder {
        interrupt_after: Some(1),
        ..Recorder::default()
    };
    let done = finished(project.apply(&api, &mut ui).unwrap());
    assert_eq!(done.report.stopped, Some(StopReason::Interrupted));
    let counts = done.report.counts();
    assert!(counts.not_attempted > 0, "{counts:?}");
    assert_eq!(counts.created, api.sent().len());
    assert_eq!(project.state().unwrap().tokens.len(), counts.created);
    // A secret that arrived after the interrupt went to a rescue file at
    // once; every other one is in the sink.
    let sink = std::fs::read_to_string(project.path("secrets.jsonl")).unwrap_or_default();
    let rescued: Vec<String> = done
        .report
        .rescued
        .iter()
        .map(|(_, r)| std::fs::read_to_string(r.file().unwrap()).unwrap())
        .collect();
    for secret in api.handed_out.lock().unwrap().iter() {
        let in_sink = sink.contains(secret.as_str());
        let in_rescue = rescued.iter().any(|r| r.contains(secret.as_str()));
        assert!(
            in_sink != in_rescue,
            "{secret}: sink {in_sink}, rescue {in_rescue}"
        );
    }
}

/// A person who takes a while to answer: the tokens the refresh found
/// revoked answer again by then, so the apply stops before it creates a
/// successor for a live token.
#[test]
fn revocations_are_checked_again_after_a_person_confirms() {
    let project = Project::with_settings(2, "on_revoked: recreate\n");
    let api = ScriptedApi::new(&[]);
    let mut first = Recorder {
        refuse_confirmation: false,
        ..Recorder::default()
    };
    project.apply(&api, &mut first).unwrap();
    let before = project.state().unwrap();
    assert_eq!(before.tokens.len(), 2);

    let mut ui = Recorder {
        on_confirm: Some(api.answers_again.clone()),
        ..Recorder::default()
    };
    let err = project.apply_refreshing(&api, &mut ui, true).err().unwrap();
    assert!(
        err.message
            .contains("was found revoked, but it no longer does"),
        "{}",
        err.message
    );
    assert!(
        ui.lines.contains(&"planned 2 create(s)".to_string()),
        "{:?}",
        ui.lines
    );
    assert!(
        ui.lines.contains(&"asked about 2".to_string()),
        "{:?}",
        ui.lines
    );
    assert_eq!(api.sent().len(), 2, "only the first apply's creates");
    let after = project.state().unwrap();
    assert_eq!(after.tokens, before.tokens);
    assert!(after.superseded.is_empty());
}
