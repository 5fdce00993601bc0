//! The JSON Schema of the manifest, for editors (yaml-language-server) and
//! CI linters. The manifest parser stays the authority; a test keeps the two
//! in step.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::manifest::RawManifest;

/// Where the schema is published, for editors that fetch it by URL.
const SCHEMA_ID: &str = "https://github.com/tokenctl/tokenctl/tokenctl.schema.json";

/// Returns the JSON Schema (draft-07) of a version 1 manifest, generated
/// from the types the parser reads: a key the parser accepts is in the
/// schema because it is a field of those types. `S` is the type that reads
/// `secrets`, as for [`crate::manifest::Manifest::parse`].
pub fn manifest_schema<S: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft07();
    settings.inline_subschemas = true;
    let schema = settings
        .into_generator()
        .into_root_schema_for::<RawManifest<S>>();
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
pub fn manifest_schema_text<S: JsonSchema>() -> String {
    serde_json::to_string_pretty(&manifest_schema::<S>()).unwrap_or_default()
}
