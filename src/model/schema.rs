//! The JSON Schema of the manifest, for editors (yaml-language-server) and
//! CI linters. The manifest parser stays the authority; a test keeps the two
//! in step.

use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::model::manifest::RawManifest;

/// Where the schema is published, for editors that fetch it by URL.
const SCHEMA_ID: &str = "https://github.com/tokenctl/tokenctl/tokenctl.schema.json";

/// Returns the JSON Schema (draft-07) of a version 1 manifest, generated
/// from the types the parser reads: a key the parser accepts is in the
/// schema because it is a field of those types.
pub fn manifest_schema() -> Value {
    let mut settings = SchemaSettings::draft07();
    settings.inline_subschemas = true;
    let schema = settings
        .into_generator()
        .into_root_schema_for::<RawManifest>();
    let mut value = schema.to_value();
    without_null(&mut value);
    if let Some(object) = value.as_object_mut() {
        object.insert("$id".into(), Value::from(SCHEMA_ID));
    }
    value
}

/// Removes `null` from every `type` and `enum`: an optional key of the
/// manifest is left out when not wanted, and a `null` value is never what
/// an editor should suggest (for `version` or `region`, the parser would
/// refuse the manifest).
fn without_null(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    object.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(values)) = object.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            object.values_mut().for_each(without_null);
        }
        Value::Array(items) => items.iter_mut().for_each(without_null),
        _ => {}
    }
}

/// Returns the schema as pretty-printed JSON.
pub fn manifest_schema_text() -> String {
    serde_json::to_string_pretty(&manifest_schema()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::Manifest;

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn every_key_the_schema_allows_the_parser_accepts() {
        let schema = manifest_schema();
        assert_eq!(
            keys(&schema),
            [
                "api_url",
                "backend",
                "on_revoked",
                "region",
                "rotate_after",
                "secrets",
                "tokens",
                "version"
            ]
        );
        let mut sinks: Vec<&str> = crate::sink::SinkSpec::KEYS.to_vec();
        sinks.sort();
        assert_eq!(keys(&schema["properties"]["secrets"]), sinks);
        let secrets = &schema["properties"]["secrets"]["properties"];
        assert_eq!(keys(&secrets["sops"]), ["age", "dir", "format", "layout"]);
        assert_eq!(keys(&secrets["vault"]), ["mount", "path"]);
        for format in secrets["sops"]["properties"]["format"]["enum"]
            .as_array()
            .unwrap()
        {
            let format = format.as_str().unwrap();
            assert!(
                crate::sink::sops::SopsFormat::from_name(format).is_some(),
                "{format}"
            );
        }
        assert_eq!(
            keys(&schema["properties"]["backend"]["properties"]["postgres"]),
            ["schema", "state"]
        );
        assert_eq!(
            keys(&schema["properties"]["tokens"]["items"]),
            ["accountId", "name", "on_revoked", "rotate_after"]
        );
        let full = "version: 1\nregion: eu\nrotate_after: 90d\non_revoked: recreate\nbackend:\n  postgres:\n    schema: tk_1\n    state: team/prod\nsecrets:\n  file: s.jsonl\n  exec: [x]\n  sops:\n    dir: s\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\n    format: plain\n    layout: per-token\n  vault:\n    mount: secret\n    path: \"t/{accountId}/{name}\"\ntokens:\n  - name: a\n    accountId: 1\n    rotate_after: 30d\n    on_revoked: report\n";
        assert!(Manifest::parse(full, "m").is_ok());
        let regions = schema["properties"]["region"]["enum"].as_array().unwrap();
        for region in regions {
            let text = format!(
                "version: 1\nregion: {}\ntokens: []\n",
                region.as_str().unwrap()
            );
            assert!(Manifest::parse(&text, "m").is_ok(), "{region}");
        }
    }

    #[test]
    fn keys_outside_the_schema_are_rejected_by_the_parser_too() {
        for extra in [
            "owner: x\n",
            "secrets:\n  vault: x\n",
            "backend:\n  postgres:\n    conn_str: x\n",
            "backend:\n  postgres:\n    schema: Bad-Name\n",
            "backend:\n  s3: {}\n",
            "secrets:\n  s3: x\n",
        ] {
            let text = format!("version: 1\nregion: eu\n{extra}tokens: []\n");
            assert!(Manifest::parse(&text, "m").is_err(), "{extra}");
        }
        let text = "version: 1\nregion: eu\ntokens:\n  - name: a\n    accountId: 1\n    scope: x\n";
        assert!(Manifest::parse(text, "m").is_err());
    }

    #[test]
    fn the_committed_schema_file_is_current() {
        let committed = include_str!("../../tokenctl.schema.json");
        assert_eq!(
            committed.trim_end(),
            manifest_schema_text(),
            "run `cargo run -- schema > tokenctl.schema.json`"
        );
    }
}
