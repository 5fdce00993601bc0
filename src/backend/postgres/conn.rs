//! The connection string: parsed, checked for a safe TLS mode, and named
//! without its password.
//!
//! tokio-postgres knows `sslmode` disable/prefer/require only and would
//! fall back to plain text under `prefer`; libpq's `verify-full` and
//! `sslrootcert` are read here instead, and the rest is handed on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};

use super::PgError;

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain text: loopback and unix sockets only.
    Disable,
    /// TLS, the server's certificate checked against `roots` (the file of
    /// `sslrootcert`, else the public web roots), host name included.
    VerifyFull { roots: Option<PathBuf> },
}

/// A checked connection string.
#[derive(Clone)]
pub struct ConnSpec {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
}

impl std::fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnSpec({})", self.describe())
    }
}

impl ConnSpec {
    /// Parses `text` (a `postgres://` URI or `key=value` pairs); `password`
    /// (from `PGPASSWORD`) is used when the string has none.
    ///
    /// Every password is registered for masking before anything can fail,
    /// and no error quotes the string or any value in it: a string that
    /// does not parse may hold its password anywhere.
    pub fn parse(text: &str, password: Option<&str>) -> Result<ConnSpec, PgError> {
        let text = text.trim();
        register_passwords(text);
        if let Some(password) = password {
            crate::redact::register(password);
        }
        let (rest, params) = if text.starts_with("postgres://") || text.starts_with("postgresql://")
        {
            split_uri(text)?
        } else if looks_like_uri(text) {
            return Err(PgError::ConnStr(
                "it looks like a URI but does not start with postgres:// or postgresql://".into(),
            ));
        } else {
            split_pairs(text)?
        };
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(|err| parse_error(&err))?;
        if config.get_password().is_none()
            && let Some(password) = password
        {
            config.password(password);
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host("localhost");
        }
        let local = is_local(&config);
        let mode = params.sslmode.as_deref();
        let tls = match mode {
            Some("disable") if local => Tls::Disable,
            Some("disable") => {
                return Err(PgError::ConnStr(
                    "sslmode=disable is allowed only for loopback addresses and unix sockets: the state and the journal would cross the network in plain text".into(),
                ));
            }
            Some("allow" | "prefer") => {
                return Err(PgError::ConnStr(format!(
                    "sslmode={} may fall back to plain text without saying so; use sslmode=verify-full (with sslrootcert=CA-FILE for a private CA), or disable for a loopback server",
                    mode.unwrap_or_default()
                )));
            }
            // `require` and `verify-ca` are checked as `verify-full`: a
            // certificate that is not checked protects against no one.
            Some("require" | "verify-ca" | "verify-full") => Tls::VerifyFull {
                roots: params.sslrootcert.clone(),
            },
            None if local && params.sslrootcert.is_none() => Tls::Disable,
            None => Tls::VerifyFull {
                roots: params.sslrootcert.clone(),
            },
            Some(_) => {
                return Err(PgError::ConnStr(
                    "the value of sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full; use verify-full, or disable for a loopback server".into(),
                ));
            }
        };
        config.ssl_mode(match tls {
            Tls::Disable => SslMode::Disable,
            Tls::VerifyFull { .. } => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        // A peer that vanished without a reset (a cut network, a powered
        // off host) is noticed in about a minute, not the system's two
        // hours; a string may set its own.
        if !rest.contains("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if !rest.contains("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if !rest.contains("keepalives_retries") {
            config.keepalives_retries(3);
        }
        config.application_name("tokenctl");
        Ok(ConnSpec { config, tls })
    }

    /// Fills in a missing password from the password file at `path`
    /// (`PGPASSFILE`, else `~/.pgpass`), as libpq does: the first line
    /// `host:port:database:user:password` that matches, `*` matching
    /// anything, `\:` and `\\` escaped. A file that group or others may
    /// read is refused (libpq ignores it with a warning; a password that
    /// silently stops working is worse than a clear refusal).
    pub fn password_from_file(&mut self, path: &Path) -> Result<(), PgError> {
        if self.config.get_password().is_some() {
            return Ok(());
        }
        let file_err = |why: String| PgError::PassFile {
            path: path.to_path_buf(),
            why,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(file_err(format!("cannot read it: {err}"))),
        };
        if !meta.is_file() {
            return Err(file_err("it is not a plain file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(file_err(format!(
                    "group or others may read it (mode {mode:04o})"
                )));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|err| file_err(format!("cannot read it: {err}")))?;
        let Some(user) = self.config.get_user().map(str::to_string) else {
            return Ok(());
        };
        let host = match (
            self.config.get_hosts().first(),
            self.config.get_hostaddrs().first(),
        ) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            #[cfg(unix)]
            (Some(Host::Unix(_)), _) => "localhost".into(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "localhost".into(),
        };
        let port = self
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let dbname = self.config.get_dbname().unwrap_or(&user).to_string();
        let wanted = [host.as_str(), port.as_str(), dbname.as_str(), user.as_str()];
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = pgpass_fields(line);
            if fields.len() < 5 {
                continue;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|((field, literal_star), want)| {
                    (field == "*" && *literal_star) || field == want
                });
            if matches {
                let password = &fields[4].0;
                crate::redact::register(password);
                self.config.password(password.as_str());
                return Ok(());
            }
        }
        Ok(())
    }

    /// Names the database for messages: user, hosts, ports and database,
    /// never the password.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .chain(c.get_hostaddrs().iter().map(IpAddr::to_string))
            .collect();
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        let port = if ports.is_empty() {
            String::new()
        } else {
            format!(":{}", ports.join(","))
        };
        format!(
            "postgres://{}@{}{}/{}",
            c.get_user().unwrap_or(""),
            hosts.join(","),
            port,
            c.get_dbname().unwrap_or("")
        )
    }

    /// Builds the TLS connector of this connection.
    pub fn connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, PgError> {
        let Tls::VerifyFull { roots } = &self.tls else {
            return Ok(None);
        };
        let mut store = rustls::RootCertStore::empty();
        match roots {
            Some(path) if path.as_os_str() != "system" => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                // The path is a value of the connection string, which no
                // message quotes.
                let certs = CertificateDer::pem_file_iter(path).map_err(|err| {
                    PgError::Tls(format!("cannot read the sslrootcert file: {err}"))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|err| {
                        PgError::Tls(format!(
                            "the sslrootcert file is not a PEM certificate file: {err}"
                        ))
                    })?;
                    store.add(cert).map_err(|err| {
                        PgError::Tls(format!(
                            "the sslrootcert file holds an unusable certificate: {err}"
                        ))
                    })?;
                }
                if store.is_empty() {
                    return Err(PgError::Tls(
                        "the sslrootcert file holds no certificate".into(),
                    ));
                }
            }
            _ => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| PgError::Tls(err.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// How long connecting may take when the string sets no `connect_timeout`:
/// TCP, TLS, the startup handshake and authentication together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The parameters libpq knows; only these are ever named in a message. A
/// word that is none of them may be a piece of a password.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Returns a parameter's name as a message may show it.
fn name_for_message(key: &str) -> String {
    if KNOWN_KEYS.contains(&key) {
        format!("`{key}`")
    } else {
        "a word that is no known parameter".into()
    }
}

/// Tells whether `text` starts like a URI (`scheme:`), rather than with
/// `key=value`.
fn looks_like_uri(text: &str) -> bool {
    let scheme_end = text.find(':');
    let key_end = text.find('=');
    match scheme_end {
        Some(colon) => {
            key_end.is_none_or(|eq| colon < eq)
                && text[..colon]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        }
        None => false,
    }
}

/// Registers, for masking, every value that may be a password in `text`:
/// the `password` pairs and a URI's userinfo, also of a URI whose scheme
/// is wrong (`pg://user:PW@host`, `postgres:/user:PW@host`).
fn register_passwords(text: &str) {
    if let Some(at) = text.rfind('@') {
        let before = &text[..at];
        let userinfo = match before.find("://") {
            Some(i) => &before[i + 3..],
            None => match before.split_once(':') {
                Some((_, rest)) => rest.trim_start_matches('/'),
                None => before,
            },
        };
        if let Some((_, password)) = userinfo.split_once(':') {
            crate::redact::register(password);
            if let Ok(decoded) = percent_decode(password) {
                crate::redact::register(&decoded);
            }
        }
    }
    // Registers each password pair as it is read, up to a flaw.
    let _ = split_pairs_all(text);
    if let Some((_, query)) = text.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && (key == "password" || key == "sslpassword")
            {
                crate::redact::register(value);
                if let Ok(decoded) = percent_decode(value) {
                    crate::redact::register(&decoded);
                }
            }
        }
    }
}

/// Turns the driver's refusal of a string into a message that names at
/// most a known parameter: its "unknown option" quotes what it read.
fn parse_error(err: &tokio_postgres::Error) -> PgError {
    let text = std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_default();
    let named = |prefix: &str| {
        text.split_once(prefix)
            .and_then(|(_, rest)| rest.split('`').next())
            .filter(|key| KNOWN_KEYS.contains(key))
            .map(str::to_string)
    };
    PgError::ConnStr(if let Some(key) = named("invalid value for option `") {
        format!("the value of `{key}` is not valid")
    } else if let Some(key) = named("unknown option `") {
        format!("the parameter `{key}` is not supported by tokenctl")
    } else if text.contains("unknown option") {
        "it holds a word that is no known parameter".into()
    } else {
        "it is neither a postgres://USER@HOST:PORT/DB URI nor key=value pairs".into()
    })
}

/// Splits a password file line at its unescaped colons into its first
/// four fields and the password, unescaped;
/// each field tells whether it was a bare `*` (an escaped `\*` is a star).
fn pgpass_fields(line: &str) -> Vec<(String, bool)> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut plain_star = true;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if fields.len() < 4 => {
                if let Some(next) = chars.next() {
                    field.push(next);
                    plain_star = false;
                }
            }
            '\\' => field.extend(chars.next()),
            ':' if fields.len() < 4 => {
                fields.push((std::mem::take(&mut field), plain_star));
                plain_star = true;
            }
            // libpq ends the password at an unescaped colon too.
            ':' => break,
            c => field.push(c),
        }
    }
    fields.push((field, plain_star));
    fields
}

/// Tells whether every host is a loopback address or a unix socket.
fn is_local(config: &tokio_postgres::Config) -> bool {
    let host_local = |h: &Host| match h {
        Host::Tcp(name) => {
            name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    };
    config.get_hosts().iter().all(host_local)
        && config.get_hostaddrs().iter().all(IpAddr::is_loopback)
}

/// The libpq parameters read here rather than by tokio-postgres.
#[derive(Debug, Default)]
struct Params {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
}

impl Params {
    /// Takes `key=value` if it is ours; tells whether it was.
    fn take(&mut self, key: &str, value: &str) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value.to_string()),
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            _ => return false,
        }
        true
    }
}

/// Splits the query of a URI into ours and the rest.
fn split_uri(text: &str) -> Result<(String, Params), PgError> {
    let mut params = Params::default();
    let Some((base, query)) = text.split_once('?') else {
        return Ok((text.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        if !params.take(key, &value) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

fn percent_decode(text: &str) -> Result<String, PgError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::ConnStr("a bad %-escape in a URI parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgError::ConnStr("a URI parameter is not UTF-8".into()))
}

/// Splits `key=value` pairs (values may be quoted with '...') into ours
/// and the rest, the rest re-quoted for tokio-postgres.
fn split_pairs(text: &str) -> Result<(String, Params), PgError> {
    let mut params = Params::default();
    let mut kept = Vec::new();
    for (key, value) in split_pairs_all(text)? {
        if !params.take(&key, &value) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), params))
}

/// Returns the `key=value` pairs of `text`, unquoted.
fn split_pairs_all(text: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(PgError::ConnStr(format!(
                "{} has no value; write key=value pairs or a postgres:// URI",
                name_for_message(&key)
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        if key == "password" || key == "sslpassword" {
                            crate::redact::register(&value);
                        }
                        return Err(PgError::ConnStr(format!(
                            "the value of {} has no closing quote",
                            name_for_message(&key)
                        )));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                } else {
                    value.push(c);
                    chars.next();
                }
            }
        }
        if key == "password" || key == "sslpassword" {
            crate::redact::register(&value);
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_server_may_go_without_tls_and_a_remote_one_may_not() {
        let local =
            ConnSpec::parse("postgres://u:pw@127.0.0.1:5433/db?sslmode=disable", None).unwrap();
        assert_eq!(local.tls, Tls::Disable);
        assert_eq!(local.describe(), "postgres://u@127.0.0.1:5433/db");
        let err = ConnSpec::parse("host=db.example password=hunter2 sslmode=disable", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        assert!(!err.contains("hunter2"));
        let remote = ConnSpec::parse("host=db.example user=u", None).unwrap();
        assert_eq!(remote.tls, Tls::VerifyFull { roots: None });
    }

    #[test]
    fn a_silent_downgrade_is_refused() {
        for mode in ["prefer", "allow"] {
            let err = ConnSpec::parse(&format!("host=localhost sslmode={mode}"), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("plain text"), "{err}");
        }
    }

    #[test]
    fn verify_full_keeps_the_ca_file_and_the_rest_reaches_the_driver() {
        let spec = ConnSpec::parse(
            "postgresql://u@db.example:6432/tok?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
            None,
        )
        .unwrap();
        assert_eq!(
            spec.tls,
            Tls::VerifyFull {
                roots: Some(PathBuf::from("/etc/ca.pem"))
            }
        );
        assert_eq!(
            spec.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let pairs = ConnSpec::parse(
            "host=db.example port=6432 dbname='my db' sslmode=verify-full sslrootcert=/ca.pem password='a b\\'c'",
            None,
        )
        .unwrap();
        assert_eq!(pairs.config.get_dbname(), Some("my db"));
        assert_eq!(pairs.config.get_password(), Some(&b"a b'c"[..]));
        assert!(!format!("{pairs:?}").contains("a b"));
    }

    #[test]
    fn pgpassword_fills_in_a_missing_password_only() {
        let spec = ConnSpec::parse("host=localhost user=u", Some("env")).unwrap();
        assert_eq!(spec.config.get_password(), Some(&b"env"[..]));
        let spec = ConnSpec::parse("host=localhost user=u password=own", Some("env")).unwrap();
        assert_eq!(spec.config.get_password(), Some(&b"own"[..]));
    }

    /// Returns the message (and hint) of a refused string.
    fn refusal(text: &str) -> String {
        use crate::error::Hint;
        let err = ConnSpec::parse(text, None).unwrap_err();
        format!("{err}\n{}", err.hint().unwrap_or_default())
    }

    #[test]
    fn no_refusal_quotes_the_string_or_a_value_of_it() {
        let cases = [
            "pg://ci:Pw-pg-scheme-1@127.0.0.1:5432/db1",
            "postgres:/ci:Pw-one-slash-2@127.0.0.1:5432/db1",
            "postgresx://ci:Pw-bad-scheme-3@127.0.0.1/db1",
            "host=127.0.0.1 sslmode=Pw-sslmode-4",
            "host=127.0.0.1 Pw-bare-word-5",
            "host=127.0.0.1 Pw-unknown-6=1",
            "host=127.0.0.1 port=Pw-port-7",
            "host=127.0.0.1 password='Pw-unclosed-8",
            "postgres://ci:Pw-uri-query-9@127.0.0.1/db1?sslmode=Pw-mode-9",
            "postgres://ci:Pw-uri-option-10@127.0.0.1/db1?Pw-opt-10=1",
        ];
        for text in cases {
            let message = refusal(text);
            assert!(!message.contains("Pw-"), "{text}: {message}");
            assert!(!message.contains("127.0.0.1"), "{text}: {message}");
            assert!(
                message.contains("TOKENCTL_PG_CONN_STR"),
                "{text}: {message}"
            );
        }
        // The passwords were registered as they were read, so even a
        // server's echo of them is masked.
        for password in ["Pw-pg-scheme-1", "Pw-one-slash-2", "Pw-uri-query-9"] {
            assert_eq!(crate::redact::redact(password), crate::redact::MASK);
        }
        assert_eq!(crate::redact::redact("Pw-unclosed-8"), crate::redact::MASK);
        let message = refusal("host=127.0.0.1 port=x");
        assert!(message.contains("`port`"), "{message}");
    }

    #[test]
    fn every_password_is_registered_once_read() {
        ConnSpec::parse("postgres://u:Pw-from-uri-11@127.0.0.1/db", None).unwrap();
        ConnSpec::parse("host=127.0.0.1 user=u password=Pw-from-pairs-12", None).unwrap();
        ConnSpec::parse("host=127.0.0.1 user=u", Some("Pw-from-env-13")).unwrap();
        for password in ["Pw-from-uri-11", "Pw-from-pairs-12", "Pw-from-env-13"] {
            assert_eq!(crate::redact::redact(password), crate::redact::MASK);
        }
    }

    fn passfile(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let text = "\
# comment
db.example:5432:*:u:Pw-other-host-14
127.0.0.1:6432:tok:u:Pw-wrong-port-15
127.0.0.1:*:tok:u:Pw-esc\\:aped-16:rest
*:*:*:*:Pw-catch-all-17
";
        let (_dir, path) = passfile(text, 0o600);
        let mut spec = ConnSpec::parse("host=127.0.0.1 port=5433 dbname=tok user=u", None).unwrap();
        spec.password_from_file(&path).unwrap();
        assert_eq!(spec.config.get_password(), Some(&b"Pw-esc:aped-16"[..]));
        assert_eq!(crate::redact::redact("Pw-esc:aped-16"), crate::redact::MASK);
        let mut spec = ConnSpec::parse("host=127.0.0.1 dbname=x user=v", None).unwrap();
        spec.password_from_file(&path).unwrap();
        assert_eq!(spec.config.get_password(), Some(&b"Pw-catch-all-17"[..]));
        // A password in the string wins; a missing file is no error.
        let mut spec = ConnSpec::parse("host=127.0.0.1 user=u password=own1", None).unwrap();
        spec.password_from_file(&path).unwrap();
        assert_eq!(spec.config.get_password(), Some(&b"own1"[..]));
        let mut spec = ConnSpec::parse("host=127.0.0.1 user=u", None).unwrap();
        spec.password_from_file(&path.with_file_name("none"))
            .unwrap();
        assert_eq!(spec.config.get_password(), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use crate::error::Hint;
        let (_dir, path) = passfile("*:*:*:*:Pw-shared-18\n", 0o644);
        let mut spec = ConnSpec::parse("host=127.0.0.1 user=u", None).unwrap();
        let err = spec.password_from_file(&path).unwrap_err();
        assert!(err.to_string().contains("mode 0644"), "{err}");
        assert!(err.hint().unwrap().contains("chmod 600"), "{err:?}");
        assert!(!err.to_string().contains("Pw-shared"), "{err}");
    }
}
