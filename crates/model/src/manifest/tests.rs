use serde::de::IgnoredAny;

use super::*;

/// Parses with the `secrets` map read but not looked at: the sinks' specs
/// are their own crate's, tested there.
fn parse(text: &str, origin: &str) -> Result<Parsed<IgnoredAny>, ManifestError> {
    Manifest::parse(text, origin)
}

const GOOD: &str = "\
version: 1
region: eu
secrets:
  file: secrets/tokens.jsonl
tokens:
  - name: ci-shipper
    accountId: 160343
  - name: grafana-reader
    accountId: 160344
";

fn reject(text: &str) -> ManifestError {
    match parse(text, "tokens.yaml") {
        Ok(parsed) => panic!("accepted: {:?}", parsed.manifest),
        Err(err) => err,
    }
}

fn with_tokens(tokens: &str) -> String {
    format!("version: 1\nregion: us\ntokens:\n{tokens}")
}

#[test]
fn parses_a_valid_manifest() {
    let parsed = parse(GOOD, "tokens.yaml").unwrap();
    assert!(parsed.warnings.is_empty());
    let manifest = parsed.manifest;
    assert_eq!(manifest.endpoint, Endpoint::Region(Region::Eu));
    assert_eq!(manifest.endpoint.base_url(), "https://api-eu.logz.io");
    assert_eq!(
        manifest.tokens,
        [
            Address::new(160343, "ci-shipper"),
            Address::new(160344, "grafana-reader")
        ]
    );
}

#[test]
fn accepts_an_empty_token_list() {
    let parsed = parse("version: 1\nregion: us\ntokens: []\n", "m").unwrap();
    assert!(parsed.manifest.tokens.is_empty());
}

#[test]
fn rejects_unknown_keys_with_their_place() {
    let err = reject(&with_tokens(
        "  - name: a\n    accountId: 1\n    acountId: 2\n",
    ));
    assert!(err.message.contains("unknown field `acountId`"), "{err}");
    assert_eq!((err.line, err.column), (6, 5), "{err}");
    assert!(err.hint.is_some());

    let err = reject("version: 1\nregion: us\nregoin: eu\ntokens: []\n");
    assert!(err.message.contains("unknown field `regoin`"), "{err}");
}

#[test]
fn rejects_a_quoted_account_id() {
    let err = reject(&with_tokens("  - name: a\n    accountId: \"160343\"\n"));
    assert_eq!((err.line, err.column), (5, 16), "{err}");
    assert!(err.message.contains("tokens[0].accountId"), "{err}");
    assert!(err.message.contains("the string \"160343\""), "{err}");
    assert!(err.hint.unwrap().contains("without quotes"));
}

#[test]
fn rejects_non_positive_and_fractional_account_ids() {
    for (value, expected) in [
        ("0", "found 0"),
        ("-7", "found -7"),
        ("1.5", "floating point"),
    ] {
        let err = reject(&with_tokens(&format!(
            "  - name: a\n    accountId: {value}\n"
        )));
        assert!(err.message.contains(expected), "{value}: {err}");
        assert_eq!(err.line, 5, "{err}");
    }
}

#[test]
fn rejects_a_number_or_boolean_as_name() {
    for value in ["123", "true", "1.5", "~"] {
        let err = reject(&with_tokens(&format!(
            "  - name: {value}\n    accountId: 1\n"
        )));
        assert_eq!(err.line, 4, "{value}: {err}");
        assert!(err.message.contains("tokens[0].name"), "{value}: {err}");
        assert!(
            err.hint.as_deref().unwrap_or("").contains("quote"),
            "{err:?}"
        );
    }
    // Quoted, the same text is a name.
    let text = with_tokens("  - name: \"123\"\n    accountId: 1\n");
    let parsed = parse(&text, "m").unwrap();
    assert_eq!(parsed.manifest.tokens, [Address::new(1, "123")]);
}

#[test]
fn rejects_empty_blank_and_control_character_names() {
    for (value, expected) in [
        ("\"\"", "must not be empty"),
        ("\"   \"", "must not be empty"),
        ("\"a\\tb\"", "control character"),
        ("\"bell\\a\"", "control character"),
        ("\" padded\"", "white space"),
    ] {
        let err = reject(&with_tokens(&format!(
            "  - name: {value}\n    accountId: 1\n"
        )));
        assert!(err.message.contains(expected), "{value}: {err}");
        assert_eq!((err.line, err.column), (4, 11), "{value}: {err}");
    }
}

#[test]
fn rejects_a_duplicate_address_naming_both_lines() {
    let err = reject(&with_tokens(
        "  - name: a\n    accountId: 1\n  - name: b\n    accountId: 1\n  - name: a\n    accountId: 1\n",
    ));
    assert!(err.message.contains("1/a is declared twice"), "{err}");
    assert!(err.message.contains("line 4 and again at line 8"), "{err}");
    assert_eq!(err.line, 8);
}

#[test]
fn same_name_in_two_accounts_is_fine() {
    let text = with_tokens("  - name: a\n    accountId: 1\n  - name: a\n    accountId: 2\n");
    assert_eq!(parse(&text, "m").unwrap().manifest.tokens.len(), 2);
}

#[test]
fn rejects_an_unknown_region_listing_valid_ones() {
    let err = reject("version: 1\nregion: mars\ntokens: []\n");
    assert_eq!((err.line, err.column), (2, 9));
    assert!(err.message.contains("unknown region `mars`"), "{err}");
    assert!(err.message.contains("us, eu, uk, ca, au"), "{err}");
}

#[test]
fn warns_about_deprecated_regions() {
    let parsed = parse("version: 1\nregion: nl\ntokens: []\n", "m").unwrap();
    assert_eq!(
        parsed.manifest.endpoint.base_url(),
        "https://api-nl.logz.io"
    );
    assert_eq!(parsed.warnings.len(), 1);
    assert!(parsed.warnings[0].contains("deprecated"));
}

#[test]
fn rejects_a_missing_version() {
    let err = reject("region: us\ntokens: []\n");
    assert!(err.message.contains("no `version`"), "{err}");
    assert!(err.hint.unwrap().contains("version: 1"));
}

#[test]
fn rejects_a_newer_version() {
    let err = reject("version: 2\nregion: us\ntokens: []\n");
    assert_eq!(err.line, 1);
    assert!(err.message.contains("newer than this tokenctl"), "{err}");
    assert!(err.message.contains("upgrade"), "{err}");
}

#[test]
fn requires_exactly_one_of_region_and_api_url() {
    let err = reject("version: 1\ntokens: []\n");
    assert!(err.message.contains("neither"), "{err}");
    let err = reject("version: 1\nregion: us\napi_url: https://x.example\ntokens: []\n");
    assert!(err.message.contains("both"), "{err}");
}

#[test]
fn accepts_https_and_loopback_http_api_urls() {
    for (url, expected) in [
        ("https://logz.example/", "https://logz.example"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:9/api/", "http://localhost:9/api"),
        ("http://[::1]:9", "http://[::1]:9"),
    ] {
        let text = format!("version: 1\napi_url: {url}\ntokens: []\n");
        let parsed = parse(&text, "m").unwrap();
        assert_eq!(parsed.manifest.endpoint, Endpoint::Url(expected.into()));
    }
}

#[test]
fn refuses_http_to_a_remote_host() {
    let err = reject("version: 1\napi_url: http://api.logz.io\ntokens: []\n");
    assert_eq!(err.line, 2);
    assert!(err.message.contains("not loopback"), "{err}");
    let err = reject("version: 1\napi_url: ftp://x\ntokens: []\n");
    assert!(err.message.contains("scheme"), "{err}");
}

#[test]
fn reports_yaml_syntax_errors_with_their_place() {
    let err = reject("version: 1\ntokens:\n  - name: a\n   accountId: [\n");
    assert!(err.line >= 3, "{err}");
    assert!(!err.message.contains(" at line "), "{err}");
}

#[test]
fn rejects_an_empty_file() {
    let err = reject("");
    assert!(err.message.contains("empty"), "{err}");
    assert!(err.hint.is_some());
}

#[test]
fn missing_token_fields_are_named() {
    let err = reject(&with_tokens("  - name: a\n"));
    assert!(err.message.contains("missing field `accountId`"), "{err}");
    assert_eq!(err.line, 4);
}

#[test]
fn accepts_a_byte_order_mark() {
    let parsed = parse(&format!("\u{feff}{GOOD}"), "tokens.yaml").unwrap();
    assert_eq!(parsed.manifest.tokens.len(), 2);
}

#[test]
fn rejects_invisible_and_bidi_characters_naming_the_code_point() {
    for (name, code) in [
        ("ci-\u{200b}shipper", "U+200B (ZERO WIDTH SPACE)"),
        ("ci-\u{202e}reppihs", "U+202E (a bidirectional control)"),
        ("ci-\u{feff}shipper", "U+FEFF (BYTE ORDER MARK)"),
        ("ci-\u{ad}shipper", "U+00AD (SOFT HYPHEN)"),
        ("tag\u{e0041}", "U+E0041"),
    ] {
        let err = reject(&with_tokens(&format!(
            "  - name: \"{name}\"\n    accountId: 1\n"
        )));
        assert!(err.message.contains(code), "{name:?}: {err}");
        assert_eq!(err.line, 4, "{err}");
        let hint = err.hint.unwrap_or_default();
        assert!(hint.contains("visible characters"), "{hint}");
    }
    // Letters from other scripts are names like any other.
    assert!(
        parse(
            &with_tokens("  - name: grafana-lecteur-é-東京\n    accountId: 1\n"),
            "m"
        )
        .is_ok()
    );
}

#[test]
fn name_hints_fit_the_problem() {
    let spaces = reject(&with_tokens("  - name: \" padded \"\n    accountId: 1\n"));
    assert_eq!(
        spaces.hint.as_deref(),
        Some("remove the white space at the start or end of the name")
    );
    let control = reject(&with_tokens("  - name: \"a\\tb\"\n    accountId: 1\n"));
    assert!(control.message.contains("U+0009"), "{control}");
    assert!(!control.hint.unwrap_or_default().contains("quote"));
    let number = reject(&with_tokens("  - name: 2024\n    accountId: 1\n"));
    assert!(number.hint.unwrap_or_default().contains("quote"));
}

#[test]
fn an_account_id_with_a_leading_zero_is_explained() {
    let err = reject(&with_tokens("  - name: a\n    accountId: 0471127\n"));
    assert!(err.message.contains("leading zero"), "{err}");
    assert!(err.message.contains("accountId: 471127"), "{err}");
    assert!(!err.message.contains("found the string"), "{err}");
}

#[test]
fn a_tokens_key_without_a_value_is_refused() {
    let err = reject("version: 1\nregion: us\ntokens:\n");
    assert!(err.message.contains("`tokens` has no value"), "{err}");
    assert!(err.hint.unwrap_or_default().contains("tokens: []"));
    let missing = reject("version: 1\nregion: us\n");
    assert!(missing.message.contains("tokens"), "{missing}");
}

#[test]
fn reads_lifecycle_settings_with_per_token_overrides() {
    let text = "version: 1\nregion: us\nrotate_after: 90d\ntokens:\n  - name: a\n    accountId: 1\n  - name: b\n    accountId: 1\n    rotate_after: 30d\n    on_revoked: recreate\n";
    let lifecycle = parse(text, "m").unwrap().manifest.lifecycle;
    let day = 86_400;
    let a = lifecycle.policy(&Address::new(1, "a"));
    assert_eq!(a.rotate_after, Some(90 * day));
    assert_eq!(a.on_revoked, OnRevoked::Report);
    let b = lifecycle.policy(&Address::new(1, "b"));
    assert_eq!(b.rotate_after, Some(30 * day));
    assert_eq!(b.on_revoked, OnRevoked::Recreate);
    assert!(lifecycle.recreates_any());
}

#[test]
fn rejects_bad_lifecycle_settings_with_their_place() {
    let err = reject("version: 1\nregion: us\nrotate_after: soon\ntokens: []\n");
    assert!(
        err.message.contains("rotate_after `soon` is not an age"),
        "{err}"
    );
    assert_eq!(err.line, 3, "{err}");
    let err = reject("version: 1\nregion: us\nrotate_after: 5m\ntokens: []\n");
    assert!(err.message.contains("shorter than an hour"), "{err}");
    let err = reject(&with_tokens(
        "  - name: a\n    accountId: 1\n    on_revoked: delete\n",
    ));
    assert!(
        err.message.contains("on_revoked `delete` is not known"),
        "{err}"
    );
    assert_eq!(err.line, 6, "{err}");
}

#[test]
fn refuses_reserved_words_and_postgresql_schemas_as_schema_names() {
    for (name, says) in [
        ("select", "reserved word"),
        ("user", "reserved word"),
        ("information_schema", "belongs to PostgreSQL"),
        ("pg_temp", "belongs to PostgreSQL"),
    ] {
        let text = format!(
            "version: 1\nregion: eu\nbackend:\n  postgres:\n    schema: {name}\ntokens: []\n"
        );
        let err = reject(&text);
        assert_eq!((err.line, err.column), (5, 13), "{name}: {err}");
        assert!(err.message.contains(says), "{name}: {err}");
        assert!(err.to_string().starts_with("tokens.yaml:5:13"), "{err}");
    }
    let text = "version: 1\nregion: eu\nbackend:\n  postgres:\n    schema: users\ntokens: []\n";
    assert!(parse(text, "tokens.yaml").is_ok());
    let mut sorted = RESERVED_WORDS.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, RESERVED_WORDS, "binary search needs them sorted");
}
