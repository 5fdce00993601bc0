//! Tests of the file and exec sinks and of rescue files.

use super::*;
use crate::vars::Vars;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn token<'a>(secret: &'a Secret, address: &'a Address) -> NewToken<'a> {
    NewToken {
        address,
        id: 7,
        created_at: 1_600_000_000,
        token: secret,
    }
}

fn address() -> Address {
    Address::new(160343, "ci/shipper")
}

#[test]
fn file_sink_appends_one_private_line_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets/tokens.jsonl");
    let secret = Secret::new("tok-1".into());
    let mut sink = FileSink::open(&path, &git_vars()).unwrap();
    sink.deliver(&token(&secret, &address())).unwrap();
    sink.deliver(&token(&secret, &address())).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["token"], "tok-1");
    assert_eq!(lines[0]["address"], "160343/ci/shipper");
    assert_eq!(lines[0]["id"], 7);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[cfg(unix)]
#[test]
fn file_sink_refuses_a_world_readable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.jsonl");
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = FileSink::open(&path, &git_vars()).err().unwrap();
    assert!(err.detail.contains("mode 644"), "{err}");
}

#[test]
fn file_sink_refuses_a_file_git_would_commit() {
    if Command::new("git").arg("--version").output().is_err() {
        let in_ci = Vars::from_process().get("CI").is_some();
        assert!(!in_ci, "git is needed in CI");
        eprintln!("skipped: git is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let path = dir.path().join("secrets/tokens.jsonl");
    let err = FileSink::open(&path, &git_vars()).err().unwrap();
    assert!(err.detail.contains("git does not ignore it"), "{err}");
    assert!(err.hint.unwrap().ends_with("/secrets/tokens.jsonl"));

    fs::write(dir.path().join(".gitignore"), "secrets/\n").unwrap();
    assert!(FileSink::open(&path, &git_vars()).is_ok());
}

#[cfg(unix)]
#[test]
fn rescue_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let rescue = Rescue::new(dir.path().join("rescue"));
    let secret = Secret::new("tok-2".into());
    let path = rescue.save(&token(&secret, &address())).unwrap();
    assert!(fs::read_to_string(&path).unwrap().contains("tok-2"));
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("ci_shipper")
    );
}

#[cfg(unix)]
#[test]
fn exec_sink_pipes_the_record_and_reports_failures_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got.json");
    let script = format!("cat > '{}'", out.display());
    let mut sink = ExecSink::new(
        vec!["sh".into(), "-c".into(), script],
        Duration::from_secs(30),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let secret = Secret::new("tok-3".into());
    sink.deliver(&token(&secret, &address())).unwrap();
    let got: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(got["token"], "tok-3");

    let mut failing = ExecSink::new(
        vec![
            "sh".into(),
            "-c".into(),
            "read line; echo \"vault said no to $line\" >&2; exit 3".into(),
        ],
        Duration::from_secs(30),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let err = failing.deliver(&token(&secret, &address())).unwrap_err();
    // The detail is what tokenctl adds to the sink's name (its argv).
    let text = err.detail.clone();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(!text.contains("vault said no"), "{text}");
    assert!(!text.contains("tok-3"), "{text}");
    let saved = dir.path().join("rescue/exec-sink-1600000000-160343-7.log");
    assert!(text.contains(&saved.display().to_string()), "{text}");
    assert!(
        fs::read_to_string(&saved)
            .unwrap()
            .contains("vault said no")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&saved).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[cfg(unix)]
#[test]
fn exec_sink_output_never_reaches_the_error_even_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    // Prints the token in two halves, which no exact-match redaction
    // would catch, then fails.
    let mut sink = ExecSink::new(
        vec![
            "sh".into(),
            "-c".into(),
            "read line; t=${line#*\\\"token\\\":\\\"}; t=${t%%\\\"*}; echo \"${t%????}\" >&2; echo \"${t#${t%????}}\" >&2; exit 1".into(),
        ],
        Duration::from_secs(30),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let secret = Secret::new("tok-split-secret".into());
    let err = sink.deliver(&token(&secret, &address())).unwrap_err();
    let text = format!("{} {:?}", err.detail, err.hint);
    for piece in ["tok-split-se", "cret"] {
        assert!(!text.contains(piece), "{text}");
    }
    let saved =
        fs::read_to_string(dir.path().join("rescue/exec-sink-1600000000-160343-7.log")).unwrap();
    assert_eq!(saved, "tok-split-se\ncret\n");
}

#[cfg(unix)]
#[test]
fn exec_sink_runs_without_any_credential_tokenctl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let script = format!("cat >/dev/null; env > '{}'", out.display());
    // Every credential variable tokenctl reads is set; the command's
    // environment comes from this snapshot, never from the test process.
    let mut vars = Vars::from_pairs([("PATH", "/usr/bin:/bin")]);
    for name in crate::vars::CREDENTIALS {
        vars = vars.with(name, &format!("{name}-must-stay-home"));
    }
    vars = vars.with(
        "TOKENCTL_PG_CONN_STR",
        "postgres://ci:pg-pw-must-stay-home@h/db",
    );
    let mut sink = ExecSink::new(
        vec!["sh".into(), "-c".into(), script],
        Duration::from_secs(30),
        dir.path().join("rescue"),
        vars.for_child(&[]),
    )
    .unwrap();
    let secret = Secret::new("tok-5".into());
    sink.deliver(&token(&secret, &address())).unwrap();
    let env = fs::read_to_string(&out).unwrap();
    assert!(!env.contains("must-stay-home"), "{env}");
    for name in crate::vars::CREDENTIALS {
        assert!(!env.contains(&format!("{name}=")), "{name}: {env}");
    }
    assert!(env.contains("PATH="), "{env}");
}

#[cfg(unix)]
#[test]
fn exec_sink_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ExecSink::new(
        vec!["sleep".into(), "30".into()],
        Duration::from_millis(100),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let secret = Secret::new("tok-4".into());
    let err = sink.deliver(&token(&secret, &address())).unwrap_err();
    assert!(err.detail.contains("killed"), "{err}");
}

#[cfg(unix)]
#[test]
fn exec_sink_timeout_covers_a_record_the_program_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    // More than a pipe holds, to a program that never reads it: the
    // write blocks until the program is killed at the timeout.
    let mut sink = ExecSink::new(
        vec!["sleep".into(), "600".into()],
        Duration::from_millis(200),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let secret = Secret::new("x".repeat(200 * 1024));
    let err = sink.deliver(&token(&secret, &address())).unwrap_err();
    assert!(err.detail.contains("killed"), "{err}");
}

#[test]
fn exec_sink_needs_an_existing_program() {
    let err = ExecSink::new(
        vec!["no-such-program-xyz".into()],
        Duration::from_secs(1),
        PathBuf::from("/nonexistent"),
        child_env(),
    )
    .err()
    .unwrap();
    assert!(err.detail.contains("not found"), "{err}");
}

#[test]
fn file_lookup_reads_back_what_the_file_sink_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.jsonl");
    let lookup = FileLookup::new(path.clone());
    assert!(lookup.lookup(&address()).unwrap().is_empty());
    let mut sink = FileSink::open(&path, &git_vars()).unwrap();
    let (first, second) = (Secret::new("tok-5".into()), Secret::new("tok-6".into()));
    sink.deliver(&token(&first, &address())).unwrap();
    sink.deliver(&token(&second, &Address::new(1, "other")))
        .unwrap();
    let here = address();
    let mut later = token(&second, &here);
    later.id = 8;
    sink.deliver(&later).unwrap();
    // A line torn by a crash mid-write is skipped.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"address\":\"160343/ci/shipper\",\"id\":9,\"tok")
        .unwrap();
    let found = lookup.lookup(&address()).unwrap();
    let ids: Vec<u64> = found.iter().map(|f| f.id).collect();
    assert_eq!(ids, [7, 8]);
    assert_eq!(found[1].token.expose(), "tok-6");
    assert_eq!(found[1].created_at, Some(1_600_000_000));
}

#[test]
fn rescue_dir_prefers_xdg_state_home() {
    assert_eq!(
        Rescue::default_dir(Some("/x"), Some("/h")),
        Some(PathBuf::from("/x/tokenctl/rescue"))
    );
    assert_eq!(
        Rescue::default_dir(None, Some("/h")),
        Some(PathBuf::from("/h/.local/state/tokenctl/rescue"))
    );
    // Never a shared folder such as /tmp.
    assert_eq!(Rescue::default_dir(None, None), None);
    assert_eq!(Rescue::default_dir(Some(""), Some("")), None);
}

#[test]
fn rescue_file_names_are_bounded_for_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let rescue = Rescue::new(dir.path().join("rescue"));
    let secret = Secret::new("tok-6".into());
    for name in ["n".repeat(1000), "é".repeat(300), "a/../b c".repeat(80)] {
        let address = Address::new(160343, &name);
        let path = rescue.save(&token(&secret, &address)).unwrap();
        let file_name = path.file_name().unwrap().to_str().unwrap();
        assert!(file_name.len() < 120, "{file_name}");
        assert!(fs::read_to_string(&path).unwrap().contains("tok-6"));
    }
}

#[test]
fn rescue_prepare_fails_where_nothing_can_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("a-file");
    fs::write(&blocked, "").unwrap();
    assert!(Rescue::new(blocked.join("rescue")).prepare().is_err());
    assert!(Rescue::new(dir.path().join("rescue")).prepare().is_ok());
}

#[cfg(unix)]
#[test]
fn file_sink_refuses_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.jsonl");
    let link = dir.path().join("tokens.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = FileSink::open(&link, &git_vars()).err().unwrap();
    assert!(err.detail.contains("symbolic link"), "{err}");
    assert!(!target.exists());
}

#[cfg(unix)]
#[test]
fn rescue_prepare_makes_an_open_folder_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let rescue_dir = dir.path().join("rescue");
    fs::create_dir(&rescue_dir).unwrap();
    fs::set_permissions(&rescue_dir, fs::Permissions::from_mode(0o777)).unwrap();
    Rescue::new(rescue_dir.clone()).prepare().unwrap();
    let mode = fs::metadata(&rescue_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[cfg(unix)]
#[test]
fn rescue_prepare_refuses_a_folder_of_another_user() {
    let dir = tempfile::tempdir().unwrap();
    let rescue_dir = dir.path().join("rescue");
    fs::create_dir(&rescue_dir).unwrap();
    // Only root can give a folder away; elsewhere there is nothing to test.
    if std::os::unix::fs::chown(&rescue_dir, Some(65534), Some(65534)).is_err() {
        eprintln!("skipped: changing a folder's owner needs root");
        return;
    }
    let err = Rescue::new(rescue_dir).prepare().unwrap_err();
    assert!(err.to_string().contains("belongs to another user"), "{err}");
}

/// The environment exec sinks run with in these tests.
fn child_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    Vars::from_pairs([("PATH", "/usr/bin:/bin")]).for_child(&[])
}

/// A sink that panics on every secret, as a bug would make it.
struct Panicking;

impl SecretSink for Panicking {
    fn deliver(&mut self, _: &NewToken<'_>) -> Result<(), SinkError> {
        panic!("a bug in a sink");
    }

    fn describe(&self) -> String {
        "panicking".into()
    }
}

/// A sink that counts what it was given.
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl SecretSink for Counting {
    fn deliver(&mut self, _: &NewToken<'_>) -> Result<(), SinkError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        "counting".into()
    }
}

#[test]
fn a_panicking_sink_rescues_the_secret_and_is_not_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let rescue = Rescue::new(dir.path().join("rescue"));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sinks: Vec<Box<dyn SecretSink>> =
        vec![Box::new(Panicking), Box::new(Counting(count.clone()))];
    let worker = SinkWorker::start(sinks, rescue).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let never = || false;
    for id in [1, 2] {
        let delivery = runtime.block_on(worker.deliver(
            &address(),
            id,
            1_600_000_000,
            Secret::new(format!("tok-panic-{id}")),
            &never,
        ));
        let saved = delivery.rescue.as_ref().and_then(Rescued::file).unwrap();
        let text = fs::read_to_string(saved).unwrap();
        assert!(text.contains(&format!("tok-panic-{id}")), "{text}");
        let detail = &delivery.failures[0].detail;
        let expected = match id {
            1 => "the sink failed unexpectedly (it panicked)",
            _ => "not tried: it failed earlier in this run",
        };
        assert_eq!(detail, expected);
    }
    worker.finish(true);
    // The other sink still took both secrets.
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A sink that blocks until told to go on.
struct Blocking(std::sync::mpsc::Receiver<()>);

impl SecretSink for Blocking {
    fn deliver(&mut self, _: &NewToken<'_>) -> Result<(), SinkError> {
        let _ = self.0.recv();
        Ok(())
    }

    fn describe(&self) -> String {
        "blocking".into()
    }
}

#[test]
fn an_interrupt_rescues_a_secret_a_slow_sink_has_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let rescue = Rescue::new(dir.path().join("rescue"));
    let (release, blocked) = std::sync::mpsc::channel();
    let worker = SinkWorker::start(vec![Box::new(Blocking(blocked))], rescue).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let check = || interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let at = address();
    let delivery = runtime.block_on(async {
        let deliver = worker.deliver(
            &at,
            3,
            1_600_000_000,
            Secret::new("tok-interrupted".into()),
            &check,
        );
        let interrupt = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        let (delivery, ()) = tokio::join!(deliver, interrupt);
        delivery
    });
    assert!(delivery.interrupted);
    let saved = delivery.rescue.as_ref().and_then(Rescued::file).unwrap();
    assert!(
        fs::read_to_string(saved)
            .unwrap()
            .contains("tok-interrupted")
    );
    // Not waited for: the sink is still blocked.
    worker.finish(false);
    drop(release);
}

/// The environment the file sink's git checks run with in these tests.
fn git_vars() -> Vars {
    // The sinks' commands run on the test process's PATH.
    let path = Vars::from_process()
        .get("PATH")
        .unwrap_or_default()
        .to_string();
    Vars::from_pairs([("PATH", path)])
}

#[cfg(unix)]
#[test]
fn an_exec_program_that_may_not_be_run_is_refused_before_any_create() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sink.sh");
    fs::write(&script, "#!/bin/sh\ncat >/dev/null\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let err = ExecSink::new(
        vec![script.display().to_string()],
        Duration::from_secs(1),
        dir.path().join("rescue"),
        child_env(),
    )
    .err()
    .unwrap();
    assert!(err.detail.contains("may not be run"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_exec_lookup_must_name_the_address_of_what_it_prints() {
    let lookup = |answer: &str| {
        super::exec::ExecLookup::new(
            vec![
                "sh".into(),
                "-c".into(),
                format!("cat >/dev/null; printf '%s' '{answer}'"),
            ],
            Duration::from_secs(30),
            child_env(),
        )
        .unwrap()
    };
    let a = address();
    let anyones = lookup(r#"{"id":987,"createdAt":1,"token":"tc-lookup-anyones"}"#);
    assert!(anyones.lookup(&a).is_err());
    let right = lookup(&format!(
        r#"{{"address":"{a}","id":987,"createdAt":1,"token":"tc-lookup-right"}}"#
    ));
    assert_eq!(right.lookup(&a).unwrap()[0].id, 987);
    let huge = super::exec::ExecLookup::new(
        vec![
            "sh".into(),
            "-c".into(),
            "cat >/dev/null; head -c 200000 /dev/zero".into(),
        ],
        Duration::from_secs(30),
        child_env(),
    )
    .unwrap();
    let err = huge.lookup(&a).err().unwrap();
    assert!(err.detail.contains("more than 65536 bytes"), "{err}");
}

#[cfg(unix)]
#[test]
fn an_exec_command_that_never_reads_the_token_has_not_taken_it() {
    let dir = tempfile::tempdir().unwrap();
    // Exits 0 after a while, the token's short record still in the pipe.
    let mut sink = ExecSink::new(
        vec!["sh".into(), "-c".into(), "sleep 0.2".into()],
        Duration::from_secs(30),
        dir.path().join("rescue"),
        child_env(),
    )
    .unwrap();
    let secret = Secret::new("tok-never-read".into());
    let err = sink.deliver(&token(&secret, &address())).unwrap_err();
    assert!(
        err.detail.contains("exited 0 without reading the token")
            && err.detail.contains("never read"),
        "{err}"
    );
}

/// The line every sink receives is the JSON object it always was, written
/// into one buffer that never grows (a grown one would leave a copy of the
/// token behind) and is wiped when dropped.
#[test]
fn a_json_line_keeps_its_format_and_never_outgrows_its_buffer() {
    for (name, value) in [
        ("ci/shipper", "tok-plain"),
        ("a\u{1}\"b\\", "tok\u{1}\u{2}\"\\"),
        ("ü", "\u{1f}\u{1f}\u{1f}\u{1f}"),
    ] {
        let address = Address::new(160343, name);
        let secret = Secret::new(value.into());
        let new = token(&secret, &address);
        let line = new.to_json_line();
        let before = serde_json::json!({
            "address": address.to_string(),
            "accountId": address.account_id,
            "name": address.name,
            "id": new.id,
            "createdAt": new.created_at,
            "token": secret.expose(),
        })
        .to_string()
            + "\n";
        assert_eq!(std::str::from_utf8(&line).unwrap(), before);
        let room = 6 * (value.len() + name.len() + address.to_string().len()) + 128;
        assert_eq!(line.capacity(), room, "{name:?}");
    }
}

#[test]
fn a_git_command_gets_its_input_and_is_killed_at_its_time_limit() {
    let mut echo = std::process::Command::new("cat");
    echo.arg("-");
    let out = super::run_git(echo, Some(b"HEAD:x\n".to_vec()), Duration::from_secs(30)).unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"HEAD:x\n");
    // One that never finishes (a lock, a hung file system) is killed, and
    // says so.
    let mut hung = std::process::Command::new("sh");
    hung.args(["-c", "exec sleep 60"]);
    let started = std::time::Instant::now();
    let err = super::run_git(hung, None, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(err.to_string(), "git did not finish within 200ms");
    assert!(started.elapsed() < Duration::from_secs(30));
}
