//! The `[imports]` configuration: a serde type, checked and turned into runtime sources by
//! [`crate::Importer::from_config`].

mod rest;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use rest::RestConfig;
pub(crate) use rest::{Pagination, RestStream};

/// `[imports]`: the encryption key, the step budget, the runner mode and the sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportsConfig {
    /// Base64 of 32 bytes: seals stored credentials. Required as soon as a source is configured.
    pub encryption_key: Option<String>,
    /// How long one step may run, in milliseconds.
    pub step_budget_ms: u64,
    /// `background` (an embedded runner keeps imports going) or `call` (each `start` call runs one step).
    pub mode: RunnerMode,
    /// How many items a connector asks for per page (capped by each API's maximum).
    pub page_size: usize,
    /// How long a step's lease on an import job lasts without renewal, in milliseconds: when an instance
    /// dies mid-step, another resumes the job this long after its last renewal.
    pub lease_ms: u64,
    /// How many streams of one source a step walks at once (they start in the source's priority order and
    /// share its per-credential rate limit). 1: one after the other.
    pub parallel_streams: usize,
    pub sources: BTreeMap<String, SourceConfig>,
}

impl Default for ImportsConfig {
    fn default() -> Self {
        ImportsConfig {
            encryption_key: None,
            step_budget_ms: 30_000,
            mode: RunnerMode::Background,
            page_size: 50,
            lease_ms: 15_000,
            parallel_streams: 1,
            sources: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerMode {
    #[default]
    Background,
    Call,
}

/// `[imports.sources.NAME]`, checked as it is read: a bad base url, a non-positive rate or a `rest` table on
/// the wrong kind of source is a configuration error at startup.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SourceToml")]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The API's base url (a fake one in tests); each connector has the real one as default, except `rest`,
    /// which needs it.
    pub base_url: Option<String>,
    /// Stream name -> declared table. Streams left out are not imported.
    pub streams: BTreeMap<String, String>,
    /// Proactive limit per credential; `None`: only the source's own 429s slow us down.
    pub requests_per_second: Option<f64>,
    /// Retries of a transient failure within one step.
    pub max_retries: u32,
    /// `kind = "rest"`: how to walk the API (`[imports.sources.NAME.rest]`).
    pub rest: Option<RestConfig>,
    /// Where and how the account is connected and its tokens renewed (Spotify, PlayStation, Xbox).
    pub auth: AuthConfig,
}

/// The sign-in endpoints and app credentials of a source, each defaulting to the real service's. Keys of
/// `[imports.sources.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The OAuth consent page (Spotify: `https://accounts.spotify.com/authorize`; Xbox:
    /// `https://login.live.com/oauth20_authorize.srf`).
    pub auth_url: Option<String>,
    /// The OAuth token endpoint (Spotify: `https://accounts.spotify.com/api/token`; Xbox:
    /// `https://login.live.com/oauth20_token.srf`).
    pub token_url: Option<String>,
    /// The app's OAuth client id (Spotify, Xbox). Without it, pasted tokens are used until they expire.
    pub client_id: Option<String>,
    /// The app's client secret. Spotify: Basic client authentication instead of PKCE.
    pub client_secret: Option<String>,
    /// Space-separated scopes asked for at consent; each source has the ones its streams need.
    pub scope: Option<String>,
    /// Where the consent page sends the person back; default: this server's
    /// `/v1/connections/NAME/callback` on the host the dashboard was opened at.
    pub redirect_uri: Option<String>,
    /// PlayStation: the prefix of `/authorize` and `/token` (`https://ca.account.sony.com/api/authz/v3/oauth`).
    pub auth_base_url: Option<String>,
    /// Xbox: the user token endpoint (`https://user.auth.xboxlive.com/user/authenticate`).
    pub user_auth_url: Option<String>,
    /// Xbox: the XSTS endpoint (`https://xsts.auth.xboxlive.com/xsts/authorize`).
    pub xsts_url: Option<String>,
}

/// The TOML shape of [`SourceConfig`], before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceToml {
    kind: SourceKind,
    base_url: Option<String>,
    streams: BTreeMap<String, String>,
    requests_per_second: Option<f64>,
    #[serde(default = "default_retries")]
    max_retries: u32,
    rest: Option<RestConfig>,
    auth_url: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    redirect_uri: Option<String>,
    auth_base_url: Option<String>,
    user_auth_url: Option<String>,
    xsts_url: Option<String>,
}

fn default_retries() -> u32 {
    3
}

impl TryFrom<SourceToml> for SourceConfig {
    type Error = String;

    fn try_from(raw: SourceToml) -> Result<SourceConfig, String> {
        let kind = raw.kind.as_str();
        if let Some(url) = &raw.base_url {
            http_url(url).map_err(|e| format!("source of kind `{kind}`: `base_url` {e}"))?;
        }
        if let Some(rate) = raw.requests_per_second
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!(
                "source of kind `{kind}`: `requests_per_second` must be a positive number"
            ));
        }
        match (raw.kind, &raw.rest, &raw.base_url) {
            (SourceKind::Rest, None, _) => {
                return Err(
                    "a source of kind `rest` needs a `[imports.sources.NAME.rest]` table that describes its streams"
                        .into(),
                );
            }
            (SourceKind::Rest, Some(_), None) => {
                return Err("a source of kind `rest` needs a `base_url`".into());
            }
            (SourceKind::Rest, Some(_), Some(_)) | (_, None, _) => {}
            (_, Some(_), _) => {
                return Err(format!(
                    "source of kind `{kind}`: only `kind = \"rest\"` takes a `rest` table"
                ));
            }
        }
        let auth = AuthConfig {
            auth_url: raw.auth_url,
            token_url: raw.token_url,
            client_id: raw.client_id,
            client_secret: raw.client_secret,
            scope: raw.scope,
            redirect_uri: raw.redirect_uri,
            auth_base_url: raw.auth_base_url,
            user_auth_url: raw.user_auth_url,
            xsts_url: raw.xsts_url,
        };
        // Which sign-in keys each kind reads; any other is a mistake worth saying at startup.
        let allowed: &[&str] = match raw.kind {
            SourceKind::Spotify => &[
                "auth_url",
                "token_url",
                "client_id",
                "client_secret",
                "scope",
                "redirect_uri",
            ],
            SourceKind::Xbox => &[
                "auth_url",
                "token_url",
                "client_id",
                "client_secret",
                "scope",
                "redirect_uri",
                "user_auth_url",
                "xsts_url",
            ],
            SourceKind::Playstation => &["auth_base_url"],
            SourceKind::Steam | SourceKind::Rest => &[],
        };
        let keys = [
            ("auth_url", &auth.auth_url),
            ("token_url", &auth.token_url),
            ("client_id", &auth.client_id),
            ("client_secret", &auth.client_secret),
            ("scope", &auth.scope),
            ("redirect_uri", &auth.redirect_uri),
            ("auth_base_url", &auth.auth_base_url),
            ("user_auth_url", &auth.user_auth_url),
            ("xsts_url", &auth.xsts_url),
        ];
        for (key, value) in keys {
            let Some(value) = value else { continue };
            if !allowed.contains(&key) {
                return Err(format!("source of kind `{kind}` takes no `{key}`"));
            }
            if key.ends_with("_url") || key == "redirect_uri" {
                http_url(value).map_err(|e| format!("source of kind `{kind}`: `{key}` {e}"))?;
            }
        }
        if auth.client_secret.is_some() && auth.client_id.is_none() {
            return Err(format!(
                "source of kind `{kind}`: `client_secret` needs `client_id`"
            ));
        }
        Ok(SourceConfig {
            auth,
            kind: raw.kind,
            base_url: raw.base_url,
            streams: raw.streams,
            requests_per_second: raw.requests_per_second,
            max_retries: raw.max_retries,
            rest: raw.rest,
        })
    }
}

/// A url the connectors may call: `http` or `https`, with a host.
pub(crate) fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` is not an http(s) url with a host"));
    }
    Ok(url)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Steam,
    Spotify,
    Playstation,
    Xbox,
    /// A REST API described in the configuration (`[imports.sources.NAME.rest]`).
    Rest,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Steam => "steam",
            SourceKind::Spotify => "spotify",
            SourceKind::Playstation => "playstation",
            SourceKind::Xbox => "xbox",
            SourceKind::Rest => "rest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_refused(source: &str, expected: &str) {
        let text = format!("[sources.s]\n{source}");
        let err = toml::from_str::<ImportsConfig>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "`{expected}` not in: {err}");
    }

    const REST: &str = "[sources.s.rest.streams.items]\npath = \"/items\"\nrecords = \"\"\n";

    #[test]
    fn a_source_is_checked_as_it_is_read() {
        check_refused(
            "kind = \"rest\"\nbase_url = \"https://api.example.com\"\nstreams = {}\n",
            "needs a `[imports.sources.NAME.rest]` table",
        );
        check_refused(
            &format!("kind = \"rest\"\nstreams = {{}}\n{REST}"),
            "needs a `base_url`",
        );
        check_refused(
            &format!("kind = \"steam\"\nstreams = {{}}\n{REST}"),
            "only `kind = \"rest\"` takes a `rest` table",
        );
        check_refused(
            "kind = \"xbox\"\nbase_url = \"ftp://example.com\"\nstreams = {}\n",
            "is not an http(s) url",
        );
        check_refused(
            "kind = \"playstation\"\nbase_url = \"not a url\"\nstreams = {}\n",
            "is not a url",
        );
        check_refused(
            "kind = \"spotify\"\nrequests_per_second = 0\nstreams = {}\n",
            "must be a positive number",
        );
        check_refused(
            "kind = \"lastfm\"\nstreams = {}\n",
            "unknown variant `lastfm`",
        );
        check_refused(
            "kind = \"steam\"\nstreams = {}\nretries = 2\n",
            "unknown field `retries`",
        );
        let ok: ImportsConfig = toml::from_str(&format!(
            "[sources.s]\nkind = \"rest\"\nbase_url = \"https://api.example.com/v2\"\nstreams = {{ items = \"t\" }}\n{REST}"
        ))
        .unwrap();
        let s = &ok.sources["s"];
        assert_eq!((s.kind, s.max_retries), (SourceKind::Rest, 3));
        assert!(s.rest.is_some());
    }
}
