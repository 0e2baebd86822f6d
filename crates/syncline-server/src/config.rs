//! The server configuration: a TOML file whose every setting can be overridden by a `SYNCLINE_<SECTION>_<KEY>`
//! environment variable, checked into typed sections before anything starts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use syncline_core::TableConfig;

use crate::ServerError;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub sync: SyncSection,
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// `[imports]`: third-party sources, the credential key, the step budget and the runner mode.
    #[serde(default)]
    pub imports: syncline_import::ImportsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Larger request bodies get 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// More records in one push or bulk request get 413 `too_many_records`.
    pub max_records_per_request: usize,
    /// A request's line and headers must arrive within this many seconds of their first byte (or of the
    /// connection's opening); otherwise the connection is closed.
    pub header_read_timeout_secs: f64,
    /// A request body must arrive whole within this many seconds, or the answer is 408 `request_timeout`
    /// and the connection is closed.
    pub body_read_timeout_secs: f64,
    /// A kept-alive connection with no request in flight is closed after this many seconds of silence.
    pub keep_alive_timeout_secs: f64,
    /// A response that cannot write a single byte for this many seconds (the client stopped reading) is
    /// abandoned and its connection closed; a stalled pull then releases its snapshot.
    pub write_timeout_secs: f64,
    /// Open connections at most. Past it, a few more (see README) are answered `503 too_many_connections`
    /// (`/healthz` still answers), and beyond those new connections are closed at once.
    pub max_connections: usize,
    /// Pulls of one user streaming at once; more get 429 `too_many_pulls` with `Retry-After`.
    pub max_pulls_per_user: usize,
    /// Web origins (`https://app.example.com`) whose pages may call the API from the browser (CORS), or
    /// `["*"]` for any origin. Empty (the default): no CORS headers, so only pages served by this server
    /// can. Tokens travel in the `Authorization` header, never in cookies, so no origin gets credentials.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 << 20,
            max_records_per_request: 100_000,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 60.0,
            keep_alive_timeout_secs: 30.0,
            write_timeout_secs: 30.0,
            max_connections: 16_384,
            max_pulls_per_user: 16,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl ServerSection {
    /// Refuses settings that would disable a limit by accident.
    pub(crate) fn check(&self) -> Result<(), ServerError> {
        let seconds = [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("keep_alive_timeout_secs", self.keep_alive_timeout_secs),
            ("write_timeout_secs", self.write_timeout_secs),
        ];
        for (name, value) in seconds {
            if !(value > 0.0 && value <= 86_400.0) {
                return Err(ServerError::Config(format!(
                    "server.{name} must be above 0 and at most 86400 seconds"
                )));
            }
        }
        if let Some(bad) = self.cors_allowed_origins.iter().find(|o| !is_origin(o)) {
            return Err(ServerError::Config(format!(
                "server.cors_allowed_origins: {bad:?} is not an origin (scheme://host[:port], no path) or \"*\""
            )));
        }
        if self.cors_allowed_origins.len() > 1 && self.cors_allowed_origins.iter().any(|o| o == "*")
        {
            return Err(ServerError::Config(
                "server.cors_allowed_origins: \"*\" allows every origin and stands alone".into(),
            ));
        }
        if self.max_connections == 0 || self.max_pulls_per_user == 0 {
            return Err(ServerError::Config(
                "server.max_connections and server.max_pulls_per_user must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `origin` is `*` or a web origin as a browser sends it (RFC 6454 §6.1): `http` or `https`, a host,
/// an optional port, nothing after.
fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, port))
                if !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') =>
            {
                ("v6", port)
            }
            _ => return false,
        },
        None => rest.split_at(rest.find(':').unwrap_or(rest.len())),
    };
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }
        None => port.is_empty(),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    port_ok && host_ok
}

/// A listed origin (checked by [`is_origin`]) as a browser sends it (RFC 6454 §6.2): lower-case, and without
/// `:443` after `https` or `:80` after `http`.
pub(crate) fn serialized_origin(origin: &str) -> String {
    let origin = origin.to_ascii_lowercase();
    let default_port = if origin.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    match origin.strip_suffix(default_port) {
        Some(bare) => bare.to_string(),
        None => origin,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub url: String,
    /// PostgreSQL: the most connections this instance holds open.
    pub max_connections: u32,
    /// PostgreSQL: how long a request waits for a free connection before it answers 503 `storage_busy`.
    pub acquire_timeout_ms: u64,
    /// SQLite: `full` (default; an acknowledged write survives power loss) or `normal` (survives a process
    /// crash only; faster small writes).
    pub sqlite_synchronous: syncline_store::SqliteSynchronous,
}

impl Default for StorageSection {
    fn default() -> Self {
        let options = syncline_store::StoreOptions::default();
        StorageSection {
            url: "sqlite://./syncline-data/syncline.db".into(),
            max_connections: options.max_connections,
            acquire_timeout_ms: options.acquire_timeout.as_millis() as u64,
            sqlite_synchronous: options.sqlite_synchronous,
        }
    }
}

impl StorageSection {
    /// How the store should use its database.
    pub fn options(&self) -> syncline_store::StoreOptions {
        syncline_store::StoreOptions {
            max_connections: self.max_connections,
            acquire_timeout: std::time::Duration::from_millis(self.acquire_timeout_ms),
            sqlite_synchronous: self.sqlite_synchronous,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 shared secret.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256 tokens.
    pub public_key_file: Option<String>,
    /// JWKS document; the token's `kid` picks the key.
    pub jwks_file: Option<String>,
    /// Algorithm for `public_key_file` / `jwks_file` keys: RS256 (default) or ES256.
    pub algorithm: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Tokens whose `role` claim equals this are admins (default `admin`).
    pub admin_role: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    pub tombstone_retention_days: f64,
    pub idempotency_ttl_hours: f64,
    pub max_pull_limit: u32,
    pub gc_interval_seconds: u64,
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            tombstone_retention_days: 30.0,
            idempotency_ttl_hours: 24.0,
            max_pull_limit: 50_000,
            gc_interval_seconds: 3600,
        }
    }
}

const SECTIONS: [&str; 5] = ["server", "storage", "auth", "sync", "imports"];
/// Keys whose environment values are always text (a numeric-looking secret stays a string).
const TEXT_KEYS: [&str; 10] = [
    "encryption_key",
    "listen",
    "url",
    "jwt_secret",
    "public_key_file",
    "jwks_file",
    "algorithm",
    "issuer",
    "audience",
    "admin_role",
];

impl Config {
    /// Parses TOML text, then applies `SYNCLINE_<SECTION>_<KEY>` overrides from `env`.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ServerError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SYNCLINE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
                continue;
            };
            let key = &rest[section.len() + 1..];
            let parsed = if TEXT_KEYS.contains(&key) {
                toml::Value::String(value)
            } else {
                toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or(toml::Value::String(value))
            };
            let entry = doc
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(table) = entry else {
                return Err(ServerError::Config(format!("`{section}` must be a table")));
            };
            table.insert(key.to_string(), parsed);
        }
        doc.try_into()
            .map_err(|e: toml::de::Error| ServerError::Config(e.to_string()))
    }

    /// Reads a configuration file and the process environment.
    pub fn load(path: &Path) -> Result<Config, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text, std::env::vars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_the_file() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n[tables.t]\ncolumns = { a = \"string\" }\n";
        let env = [
            (
                "SYNCLINE_SERVER_LISTEN".to_string(),
                "127.0.0.1:2".to_string(),
            ),
            ("SYNCLINE_AUTH_JWT_SECRET".to_string(), "12345".to_string()),
            (
                "SYNCLINE_SYNC_TOMBSTONE_RETENTION_DAYS".to_string(),
                "7".to_string(),
            ),
            ("SYNCLINE_BIN".to_string(), "/not/a/setting".to_string()),
        ];
        let config = Config::from_toml(text, env).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:2");
        assert_eq!(config.auth.jwt_secret.as_deref(), Some("12345"));
        assert_eq!(config.sync.tombstone_retention_days, 7.0);
        assert_eq!(config.storage.url, "sqlite://./syncline-data/syncline.db");
        assert!(config.tables.contains_key("t"));
    }

    #[test]
    fn limits_cannot_be_switched_off_by_accident() {
        let config = Config::from_toml("", []).unwrap();
        assert!(config.server.check().is_ok());
        assert_eq!(config.server.header_read_timeout_secs, 10.0);
        for bad in [
            "write_timeout_secs = 0",
            "keep_alive_timeout_secs = -1",
            "body_read_timeout_secs = nan",
            "max_connections = 0",
            "max_pulls_per_user = 0",
        ] {
            let config = Config::from_toml(&format!("[server]\n{bad}\n"), []).unwrap();
            let err = config.server.check().unwrap_err().to_string();
            assert!(err.contains("server."), "{bad}: {err}");
        }
    }

    #[test]
    fn cors_origins_are_origins_as_browsers_send_them() {
        for good in [
            "*",
            "https://app.example.com",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "https://[2001:db8::1]",
            "HTTPS://App.Example.com:443",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com:",
            "https://app.example.com:123456",
            "https://app example.com",
            "https://[::1",
            "https://user@app.example.com",
        ] {
            assert!(!is_origin(bad), "{bad:?}");
        }
        let env = [(
            "SYNCLINE_SERVER_CORS_ALLOWED_ORIGINS".to_string(),
            r#"["https://a.example", "http://localhost:5173"]"#.to_string(),
        )];
        let config = Config::from_toml("", env).unwrap();
        assert_eq!(
            config.server.cors_allowed_origins,
            ["https://a.example", "http://localhost:5173"]
        );
        assert!(config.server.check().is_ok());
        for bad in [
            r#"cors_allowed_origins = ["https://a.example/"]"#,
            r#"cors_allowed_origins = ["*", "https://a.example"]"#,
        ] {
            let config = Config::from_toml(&format!("[server]\n{bad}\n"), []).unwrap();
            let err = config.server.check().unwrap_err().to_string();
            assert!(err.contains("cors_allowed_origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn typos_are_refused() {
        let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", []).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }
}
