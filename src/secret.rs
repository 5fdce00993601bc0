//! The one type that holds a token value.

use std::fmt;

use sha2::{Digest, Sha256};

/// A token value returned by the create call.
///
/// It implements neither `Display` nor `Serialize`, and its `Debug` output
/// is redacted, so a secret cannot reach a log, an error or a file except
/// through [`Secret::expose`], which only the sinks call.
pub struct Secret(String);

impl Secret {
    /// Wraps a token value.
    pub fn new(value: String) -> Self {
        // From now on the value is masked in everything tokenctl prints
        // or writes outside the sinks.
        crate::redact::register(&value);
        Secret(value)
    }

    /// Returns the token value, for a sink to write.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns a short, one-way fingerprint that identifies the secret
    /// without revealing it: `sha256:` and the first 16 hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.0)
    }
}

/// Returns the fingerprint of a token value, as [`Secret::fingerprint`] does.
pub fn fingerprint_of(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // The value must not linger in freed memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let secret = Secret::new("s3cr3t-value".into());
        let shown = format!("{secret:?} {:#?}", Some(&secret));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn fingerprint_is_short_stable_and_not_the_value() {
        let secret = Secret::new("abc".into());
        let fingerprint = secret.fingerprint();
        assert_eq!(fingerprint, "sha256:ba7816bf8f01cfea");
        assert_eq!(fingerprint, fingerprint_of("abc"));
        assert_eq!(secret.expose(), "abc");
    }
}
