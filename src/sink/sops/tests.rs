use super::*;
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
        (foreign.as_str(), "holds a file of 3/y"),
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

#[test]
fn a_home_that_changes_before_the_rename_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SopsSink::new(
        dir.path().into(),
        vec![identity().to_public()],
        SopsFormat::Plain,
        Vec::new(),
    );
    let path = dir.path().join("h.sops.yaml");
    fs::write(&path, "theirs\n").unwrap();
    assert!(!sink.replace(&path, "ours\n", "new\n").unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), "theirs\n");
    assert!(sink.replace(&path, "theirs\n", "new\n").unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
    // No temp file is left behind.
    assert_eq!(names_in(dir.path()), ["h.sops.yaml"]);
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

#[test]
fn outside_git_a_kept_predecessor_goes_once_retired() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("secrets");
    let mut sink = SopsSink::new(
        folder.clone(),
        vec![identity().to_public()],
        SopsFormat::Plain,
        Vec::new(),
    );
    // git runs on the test process's PATH.
    let vars = crate::vars::Vars::from_process();
    let path = vars.get("PATH").unwrap_or_default();
    sink.vars = Some(crate::vars::Vars::from_pairs([("PATH", path)]));
    assert!(!sink.in_git(), "{} is in a git work tree", folder.display());
    sink.check_writable().unwrap();
    let address = Address::new(3, "x");
    let secret = Secret::new("tok-kept-1".into());
    for id in 1..=3 {
        if id > 1 {
            sink.predecessors.insert(address.clone(), id - 1);
        }
        sink.deliver(&token_id(&address, id, &secret)).unwrap();
    }
    assert_eq!(
        names_in(&folder),
        [
            "3-x.1.sops.yaml.previous",
            "3-x.2.sops.yaml.previous",
            "3-x.sops.yaml"
        ]
    );
    // 1 was retired, 2 still waits to be revoked.
    let recorded: rustc_hash::FxHashSet<u64> = [2, 3].into_iter().collect();
    sink.drop_settled_previous(&recorded);
    assert_eq!(
        names_in(&folder),
        ["3-x.2.sops.yaml.previous", "3-x.sops.yaml"]
    );
}
