//! The JSON Schema of the manifest, for editors (yaml-language-server) and
//! CI linters. The manifest parser stays the authority; a test keeps the two
//! in step.

use serde_json::{Value, json};

/// Returns the JSON Schema (draft-07) of a version 1 manifest.
pub fn manifest_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://github.com/tokenctl/tokenctl/tokenctl.schema.json",
        "title": "tokenctl manifest",
        "description": "Logz.io sub-account API tokens that should exist.",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "tokens"],
        "oneOf": [
            { "required": ["region"], "not": { "required": ["api_url"] } },
            { "required": ["api_url"], "not": { "required": ["region"] } }
        ],
        "properties": {
            "version": {
                "description": "Manifest format version.",
                "const": 1
            },
            "region": {
                "description": "Logz.io region of the owner account (nl and wa are deprecated).",
                "enum": ["us", "eu", "uk", "ca", "au", "nl", "wa"]
            },
            "api_url": {
                "description": "API base URL instead of a region: https://, or http:// to a loopback host.",
                "type": "string",
                "pattern": "^https?://"
            },
            "secrets": {
                "description": "Where new token values go.",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "file": {
                        "description": "JSON Lines file, relative to the manifest's folder; mode 0600; must be git-ignored.",
                        "type": "string",
                        "minLength": 1
                    },
                    "exec": {
                        "description": "Command run once per new token, with its JSON object on stdin.",
                        "type": "array",
                        "items": { "type": "string" },
                        "minItems": 1
                    },
                    "sops": {
                        "description": "One SOPS file per new token, only the token encrypted, to age recipients; meant to be committed.",
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["dir", "age"],
                        "properties": {
                            "dir": {
                                "description": "Folder of the SOPS files, relative to the manifest's folder.",
                                "type": "string",
                                "minLength": 1
                            },
                            "age": {
                                "description": "age recipients (public keys) that can decrypt the files.",
                                "type": "array",
                                "minItems": 1,
                                "items": { "type": "string", "pattern": "^age1[0-9a-z]+$" }
                            },
                            "format": {
                                "description": "plain (the token's fields) or k8s-secret (a Kubernetes v1 Secret with stringData.token).",
                                "enum": ["plain", "k8s-secret"]
                            }
                        }
                    },
                    "vault": {
                        "description": "KV version 2 on Vault or OpenBao; address and token from VAULT_ADDR and VAULT_TOKEN (or VAULT_TOKEN_FILE).",
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["mount", "path"],
                        "properties": {
                            "mount": {
                                "description": "Mount of the KV version 2 engine, e.g. secret.",
                                "type": "string",
                                "pattern": "^[^/]+(/[^/]+)*$"
                            },
                            "path": {
                                "description": "Path template under the mount with {accountId}, {name} and {id}; it must tell tokens apart.",
                                "type": "string",
                                "pattern": "^[^/]+(/[^/]+)*$"
                            }
                        }
                    }
                }
            },
            "rotate_after": rotate_after(),
            "on_revoked": on_revoked(),
            "backend": {
                "description": "Where the state, its journal and its lock live. Without it: the file given by --state.",
                "type": "object",
                "additionalProperties": false,
                "required": ["postgres"],
                "properties": {
                    "postgres": {
                        "description": "A PostgreSQL database; the connection string comes only from TOKENCTL_PG_CONN_STR.",
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "schema": {
                                "description": "Schema of tokenctl's tables (default tokenctl), created on first use.",
                                "type": "string",
                                "pattern": "^[a-z_][a-z0-9_]{0,62}$"
                            },
                            "state": {
                                "description": "Name of this state; several can share one schema (default default).",
                                "type": "string",
                                "pattern": "^[A-Za-z0-9._/-]{1,200}$"
                            }
                        }
                    }
                }
            },
            "tokens": {
                "description": "The tokens that should exist; each address accountId/name is unique.",
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name", "accountId"],
                    "properties": {
                        "name": {
                            "description": "Token name: printable, not blank, no surrounding white space.",
                            "type": "string",
                            "minLength": 1,
                            "pattern": "^\\S(.*\\S)?$"
                        },
                        "accountId": {
                            "description": "Sub-account id.",
                            "type": "integer",
                            "minimum": 1
                        },
                        "rotate_after": rotate_after(),
                        "on_revoked": on_revoked()
                    }
                }
            }
        }
    })
}

fn rotate_after() -> Value {
    json!({
        "description": "Age after which apply creates a successor and keeps the old token to be revoked, e.g. 90d (at least 1h). On a token, it wins over the top level.",
        "type": "string",
        "pattern": "^\\s*[0-9]"
    })
}

fn on_revoked() -> Value {
    json!({
        "description": "What a refresh that finds the token revoked plans: report (the default) or recreate. On a token, it wins over the top level.",
        "enum": ["report", "recreate"]
    })
}

/// Returns the schema as pretty-printed JSON.
pub fn manifest_schema_text() -> String {
    serde_json::to_string_pretty(&manifest_schema()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

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
        assert_eq!(
            keys(&schema["properties"]["secrets"]),
            ["exec", "file", "sops", "vault"]
        );
        let secrets = &schema["properties"]["secrets"]["properties"];
        assert_eq!(keys(&secrets["sops"]), ["age", "dir", "format"]);
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
        let full = "version: 1\nregion: eu\nrotate_after: 90d\non_revoked: recreate\nbackend:\n  postgres:\n    schema: tk_1\n    state: team/prod\nsecrets:\n  file: s.jsonl\n  exec: [x]\n  sops:\n    dir: s\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\n    format: plain\n  vault:\n    mount: secret\n    path: \"t/{accountId}/{name}\"\ntokens:\n  - name: a\n    accountId: 1\n    rotate_after: 30d\n    on_revoked: report\n";
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
        let committed = include_str!("../tokenctl.schema.json");
        assert_eq!(
            committed.trim_end(),
            manifest_schema_text(),
            "run `cargo run -- schema > tokenctl.schema.json`"
        );
    }
}
