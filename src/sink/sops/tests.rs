use super::*;
use crate::time::TestClock;

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
}

#[test]
fn kubernetes_names_are_rfc_1123_subdomains() {
    for name in ["CI Shipper", "..", "a__b", "-x-", "ü/ö", &"Y".repeat(300)] {
        let got = k8s_name(&Address::new(160343, name), 5);
        assert!(got.len() <= 253, "{got}");
        assert!(
            got.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{got}"
        );
        assert!(got.starts_with("logzio-") && got.ends_with("-5"), "{got}");
        assert!(!got.contains("--"), "{got}");
    }
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

#[test]
fn the_sink_writes_new_files_and_finds_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity();
    let mut sink = SopsSink::new(
        dir.path().join("secrets"),
        vec![key.to_public()],
        SopsFormat::Plain,
        boxed(key),
    )
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
    let names: Vec<String> = fs::read_dir(dir.path().join("secrets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["3-x-42.sops.yaml"]);
    // The file records the time the sink's clock told.
    let text = fs::read_to_string(dir.path().join("secrets/3-x-42.sops.yaml")).unwrap();
    assert!(
        text.contains("lastmodified: \"2023-11-14T22:15:00Z\""),
        "{text}"
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
