//! The process environment, read once: what the commands and the sinks
//! read, and what a child process is given.
//!
//! Credentials tokenctl reads from the environment stay inside tokenctl:
//! [`Vars::for_child`] leaves every one of [`CREDENTIALS`] out of a child's
//! environment unless the manifest passes it by name.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// The variables that carry a credential, or say where one is: tokenctl
/// reads each of them, and no child process inherits one.
pub const CREDENTIALS: [&str; 9] = [
    "LOGZIO_API_TOKEN",
    "LOGZIO_API_TOKEN_FILE",
    "VAULT_TOKEN",
    "VAULT_TOKEN_FILE",
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_FILE",
    "TOKENCTL_PG_CONN_STR",
    "PGPASSWORD",
    "PGPASSFILE",
];

/// Addresses tokenctl reads that may carry credentials in their userinfo.
const ADDRESSES: [&str; 2] = ["VAULT_ADDR", "LOGZIO_API_URL"];

/// Returns `url` without its userinfo (`https://user:pw@host` becomes
/// `https://host`).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

/// A snapshot of environment variables.
// No Debug: it holds credentials.
#[derive(Clone, Default)]
pub struct Vars {
    vars: BTreeMap<OsString, OsString>,
}

impl Vars {
    /// Reads the environment of this process.
    #[allow(clippy::disallowed_methods)] // ALLOWED: the one reader of the process environment.
    pub fn from_process() -> Self {
        Vars::from_pairs(std::env::vars_os())
    }

    /// Returns the given variables, as a test or an embedding sets them.
    pub fn from_pairs<K: Into<OsString>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        // A credential is registered for masking where it is used (the
        // owner token, Vault's token, a database password), not here: a
        // variable this command does not use (PGPASSWORD=postgres with the
        // file backend) must not mask ordinary words in its output.
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Vars { vars }
    }

    /// Returns a variable's value; an empty or non-UTF-8 one counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(&OsString::from(name))
            .and_then(|v| v.to_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// Returns a copy with `name` set, for tests.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Returns the environment of a child process: every variable but the
    /// credentials, except those in `pass` (named in the manifest). The
    /// addresses tokenctl reads (`VAULT_ADDR`, `LOGZIO_API_URL`) go without
    /// any credentials in their userinfo, unless passed by name.
    pub fn for_child(&self, pass: &[String]) -> Vec<(OsString, OsString)> {
        self.vars
            .iter()
            .filter_map(|(name, value)| {
                let text = name.to_string_lossy();
                let passed = pass.iter().any(|p| *p == text);
                if CREDENTIALS.contains(&text.as_ref()) && !passed {
                    return None;
                }
                let value = match (
                    ADDRESSES.contains(&text.as_ref()) && !passed,
                    value.to_str(),
                ) {
                    (true, Some(url)) => OsString::from(without_userinfo(url)),
                    _ => value.clone(),
                };
                Some((name.clone(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_no_credential_unless_passed() {
        let vars = Vars::from_pairs([
            ("PATH", "/bin"),
            ("VAULT_TOKEN", "hvs.vars-unit-token"),
            ("PGPASSWORD", "vars-unit-password"),
            ("TOKENCTL_PG_CONN_STR", "postgres://u:vars-unit-pw@h/db"),
            ("SOPS_AGE_KEY_FILE", "/keys.txt"),
        ]);
        let names = |env: Vec<(OsString, OsString)>| -> Vec<String> {
            env.into_iter()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(vars.for_child(&[])), ["PATH"]);
        assert_eq!(
            names(vars.for_child(&["VAULT_TOKEN".into()])),
            ["PATH", "VAULT_TOKEN"]
        );
    }

    #[test]
    fn a_child_gets_addresses_without_their_credentials() {
        let vars = Vars::from_pairs([
            ("VAULT_ADDR", "https://ci:vars-pw@vault.example:8200/"),
            ("LOGZIO_API_URL", "http://127.0.0.1:9/"),
        ]);
        let env: Vec<(String, String)> = vars
            .for_child(&[])
            .into_iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        assert_eq!(
            env,
            [
                ("LOGZIO_API_URL".into(), "http://127.0.0.1:9/".into()),
                ("VAULT_ADDR".into(), "https://vault.example:8200/".into())
            ]
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let vars = Vars::from_pairs([("A", " "), ("B", "b")]);
        assert_eq!(vars.get("A"), None);
        assert_eq!(vars.get("B"), Some("b"));
    }
}
