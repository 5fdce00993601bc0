//! The connection string: parsed, checked for a safe TLS mode, and named
//! without its password.
//!
//! tokio-postgres knows `sslmode` disable/prefer/require only and would
//! fall back to plain text under `prefer`; libpq's `verify-full` and
//! `sslrootcert` are read here instead, and the rest is handed on.

use std::net::IpAddr;
use std::path::PathBuf;
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
    pub fn parse(text: &str, password: Option<&str>) -> Result<ConnSpec, PgError> {
        let text = text.trim();
        let (rest, params) = if text.starts_with("postgres://") || text.starts_with("postgresql://")
        {
            split_uri(text)?
        } else {
            split_pairs(text)?
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|err| {
            // The parser's messages name the option, never its value.
            PgError::ConnStr(err.to_string())
        })?;
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
            Some(other) => {
                return Err(PgError::ConnStr(format!(
                    "sslmode={other} is not known; use verify-full, or disable for a loopback server"
                )));
            }
        };
        config.ssl_mode(match tls {
            Tls::Disable => SslMode::Disable,
            Tls::VerifyFull { .. } => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("tokenctl");
        Ok(ConnSpec { config, tls })
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
                let certs = CertificateDer::pem_file_iter(path).map_err(|err| {
                    PgError::Tls(format!("cannot read sslrootcert {}: {err}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|err| {
                        PgError::Tls(format!(
                            "sslrootcert {} is not a PEM certificate file: {err}",
                            path.display()
                        ))
                    })?;
                    store.add(cert).map_err(|err| {
                        PgError::Tls(format!(
                            "sslrootcert {} holds an unusable certificate: {err}",
                            path.display()
                        ))
                    })?;
                }
                if store.is_empty() {
                    return Err(PgError::Tls(format!(
                        "sslrootcert {} holds no certificate",
                        path.display()
                    )));
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
                "`{key}` has no value; write key=value pairs or a postgres:// URI"
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
                        return Err(PgError::ConnStr(format!(
                            "the value of `{key}` has no closing quote"
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
        if !params.take(&key, &value) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), params))
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
}
