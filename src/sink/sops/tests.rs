use super::*;
use crate::model::state::State;
use crate::time::TestClock;
use std::path::Path;

fn identity() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

fn boxed(identity: age::x25519::Identity) -> Vec<Box<dyn age::Identity + Send + Sync>> {
    vec![Box::new(identity)]
}

fn new_token<'a>(address: &'a Address, secret: &'a Secret) -> NewToken<'a> {
    NewToken {
        address,
        id: 42,
        created_at: 1_700_000_000,
        token: secret,
    }
}

#[test]
fn a_file_decrypts_to_the_token_with_its_readable_fields() {
    let key = identity();
    let address = Address::new(160343, "ci/shipper ü");
    let secret = Secret::new("tok-sops-1".into());
    for format in [SopsFormat::Plain, SopsFormat::K8sSecret] {
        let text = encrypt(
            &new_token(&address, &secret),
            format,
            SopsLayout::PerAddress,
            &[key.to_public()],
            1_700_000_100,
        )
        .unwrap();
        assert!(!text.contains("tok-sops-1"), "{text}");
        assert!(
            text.contains("lastmodified: \"2023-11-14T22:15:00Z\""),
            "{text}"
        );
        assert_eq!(
            readable(&text).unwrap(),
            Readable {
                address: "160343/ci/shipper ü".into(),
                id: 42
            }
        );
        let decrypted = decrypt(&text, &boxed(key.clone())).unwrap();
        assert_eq!(decrypted.token.expose(), "tok-sops-1");
        assert_eq!(decrypted.id, 42);
        assert_eq!(decrypted.created_at, Some(1_700_000_000));
    }
}

#[test]
fn an_edited_readable_value_breaks_the_mac() {
    let key = identity();
    let address = Address::new(1, "a");
    let secret = Secret::new("tok-sops-2".into());
    let text = encrypt(
        &new_token(&address, &secret),
        SopsFormat::Plain,
        SopsLayout::PerAddress,
        &[key.to_public()],
        0,
    )
    .unwrap();
    let edited = text.replace("id: 42", "id: 43");
    assert_ne!(edited, text);
    assert!(matches!(decrypt(&edited, &boxed(key)), Err(SopsError::Mac)));
}

#[test]
fn another_identity_cannot_decrypt() {
    let address = Address::new(1, "a");
    let secret = Secret::new("tok-sops-3".into());
    let text = encrypt(
        &new_token(&address, &secret),
        SopsFormat::Plain,
        SopsLayout::PerAddress,
        &[identity().to_public(), identity().to_public()],
        0,
    )
    .unwrap();
    assert!(matches!(
        decrypt(&text, &boxed(identity())),
        Err(SopsError::NoIdentity)
    ));
}

#[test]
fn every_recipient_can_decrypt() {
    let (one, two) = (identity(), identity());
    let address = Address::new(1, "a");
    let secret = Secret::new("tok-sops-4".into());
    let text = encrypt(
        &new_token(&address, &secret),
        SopsFormat::K8sSecret,
        SopsLayout::PerAddress,
        &[one.to_public(), two.to_public()],
        0,
    )
    .unwrap();
    for key in [one, two] {
        assert_eq!(
            decrypt(&text, &boxed(key)).unwrap().token.expose(),
            "tok-sops-4"
        );
    }
}

#[test]
fn file_names_are_safe_and_bounded() {
    let long = "x".repeat(500);
    for (name, expected) in [
        ("ci-shipper", "7-ci-shipper-9.sops.yaml"),
        ("../../etc/passwd", "7-etc_passwd-9.sops.yaml"),
        ("a b/c", "7-a_b_c-9.sops.yaml"),
        ("ü", "7-token-9.sops.yaml"),
        ("..", "7-token-9.sops.yaml"),
    ] {
        assert_eq!(file_name(&Address::new(7, name), 9), expected);
    }
    let bounded = file_name(&Address::new(u64::MAX, &long), u64::MAX);
    assert!(bounded.len() < 100, "{bounded}");
    assert!(home_name(&Address::new(u64::MAX, &long)).len() < 100);
}

#[test]
fn a_home_is_named_by_its_address_and_never_shared() {
    let home = |name: &str| home_name(&Address::new(7, name));
    assert_eq!(home("ci-shipper"), "7-ci-shipper.sops.yaml");
    assert_eq!(
        previous_name(&Address::new(7, "ci-shipper"), 5001),
        "7-ci-shipper.5001.sops.yaml.previous"
    );
    // Names that lose characters get a digest of the address, so names
    // that differ only in those characters still have homes of their own.
    let lossy = ["a b", "a/b", "a_b ", "ü", "..", "a b ü"];
    let mut names: Vec<String> = lossy.iter().map(|n| home(n)).collect();
    names.push(home("a_b"));
    for name in &names {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "{name}"
        );
    }
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "{names:?}");
    assert!(home("a b").starts_with("7-a_b-") && home("a b").len() == "7-a_b-".len() + 8 + 10);
    // The digest is stable: the same address gets the same home.
    assert_eq!(home("a b"), home("a b"));
}

#[test]
fn kubernetes_names_are_rfc_1123_subdomains() {
    for name in ["CI Shipper", "..", "a__b", "-x-", "ü/ö", &"Y".repeat(300)] {
        let got = k8s_name(&Address::new(160343, name), Some(5));
        assert!(got.len() <= 253, "{got}");
        assert!(
            got.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{got}"
        );
        assert!(got.starts_with("logzio-") && got.ends_with("-5"), "{got}");
        assert!(!got.contains("--"), "{got}");
        let stable = k8s_name(&Address::new(160343, name), None);
        assert!(stable.len() <= 253, "{stable}");
        assert!(
            stable
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{stable}"
        );
    }
    // Without an id, names that differ only in dropped characters differ
    // by a digest of the address.
    let stable = |name: &str| k8s_name(&Address::new(1, name), None);
    assert_eq!(stable("ci-shipper"), "logzio-1-ci-shipper");
    assert_ne!(stable("CI-Shipper"), stable("ci-shipper"));
    assert_ne!(stable("a_b"), stable("a b"));
    assert!(
        stable("a_b").starts_with("logzio-1-a-b-"),
        "{}",
        stable("a_b")
    );
}

#[test]
fn recipients_must_be_age_public_keys() {
    assert!(parse_recipient(&identity().to_public().to_string()).is_ok());
    for bad in ["", "age1", "AGE-SECRET-KEY-1XYZ", "ssh-ed25519 AAAA"] {
        assert_eq!(
            parse_recipient(bad).unwrap_err(),
            "not an age recipient (age1…)"
        );
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn token_id<'a>(address: &'a Address, id: u64, secret: &'a Secret) -> NewToken<'a> {
    NewToken {
        address,
        id,
        created_at: 1_700_000_000 + id as i64,
        token: secret,
    }
}

#[test]
fn the_per_token_layout_writes_new_files_and_finds_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity();
    let mut sink = SopsSink::new(
        dir.path().join("secrets"),
        vec![key.to_public()],
        SopsFormat::Plain,
        boxed(key),
    )
    .with_layout(SopsLayout::PerToken)
    .with_clock(SharedClock::new(TestClock::at(1_700_000_100)));
    sink.check_writable().unwrap();
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-sops-5".into());
    sink.deliver(&new_token(&address, &secret)).unwrap();
    // A file is never rewritten: the same token again is refused.
    assert!(sink.deliver(&new_token(&address, &secret)).is_err());
    let found = sink.lookup(&address).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 42);
    assert_eq!(found[0].token.expose(), "tok-sops-5");
    assert!(sink.lookup(&Address::new(3, "y")).unwrap().is_empty());
    assert_eq!(names_in(&dir.path().join("secrets")), ["3-x-42.sops.yaml"]);
    // The file records the time the sink's clock told.
    let text = fs::read_to_string(dir.path().join("secrets/3-x-42.sops.yaml")).unwrap();
    assert!(
        text.contains("lastmodified: \"2023-11-14T22:15:00Z\""),
        "{text}"
    );
}

#[test]
fn a_home_is_written_once_and_replaced_only_over_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("secrets");
    let key = identity();
    let mut sink = SopsSink::new(
        folder.clone(),
        vec![key.to_public()],
        SopsFormat::Plain,
        boxed(key),
    );
    sink.check_writable().unwrap();
    let address = Address::new(3, "x");
    let home = folder.join("3-x.sops.yaml");
    let (one, two, three) = (
        Secret::new("tok-home-1".into()),
        Secret::new("tok-home-2".into()),
        Secret::new("tok-home-3".into()),
    );
    sink.deliver(&token_id(&address, 1, &one)).unwrap();
    assert_eq!(readable(&fs::read_to_string(&home).unwrap()).unwrap().id, 1);
    // A first token never replaces a home: the same address again is
    // refused, before and after the pre-flight.
    let err = sink
        .check_homes(std::slice::from_ref(&address))
        .unwrap_err();
    assert!(
        err.detail.contains("a file already exists at")
            && err.detail.contains("(it holds token id 1)"),
        "{err}"
    );
    assert!(sink.deliver(&token_id(&address, 2, &two)).is_err());

    // The successor of 1 replaces it; outside git, 1 is kept beside.
    sink.predecessors.insert(address.clone(), 1);
    sink.check_homes(std::slice::from_ref(&address)).unwrap();
    let before = fs::read_to_string(&home).unwrap();
    sink.deliver(&token_id(&address, 2, &two)).unwrap();
    assert_eq!(readable(&fs::read_to_string(&home).unwrap()).unwrap().id, 2);
    assert_eq!(
        names_in(&folder),
        ["3-x.1.sops.yaml.previous", "3-x.sops.yaml"]
    );
    assert_eq!(
        fs::read_to_string(folder.join("3-x.1.sops.yaml.previous")).unwrap(),
        before
    );
    let found = sink.lookup(&address).unwrap();
    let ids: Vec<u64> = found.iter().map(|f| f.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(found[1].token.expose(), "tok-home-2");

    // The home holds 2 now: another successor of 1 is refused, in the
    // pre-flight and at delivery, and the home is left alone.
    let err = sink
        .check_homes(std::slice::from_ref(&address))
        .unwrap_err();
    assert!(
        err.detail
            .contains("holds token id 2, not token id 1, the predecessor the state records"),
        "{err}"
    );
    let err = sink.deliver(&token_id(&address, 3, &three)).unwrap_err();
    assert!(
        err.detail
            .contains("(it changed after the pre-flight check)"),
        "{err}"
    );
    assert_eq!(readable(&fs::read_to_string(&home).unwrap()).unwrap().id, 2);
    assert_eq!(names_in(&folder).len(), 2);

    // A file of another address, or one tokenctl did not write, is not
    // a predecessor either.
    sink.predecessors.insert(address.clone(), 2);
    let other = Address::new(3, "y");
    let foreign = encrypt(
        &token_id(&other, 2, &three),
        SopsFormat::Plain,
        SopsLayout::PerAddress,
        &[identity().to_public()],
        0,
    )
    .unwrap();
    for (text, what) in [
        (foreign.as_str(), "holds a file of another address"),
        ("token: plain\n", "holds a file tokenctl did not write"),
    ] {
        fs::write(&home, text).unwrap();
        let err = sink
            .check_homes(std::slice::from_ref(&address))
            .unwrap_err();
        assert!(err.detail.contains(what), "{err}");
        assert!(sink.deliver(&token_id(&address, 3, &three)).is_err());
        assert_eq!(fs::read_to_string(&home).unwrap(), text);
    }

    // A successor whose home was moved away starts it afresh.
    fs::remove_file(&home).unwrap();
    sink.check_homes(std::slice::from_ref(&address)).unwrap();
    sink.deliver(&token_id(&address, 3, &three)).unwrap();
    assert_eq!(readable(&fs::read_to_string(&home).unwrap()).unwrap().id, 3);
}

/// Returns a sink writing to `folder` with a fresh key it can also read.
fn home_sink(folder: &Path) -> SopsSink {
    let key = identity();
    SopsSink::new(
        folder.to_path_buf(),
        vec![key.to_public()],
        SopsFormat::Plain,
        boxed(key),
    )
}

/// The environment git runs with in these tests.
fn git_vars() -> crate::vars::Vars {
    let path = crate::vars::Vars::from_process()
        .get("PATH")
        .unwrap_or_default()
        .to_string();
    crate::vars::Vars::from_pairs([("PATH", path)])
}

/// Runs git in `dir`, as a person would, and returns its stdout.
fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=tokenctl tests",
            "-c",
            "user.email=tests@example.com",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is needed by this test");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_home_that_changes_before_the_rename_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("secrets");
    let mut sink = home_sink(&folder);
    let address = Address::new(3, "x");
    let home = folder.join("3-x.sops.yaml");
    let secret = Secret::new("tok-late-1".into());
    sink.deliver(&token_id(&address, 1, &secret)).unwrap();
    sink.predecessors.insert(address.clone(), 1);
    // Someone writes the home after the sink read it and before the
    // rename: the last check sees it, and the home stays theirs.
    let theirs = "theirs\n";
    let written = home.clone();
    sink.before_rename = Some(Box::new(move || fs::write(&written, theirs).unwrap()));
    let err = sink.deliver(&token_id(&address, 2, &secret)).unwrap_err();
    assert!(
        err.detail.contains(
            "holds a file tokenctl did not write (it changed after the pre-flight check)"
        ),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&home).unwrap(), theirs);
    // The predecessor was kept first, and no temp file is left behind.
    assert_eq!(
        names_in(&folder),
        ["3-x.1.sops.yaml.previous", "3-x.sops.yaml"]
    );
}

#[test]
fn a_file_in_the_way_of_the_kept_predecessor_is_refused_before_any_create() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("secrets");
    let mut sink = home_sink(&folder);
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-kept-2".into());
    sink.deliver(&token_id(&address, 1, &secret)).unwrap();
    sink.predecessors.insert(address.clone(), 1);
    let kept = folder.join("3-x.1.sops.yaml.previous");
    let one = |text: &str| -> String {
        let other = encrypt(
            &token_id(&Address::new(3, "x"), 1, &secret),
            SopsFormat::Plain,
            SopsLayout::PerAddress,
            &[identity().to_public()],
            0,
        )
        .unwrap();
        match text {
            "same token" => other,
            _ => other.replace("id: 1", text),
        }
    };
    // A file of another token there is not the predecessor's copy: the
    // pre-flight refuses, before any token exists.
    fs::write(&kept, one("id: 7")).unwrap();
    let err = sink
        .check_homes(std::slice::from_ref(&address))
        .unwrap_err();
    assert_eq!(
        err.detail,
        format!(
            "the predecessor token id 1 is to be kept at {} before its home is rewritten, but that file holds token id 7",
            kept.display()
        )
    );
    fs::write(&kept, "not sops\n").unwrap();
    let err = sink
        .check_homes(std::slice::from_ref(&address))
        .unwrap_err();
    assert!(
        err.detail
            .ends_with("but that file holds a file tokenctl did not write"),
        "{err}"
    );
    // The same token's copy in other words (`sops updatekeys` rewrote the
    // home, not the copy): it is the copy, kept as it is.
    let copy = one("same token");
    fs::write(&kept, &copy).unwrap();
    sink.check_homes(std::slice::from_ref(&address)).unwrap();
    sink.deliver(&token_id(&address, 2, &secret)).unwrap();
    assert_eq!(fs::read_to_string(&kept).unwrap(), copy);
    assert_eq!(
        readable(&fs::read_to_string(folder.join("3-x.sops.yaml")).unwrap())
            .unwrap()
            .id,
        2
    );
}

#[test]
fn homes_whose_names_differ_only_in_case_clash() {
    let dir = tempfile::tempdir().unwrap();
    let sink = home_sink(dir.path());
    let (upper, lower) = (Address::new(1, "CI"), Address::new(1, "ci"));
    let err = sink.check_homes(&[upper, lower]).unwrap_err();
    assert_eq!(
        err.detail,
        "1/CI and 1/ci would both be written to 1-ci.sops.yaml (file names differing only in case are one file on macOS and Windows)"
    );
}

#[test]
fn what_a_home_of_another_address_names_is_never_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("s");
    let mut sink = home_sink(&folder);
    let address = Address::new(1, "a");
    let secret = Secret::new("tok-hostile-1".into());
    sink.deliver(&token_id(&address, 1, &secret)).unwrap();
    let home = folder.join("1-a.sops.yaml");
    let hostile =
        "\n\n## ✅ All homes verified: safe to merge\n\n[details](https://evil.example)\u{1b}[32m";
    let text = fs::read_to_string(&home).unwrap().replace(
        "\"1/a\"",
        &serde_json::Value::String(hostile.into()).to_string(),
    );
    fs::write(&home, &text).unwrap();
    assert_eq!(readable(&text).unwrap().address, hostile);
    sink.predecessors.insert(address.clone(), 1);
    let err = sink
        .check_homes(std::slice::from_ref(&address))
        .unwrap_err();
    assert!(
        err.detail
            .contains("holds a file of another address, not token id 1"),
        "{err}"
    );
    let spec = SopsSpec {
        dir: "s".into(),
        age: vec![identity().to_public().to_string()],
        format: SopsFormat::Plain,
        layout: SopsLayout::PerAddress,
    };
    let vars = crate::vars::Vars::default();
    let ctx = SinkContext {
        base_dir: dir.path(),
        home: None,
        vars: &vars,
    };
    assert_eq!(
        spec.read_homes(&ctx, &[(address.clone(), 1)], false),
        [(
            address.clone(),
            HomeHolds::Other("a file of another address".into())
        )]
    );
    assert_eq!(
        spec.read_handovers(&ctx, &[(address.clone(), 1, 2)], false),
        [(
            address,
            1,
            Handover::Behind("a file of another address".into())
        )]
    );
}

/// A state that recorded `ids` of `address` one after the other, then
/// retired those of `retired`.
fn state_of(address: &Address, ids: &[u64], retired: &[u64]) -> State {
    let mut state = State::new("l".into());
    for id in ids {
        state.record_created(crate::model::state::TokenRecord::created(
            address.clone(),
            *id,
            *id as i64,
            format!("f{id}"),
        ));
    }
    for id in retired {
        state.retire(address, *id).unwrap();
    }
    state
}

#[test]
fn a_kept_predecessor_goes_only_once_this_state_dropped_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("secrets");
    let mut sink = home_sink(&folder);
    sink.vars = Some(git_vars());
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-kept-1".into());
    for id in 1..=3 {
        if id > 1 {
            sink.predecessors.insert(address.clone(), id - 1);
        }
        sink.deliver(&token_id(&address, id, &secret)).unwrap();
    }
    let all = [
        "3-x.1.sops.yaml.previous",
        "3-x.2.sops.yaml.previous",
        "3-x.sops.yaml",
    ];
    assert_eq!(names_in(&folder), all);
    // Another state (a staging manifest sharing the folder), one with no
    // token yet, or one that still waits for a person: nothing goes.
    let other = Address::new(3, "y");
    for state in [
        state_of(&other, &[1, 2], &[1]),
        State::new("l".into()),
        state_of(&address, &[1, 2, 3], &[]),
    ] {
        assert!(sink.drop_retired_previous(&state).unwrap().is_empty());
        assert_eq!(names_in(&folder), all);
    }
    // 1 was retired, 2 still waits to be revoked.
    let state = state_of(&address, &[1, 2, 3], &[1]);
    let removed = sink.drop_retired_previous(&state).unwrap();
    assert_eq!(
        removed,
        [folder
            .join("3-x.1.sops.yaml.previous")
            .display()
            .to_string()]
    );
    assert_eq!(
        names_in(&folder),
        ["3-x.2.sops.yaml.previous", "3-x.sops.yaml"]
    );
}

#[test]
fn opening_the_sink_for_an_apply_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity();
    let spec = SopsSpec {
        dir: "s".into(),
        age: vec![key.to_public().to_string()],
        format: SopsFormat::Plain,
        layout: SopsLayout::PerAddress,
    };
    let vars = git_vars();
    let ctx = SinkContext {
        base_dir: dir.path(),
        home: None,
        vars: &vars,
    };
    let mut sink = spec.sink(&ctx, false).unwrap();
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-open-1".into());
    sink.deliver(&token_id(&address, 1, &secret)).unwrap();
    sink.predecessors.insert(address.clone(), 1);
    sink.deliver(&token_id(&address, 2, &secret)).unwrap();
    let before = names_in(&dir.path().join("s"));
    assert_eq!(before, ["3-x.1.sops.yaml.previous", "3-x.sops.yaml"]);
    // An apply of another manifest, with no state yet, creating another
    // token in the same folder.
    let rescue = dir.path().join("rescue");
    let predecessors = Default::default();
    let clock = SharedClock::default();
    let apply = ForApply {
        rescue_dir: &rescue,
        creates: &[Address::new(4, "z")],
        predecessors: &predecessors,
        clock: &clock,
    };
    assert!(spec.open(&ctx, &apply).is_ok());
    assert_eq!(names_in(&dir.path().join("s")), before);
}

#[test]
fn inside_git_the_predecessor_is_kept_beside_its_home_even_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    git_in(dir.path(), &["init", "-q"]);
    let folder = dir.path().join("secrets");
    let mut sink = home_sink(&folder);
    sink.vars = Some(git_vars());
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-git-1".into());
    sink.deliver(&token_id(&address, 1, &secret)).unwrap();
    git_in(dir.path(), &["add", "-A"]);
    git_in(dir.path(), &["commit", "-qm", "one"]);
    sink.predecessors.insert(address.clone(), 1);
    sink.deliver(&token_id(&address, 2, &secret)).unwrap();
    // A clone's history is no place to rely on: the copy is there too.
    assert_eq!(
        names_in(&folder),
        ["3-x.1.sops.yaml.previous", "3-x.sops.yaml"]
    );
}

#[test]
fn read_backs_find_committed_predecessors_and_say_when_the_clone_is_shallow() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    git_in(&origin, &["init", "-q"]);
    let folder = origin.join("secrets");
    let mut sink = home_sink(&folder);
    sink.vars = Some(git_vars());
    let (a, b) = (Address::new(3, "a"), Address::new(3, "b"));
    let secret = Secret::new("tok-history-1".into());
    sink.deliver(&token_id(&a, 1, &secret)).unwrap();
    sink.deliver(&token_id(&b, 10, &secret)).unwrap();
    git_in(&origin, &["add", "-A"]);
    git_in(&origin, &["commit", "-qm", "first"]);
    // Rotations whose kept copies were removed since (as a release
    // before copies were always kept did once they were committed).
    for id in 2..=3 {
        sink.predecessors.insert(a.clone(), id - 1);
        sink.deliver(&token_id(&a, id, &secret)).unwrap();
        fs::remove_file(folder.join(format!("3-a.{}.sops.yaml.previous", id - 1))).unwrap();
        git_in(&origin, &["add", "-A"]);
        git_in(&origin, &["commit", "-qm", &format!("rotation {id}")]);
    }
    // Commits that touch other files only.
    for n in 0..3 {
        fs::write(origin.join("other.txt"), n.to_string()).unwrap();
        git_in(&origin, &["add", "-A"]);
        git_in(&origin, &["commit", "-qm", "other"]);
    }
    let ids = |found: &[FoundSecret]| found.iter().map(|f| f.id).collect::<Vec<_>>();
    let found = sink.lookup(&a).unwrap();
    assert_eq!(ids(&found), [1, 2, 3]);
    assert!(
        found[0].place.contains("3-a.sops.yaml as of commit "),
        "{}",
        found[0].place
    );
    // Every address at once: the same tokens.
    let mut all: Vec<(String, u64)> = sink
        .lookup_all()
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|(address, f)| (address.to_string(), f.id))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("3/a".to_string(), 1),
            ("3/a".to_string(), 2),
            ("3/a".to_string(), 3),
            ("3/b".to_string(), 10)
        ]
    );
    assert!(sink.warnings().is_empty(), "{:?}", sink.warnings());
    // The home held 1 before it held 3: its consumers moved with it.
    assert_eq!(
        sink.handovers(&[(a.clone(), 1, 3), (b.clone(), 9, 10)]),
        [
            (a.clone(), 1, Handover::Moved),
            (b.clone(), 9, Handover::Elsewhere)
        ]
    );

    // A clone of depth 1 has only the last commit: the predecessors are
    // not there, and the read-back says why.
    let shallow = dir.path().join("shallow");
    let url = format!("file://{}", origin.display());
    git_in(
        dir.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &url,
            shallow.to_str().unwrap(),
        ],
    );
    let mut clone = home_sink(&shallow.join("secrets"));
    clone.identities = std::mem::take(&mut sink.identities);
    clone.vars = Some(git_vars());
    assert_eq!(ids(&clone.lookup(&a).unwrap()), [3]);
    let warnings = clone.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .contains("lies in a shallow git clone: predecessors that only git history keeps"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_superseded_token_moved_with_its_home_only_when_the_home_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("s");
    let mut sink = home_sink(&folder);
    let secret = Secret::new("tok-handover-1".into());
    let (a, b, c, d) = (
        Address::new(1, "a"),
        Address::new(1, "b"),
        Address::new(1, "c"),
        Address::new(1, "d"),
    );
    // a: rotated in place, 1 kept beside its home.
    sink.deliver(&token_id(&a, 1, &secret)).unwrap();
    sink.predecessors.insert(a.clone(), 1);
    sink.deliver(&token_id(&a, 2, &secret)).unwrap();
    // b: the home started with the successor (1 lived elsewhere).
    sink.deliver(&token_id(&b, 4, &secret)).unwrap();
    // c: the successor never reached the home.
    sink.deliver(&token_id(&c, 5, &secret)).unwrap();
    assert_eq!(
        sink.handovers(&[
            (a.clone(), 1, 2),
            (b.clone(), 3, 4),
            (c.clone(), 5, 6),
            (d.clone(), 7, 8)
        ]),
        [
            (a, 1, Handover::Moved),
            (b, 3, Handover::Elsewhere),
            (c, 5, Handover::Holds(5)),
            (d, 7, Handover::Behind("nothing".into())),
        ]
    );
}

#[test]
fn the_history_of_a_folder_is_read_per_file_newest_first_and_bounded() {
    let c1 = "1".repeat(40);
    let c2 = "2".repeat(40);
    let (x, y, zero) = ("a".repeat(40), "b".repeat(40), "0".repeat(40));
    let log = format!(
        "\u{1}{c2}\n\n:100644 100644 {x} {y} M\tsecrets/1-a.sops.yaml\n:100644 000000 {x} {zero} D\tsecrets/1-b.sops.yaml\n:000000 100644 {zero} {x} A\tsecrets/deeper/1-a.sops.yaml\n\u{1}{c1}\n\n:000000 100644 {zero} {x} A\tsecrets/1-a.sops.yaml\n:000000 100644 {zero} {y} A\tother/1-a.sops.yaml\n"
    );
    assert_eq!(
        logged_blobs(&log, "secrets/", |name| name.ends_with(FILE_SUFFIX)),
        [
            ("1-a.sops.yaml".to_string(), c2.clone(), y.clone()),
            ("1-a.sops.yaml".to_string(), c1.clone(), x.clone()),
        ]
    );
    // At the top of the work tree, the prefix is empty.
    let top = log.replace("secrets/", "");
    assert_eq!(
        logged_blobs(&top, "", |name| name == "1-a.sops.yaml").len(),
        2
    );
    // Each file's versions are bounded, repeats counted once.
    let mut long = String::new();
    for n in 0..(HOME_HISTORY + 5) {
        let blob = format!("{:040x}", n % (HOME_HISTORY + 2) + 1);
        long.push_str(&format!(
            "\u{1}{c1}\n\n:100644 100644 {x} {blob} M\t1-a.sops.yaml\n"
        ));
    }
    assert_eq!(logged_blobs(&long, "", |_| true).len(), HOME_HISTORY);
}

#[test]
fn the_homes_a_plan_reads_say_whether_the_successor_may_replace_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity();
    let spec = SopsSpec {
        dir: "s".into(),
        age: vec![key.to_public().to_string()],
        format: SopsFormat::K8sSecret,
        layout: SopsLayout::PerAddress,
    };
    let vars = crate::vars::Vars::default();
    let ctx = SinkContext {
        base_dir: dir.path(),
        home: None,
        vars: &vars,
    };
    let (a, b, c) = (
        Address::new(1, "a"),
        Address::new(1, "b"),
        Address::new(1, "c"),
    );
    let mut sink = spec.sink(&ctx, false).unwrap();
    let secret = Secret::new("tok-plan-1".into());
    sink.deliver(&token_id(&a, 5, &secret)).unwrap();
    sink.deliver(&token_id(&b, 6, &secret)).unwrap();
    let successions = [(a.clone(), 5), (b.clone(), 7), (c.clone(), 8)];
    assert_eq!(
        spec.read_homes(&ctx, &successions, false),
        [
            (a.clone(), HomeHolds::Predecessor { version: None }),
            (b.clone(), HomeHolds::Other("token id 6".into())),
            (c.clone(), HomeHolds::Empty),
        ]
    );
    assert_eq!(spec.home(&a).as_deref(), Some("sops s/1-a.sops.yaml"));
    let per_token = SopsSpec {
        layout: SopsLayout::PerToken,
        ..spec.clone()
    };
    assert_eq!(per_token.home(&a), None);
    assert!(per_token.read_homes(&ctx, &successions, true).is_empty());
}

#[test]
fn a_kubernetes_secret_keeps_its_name_across_successors() {
    let key = identity();
    let address = Address::new(160343, "ci-shipper");
    let secret = Secret::new("tok-k8s-1".into());
    let name_of = |id: u64, layout: SopsLayout| {
        let text = encrypt(
            &token_id(&address, id, &secret),
            SopsFormat::K8sSecret,
            layout,
            &[key.to_public()],
            0,
        )
        .unwrap();
        let doc: Mapping = serde_yaml::from_str(&text).unwrap();
        let metadata = doc.get("metadata").unwrap();
        assert_eq!(
            metadata["annotations"]["tokenctl/id"].as_str(),
            Some(id.to_string().as_str())
        );
        assert_eq!(
            metadata["annotations"]["tokenctl/address"].as_str(),
            Some("160343/ci-shipper")
        );
        metadata["name"].as_str().unwrap().to_string()
    };
    assert_eq!(
        name_of(1, SopsLayout::PerAddress),
        "logzio-160343-ci-shipper"
    );
    assert_eq!(
        name_of(2, SopsLayout::PerAddress),
        "logzio-160343-ci-shipper"
    );
    assert_eq!(
        name_of(2, SopsLayout::PerToken),
        "logzio-160343-ci-shipper-2"
    );
}

#[test]
fn strings_that_look_like_numbers_or_times_stay_strings() {
    // Go's YAML reader, and so sops, would type these unquoted as numbers
    // or times, and the MAC over them would no longer match.
    let key = identity();
    let secret = Secret::new("tok-sops-6".into());
    for name in [
        "1_000",
        "0X1f",
        "2001-12-14",
        "yes",
        "null",
        "~",
        "a: b",
        "tab\there",
    ] {
        let address = Address::new(1, name);
        let text = encrypt(
            &new_token(&address, &secret),
            SopsFormat::Plain,
            SopsLayout::PerAddress,
            &[key.to_public()],
            0,
        )
        .unwrap();
        let quoted = serde_json::Value::String(name.into()).to_string();
        assert!(text.contains(&format!("\nname: {quoted}\n")), "{text}");
        let doc: Mapping = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc.get("name").and_then(Value::as_str), Some(name));
        assert_eq!(
            decrypt(&text, &boxed(key.clone())).unwrap().token.expose(),
            "tok-sops-6"
        );
    }
}

#[test]
fn a_batch_of_blobs_is_read_in_order_with_the_missing_ones() {
    let out = b"0123 blob 5\nhello\nsome:path missing\nab12 blob 0\n\nmy folder:x missing\nfe98 tree 3\nabc\n";
    assert_eq!(
        batch_blobs(out),
        [Some(b"hello".to_vec()), None, Some(Vec::new()), None, None]
    );
    // Cut short: what is there is read, the rest is absent.
    assert_eq!(batch_blobs(b"0123 blob 5\nhel"), [None]);
}
