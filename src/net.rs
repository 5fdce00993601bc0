//! How tokenctl's HTTP clients reach a server: the one place that decides
//! whether a request goes through a proxy.
//!
//! Plain `http://` (allowed only to loopback addresses) is never proxied:
//! its requests carry tokens in clear text. `https://` honours
//! `HTTPS_PROXY`/`https_proxy`, then `ALL_PROXY`/`all_proxy`, and
//! `NO_PROXY`/`no_proxy`, as curl does; TLS stays end to end through the
//! proxy's tunnel.

use crate::vars::Vars;

/// The proxy settings of the environment.
#[derive(Clone, Default)]
pub struct Proxies {
    /// The proxy for `https://` requests, and the variable it came from.
    https: Option<(String, &'static str)>,
    no_proxy: Option<String>,
}

/// A proxy variable that is not a URL reqwest can use.
#[derive(Debug, thiserror::Error)]
#[error("{variable} is not a usable proxy URL ({url})")]
pub struct ProxyError {
    pub variable: &'static str,
    /// The URL with any credentials masked.
    pub url: String,
}

impl crate::error::Hint for ProxyError {
    fn hint(&self) -> Option<String> {
        Some(format!(
            "set {} to a URL such as http://proxy.example:3128, or unset it",
            self.variable
        ))
    }
}

impl Proxies {
    /// Reads the proxy variables, lower case first as curl does.
    pub fn from_vars(vars: &Vars) -> Self {
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|name| vars.get(name).map(|v| (v.trim().to_string(), *name)))
        };
        let https = first(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]);
        if let Some((url, _)) = &https {
            // A proxy's credentials are masked like any other.
            crate::redact::url_for_display(url);
        }
        Proxies {
            https,
            no_proxy: first(&["no_proxy", "NO_PROXY"]).map(|(v, _)| v),
        }
    }

    /// Returns a client builder that never proxies plain http and sends
    /// https through the configured proxy, unless `NO_PROXY` excludes the
    /// host.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, ProxyError> {
        // No proxy from reqwest's own reading of the process environment.
        let builder = reqwest::Client::builder().no_proxy();
        Ok(match self.proxy()? {
            Some(proxy) => builder.proxy(proxy),
            None => builder,
        })
    }

    /// Returns a blocking client builder with the same rule.
    pub fn blocking_client_builder(&self) -> Result<reqwest::blocking::ClientBuilder, ProxyError> {
        let builder = reqwest::blocking::Client::builder().no_proxy();
        Ok(match self.proxy()? {
            Some(proxy) => builder.proxy(proxy),
            None => builder,
        })
    }

    /// Returns the proxy for https requests, if one is configured.
    fn proxy(&self) -> Result<Option<reqwest::Proxy>, ProxyError> {
        let Some((url, variable)) = &self.https else {
            return Ok(None);
        };
        let proxy = reqwest::Proxy::https(url.as_str()).map_err(|_| ProxyError {
            variable,
            url: crate::redact::url_for_display(url),
        })?;
        let proxy = proxy.no_proxy(
            self.no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string),
        );
        Ok(Some(proxy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_uses_the_most_specific_variable_and_http_none() {
        let vars = Vars::from_pairs([
            ("HTTP_PROXY", "http://plain-proxy:1"),
            ("ALL_PROXY", "http://all-proxy:2"),
            ("HTTPS_PROXY", "http://tls-proxy:3"),
        ]);
        let proxies = Proxies::from_vars(&vars);
        assert_eq!(
            proxies.https.as_ref().map(|(u, v)| (u.as_str(), *v)),
            Some(("http://tls-proxy:3", "HTTPS_PROXY"))
        );
        let only_all = Proxies::from_vars(&Vars::from_pairs([("all_proxy", "http://a:2")]));
        assert_eq!(only_all.https.unwrap().1, "all_proxy");
        let none = Proxies::from_vars(&Vars::from_pairs([("HTTP_PROXY", "http://p:1")]));
        assert!(none.https.is_none(), "http_proxy is never used");
    }

    #[test]
    fn a_bad_proxy_url_is_named_without_its_password() {
        let vars = Vars::from_pairs([("HTTPS_PROXY", "ht tp://user:net-proxy-pw@::bad")]);
        let err = Proxies::from_vars(&vars).client_builder().err().unwrap();
        let shown = crate::redact::redact(&err.to_string()).into_owned();
        assert!(!shown.contains("net-proxy-pw"), "{shown}");
        assert!(shown.contains("HTTPS_PROXY"), "{shown}");
    }
}
