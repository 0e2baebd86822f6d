//! The `[imports]` configuration: a serde type, checked and turned into runtime sources by
//! [`crate::Importer::from_config`].

use std::collections::BTreeMap;

use serde::Deserialize;

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
    pub sources: BTreeMap<String, SourceConfig>,
}

impl Default for ImportsConfig {
    fn default() -> Self {
        ImportsConfig {
            encryption_key: None,
            step_budget_ms: 30_000,
            mode: RunnerMode::Background,
            page_size: 50,
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

/// `[imports.sources.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The API's base url (a fake one in tests); each connector has the real one as default.
    pub base_url: Option<String>,
    /// Stream name -> declared table. Streams left out are not imported.
    pub streams: BTreeMap<String, String>,
    /// Proactive limit per credential; `None`: only the source's own 429s slow us down.
    pub requests_per_second: Option<f64>,
    /// Retries of a transient failure within one step.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Steam,
    Spotify,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Steam => "steam",
            SourceKind::Spotify => "spotify",
        }
    }

    /// The string fields a credential of this kind must carry (what a connect form asks for).
    pub fn credential_fields(self) -> &'static [&'static str] {
        match self {
            SourceKind::Steam => &["api_key", "steam_id"],
            SourceKind::Spotify => &["access_token"],
        }
    }
}
