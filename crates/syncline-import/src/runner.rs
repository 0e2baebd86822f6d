//! The [`Importer`]: start, stop, reset and status of a user's imports, the step that walks streams under a
//! time budget, and the background loop that keeps pending imports going and resumes rate-limited ones at
//! their reset time.
//!
//! Every page is applied with the checkpoint after it in one store transaction. State saves made during a
//! step go through the same generation check, so a step never overwrites a stop or a reset that happened
//! while it was fetching.
//!
//! A job (one user's import from one source) is leased, not owned: a step first takes the job's lease in the
//! store under this instance's id, renews it while it runs (every batch, and on a timer while a page is in
//! flight) and gives it back at the end. Every write of the step checks the lease in its transaction, so
//! when an instance stalls past its lease and another takes the job, the stalled step's writes are refused:
//! two instances never apply the same step. When an instance dies, another resumes the job from its
//! checkpoint once the lease has expired.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use syncline_core::{
    BulkRequest, Clock, ImportErrorCode, ImportPhase, ImportState, ImportStatus, Schema,
    WriteBatch, plan_bulk,
};
use syncline_store::{ImportStore, Lease, StoreError, WriteSummary};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::ImportError;
use crate::auth::{AuthFailure, ConnectFailure, Session, build_session, pkce_pair, random_token};
use crate::config::{ImportsConfig, RunnerMode};
use crate::connectors::{build_source, http_client};
use crate::crypto::Sealer;
use crate::limiter::Limiter;
use crate::source::{Credential, PageRequest, RateLimit, Source, SourceError};

/// How long the background loop sleeps when nothing is due (a `start` wakes it at once).
const IDLE: Duration = Duration::from_secs(5);
/// The first retry of a transient failure waits this long; each further one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepReport {
    pub batches: u64,
    pub items: u64,
    /// Some stream is still pending or rate limited: call again (after the reset time, if rate limited).
    pub more: bool,
    /// The step stopped because its time budget ran out.
    pub budget_exhausted: bool,
    /// Another step of the same import was running (here or on another instance), so this one did nothing.
    pub busy: bool,
    /// The step lost its lease to another instance part-way and stopped.
    pub lease_lost: bool,
}

impl StepReport {
    /// Adds what one stream's walk did to the step's report.
    fn add(&mut self, part: StepReport) {
        self.batches += part.batches;
        self.items += part.items;
        self.more |= part.more;
        self.budget_exhausted |= part.budget_exhausted;
        self.lease_lost |= part.lease_lost;
    }
}

struct Configured {
    source: Arc<dyn Source>,
    /// (stream, table), in the source's priority order.
    streams: Vec<(String, String)>,
    per_second: Option<f64>,
    max_retries: u32,
    /// How the source's accounts are connected and renewed; `None`: credentials are stored as given.
    session: Option<Arc<dyn Session>>,
    /// The configured `redirect_uri` of its consent flow.
    redirect_uri: Option<String>,
}

/// The import engine of one server.
pub struct Importer {
    store: Arc<dyn ImportStore>,
    schema: Arc<Schema>,
    sources: BTreeMap<String, Configured>,
    sealer: Option<Sealer>,
    budget: Duration,
    page_size: usize,
    mode: RunnerMode,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    /// This instance's terms in import leases.
    lease: LeaseTerms,
    /// How many streams of one source a step walks at once.
    parallel_streams: usize,
    busy: Mutex<HashSet<(String, String)>>,
    wake: Notify,
    changes: watch::Sender<u64>,
    /// The browser bindings of consents completed here, with their expiry (epoch ms): a consent's `state`
    /// is good once.
    consents_used: Mutex<HashMap<String, i64>>,
}

/// A consent to start: the service's consent page, and the value that binds it to the browser that asked
/// for it. The caller hands `browser_binding` to that browser only (the server: an `HttpOnly` cookie) and
/// gives it back to [`Importer::complete_authorization`] from the callback, so a consent page sent to
/// someone else's browser (a login CSRF) cannot attach their account to the asker's user.
#[derive(Debug, Clone)]
pub struct Consent {
    pub url: String,
    pub browser_binding: String,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

enum StreamEnd {
    Completed,
    Budget,
    Halted,
}

enum FetchFailure {
    Budget,
    Source(SourceError),
}

/// Releases an import's claim when its step ends.
struct Claim<'a> {
    importer: &'a Importer,
    key: (String, String),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.importer
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Importer {
    /// Builds the engine from `[imports]`, checking every source's streams and tables against the schema.
    pub fn from_config(
        config: &ImportsConfig,
        store: Arc<dyn ImportStore>,
        schema: Arc<Schema>,
        clock: Arc<dyn Clock>,
    ) -> Result<Importer, ImportError> {
        let sealer = config
            .encryption_key
            .as_deref()
            .map(Sealer::from_base64)
            .transpose()?;
        if sealer.is_none() && !config.sources.is_empty() {
            return Err(ImportError::Config(
                "`imports.encryption_key` is required when import sources are configured".into(),
            ));
        }
        let mut importer = Importer {
            store,
            schema,
            sources: BTreeMap::new(),
            sealer,
            budget: Duration::from_millis(config.step_budget_ms.max(1)),
            page_size: config.page_size.max(1),
            mode: config.mode,
            limiter: Limiter::default(),
            lease: LeaseTerms {
                owner: instance_id(clock.now_ms()).into(),
                ttl_ms: config.lease_ms.max(100) as i64,
            },
            clock,
            parallel_streams: config.parallel_streams.max(1),
            busy: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            changes: watch::Sender::new(0),
            consents_used: Mutex::new(HashMap::new()),
        };
        for (name, source) in &config.sources {
            importer.add_source(
                name,
                build_source(source),
                &source.streams,
                source.requests_per_second,
                source.max_retries,
            )?;
            if let Some(configured) = importer.sources.get_mut(name) {
                configured.session = build_session(source, http_client());
                configured.redirect_uri = source.auth.redirect_uri.clone();
            }
        }
        Ok(importer)
    }

    /// Adds a source under `name`, importing `streams` (stream -> table). Streams run in the source's order.
    pub fn add_source(
        &mut self,
        name: &str,
        source: Arc<dyn Source>,
        streams: &BTreeMap<String, String>,
        per_second: Option<f64>,
        max_retries: u32,
    ) -> Result<(), ImportError> {
        for (stream, table) in streams {
            if !source.streams().contains(&stream.as_str()) {
                return Err(ImportError::Config(format!(
                    "source `{name}` has no stream `{stream}`; it offers {:?}",
                    source.streams()
                )));
            }
            if self.schema.table(table).is_none() {
                return Err(ImportError::Config(format!(
                    "stream `{stream}` of source `{name}` goes to table `{table}`, which is not declared"
                )));
            }
        }
        let ordered = source
            .streams()
            .iter()
            .filter_map(|s| streams.get(*s).map(|t| (s.to_string(), t.clone())))
            .collect();
        self.sources.insert(
            name.to_string(),
            Configured {
                source,
                streams: ordered,
                per_second,
                max_retries,
                session: None,
                redirect_uri: None,
            },
        );
        Ok(())
    }

    pub fn mode(&self) -> RunnerMode {
        self.mode
    }

    /// The string fields a credential for `source` must carry (what a connect form asks for).
    pub fn credential_fields(&self, source: &str) -> Result<Vec<String>, ImportError> {
        let configured = self.source(source)?;
        Ok(match &configured.session {
            Some(session) => session.connect_fields(),
            None => configured.source.credential_fields(),
        })
    }

    /// Whether connecting `source` checks what is sent itself (it takes alternatives: an NPSSO or a pasted
    /// token), so a caller should not insist on [`Importer::credential_fields`].
    pub fn checks_credentials(&self, source: &str) -> Result<bool, ImportError> {
        Ok(self.source(source)?.session.is_some())
    }

    /// Whether `source` offers the dashboard's consent (OAuth authorization-code) flow.
    pub fn has_consent_flow(&self, source: &str) -> Result<bool, ImportError> {
        Ok(self
            .source(source)?
            .session
            .as_ref()
            .is_some_and(|s| s.code_flow().is_some()))
    }

    /// The configured source names.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// A counter that moves whenever an import state is saved: tests and progress displays await it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn source(&self, name: &str) -> Result<&Configured, ImportError> {
        self.sources
            .get(name)
            .ok_or_else(|| ImportError::UnknownSource(name.to_string()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ImportStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ImportError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| ImportError::Store(StoreError::Setup(format!("store task failed: {e}"))))?
            .map_err(ImportError::Store)
    }

    /// Connects the user's account from what they sent (a JSON object): as the source's session says
    /// (an NPSSO exchanged for tokens, a refresh token renewed at once), or stored as given. Sealed.
    pub async fn connect(
        &self,
        user: &str,
        source: &str,
        given: Map<String, Value>,
    ) -> Result<(), ImportError> {
        let configured = self.source(source)?;
        let credential = match &configured.session {
            None => given,
            Some(session) => {
                session
                    .connect(given, self.clock.now_ms())
                    .await
                    .map_err(|e| match e {
                        ConnectFailure::Invalid(message) => ImportError::InvalidCredential(message),
                        ConnectFailure::Auth(failure) => refused(failure, self.clock.now_ms()),
                    })?
            }
        };
        self.store_credential(user, source, credential).await
    }

    /// The consent page to send the person to, for the source's OAuth authorization-code flow. Its
    /// `state` is sealed with the server's key (authenticated encryption, so it cannot be forged or read),
    /// names the user, expires after ten minutes, carries the PKCE verifier when the client is public, and
    /// the browser binding of the answer (random, 256 bits) that the callback must bring back.
    /// `redirect_uri`: where to come back when the source's configuration names none.
    pub fn authorize(
        &self,
        user: &str,
        source: &str,
        redirect_uri: &str,
    ) -> Result<Consent, ImportError> {
        let configured = self.source(source)?;
        let flow = configured
            .session
            .as_ref()
            .and_then(|s| s.code_flow())
            .ok_or_else(|| ImportError::NoConsentFlow(source.to_string()))?;
        let redirect_uri = configured.redirect_uri.as_deref().unwrap_or(redirect_uri);
        let (verifier, challenge) = if flow.uses_pkce() {
            let (v, c) = pkce_pair();
            (Some(v), Some(c))
        } else {
            (None, None)
        };
        let browser_binding = random_token(32);
        let state = serde_json::json!({
            "u": user,
            "r": redirect_uri,
            "v": verifier,
            "b": browser_binding,
            "e": self.clock.now_ms() + CONSENT_TTL_MS,
        });
        let sealed = self
            .sealer()?
            .seal(CONSENT_AAD, source, state.to_string().as_bytes());
        use base64::Engine;
        let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed);
        let url = flow
            .authorize_url(redirect_uri, &state, challenge.as_deref())
            .map_err(|f| refused(f, self.clock.now_ms()))?;
        Ok(Consent {
            url,
            browser_binding,
        })
    }

    /// Completes a consent: checks the `state` (sealed by [`Importer::authorize`] for this source, not
    /// expired, not used before on this instance) and that `browser_binding` (what the browser that asked for
    /// the consent brought back) is the one it was issued with; then exchanges the code and stores the tokens
    /// for the user the state names; that user. Any refusal stores nothing and calls no one.
    pub async fn complete_authorization(
        &self,
        source: &str,
        state: &str,
        code: &str,
        browser_binding: Option<&str>,
    ) -> Result<String, ImportError> {
        let configured = self.source(source)?;
        let session = configured
            .session
            .as_ref()
            .filter(|s| s.code_flow().is_some())
            .ok_or_else(|| ImportError::NoConsentFlow(source.to_string()))?;
        let bad = || {
            ImportError::ConsentState(
                "the consent's `state` is not one this server issued for this source: connect again".into(),
            )
        };
        use base64::Engine;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(state.trim())
            .map_err(|_| bad())?;
        let plain = self
            .sealer()?
            .open(CONSENT_AAD, source, &sealed)
            .map_err(|_| bad())?;
        let state: Value = serde_json::from_slice(&plain).map_err(|_| bad())?;
        let (Some(user), Some(redirect_uri), Some(expires)) = (
            state["u"].as_str(),
            state["r"].as_str(),
            state["e"].as_i64(),
        ) else {
            return Err(bad());
        };
        let now = self.clock.now_ms();
        if now > expires {
            return Err(ImportError::ConsentState(
                "the consent took longer than ten minutes: connect again".into(),
            ));
        }
        let issued_binding = state["b"].as_str().unwrap_or_default();
        if issued_binding.is_empty()
            || !browser_binding.is_some_and(|b| same_secret(b, issued_binding))
        {
            return Err(ImportError::ConsentState(
                "this consent was not started in this browser: start connecting again from the dashboard, \
                 in the browser you approve it in"
                    .into(),
            ));
        }
        {
            let mut used = self.consents_used.lock().unwrap_or_else(|e| e.into_inner());
            used.retain(|_, until| *until >= now);
            if used.insert(issued_binding.to_string(), expires).is_some() {
                return Err(ImportError::ConsentState(
                    "this consent was completed already: connect again".into(),
                ));
            }
        }
        let credential = session
            .exchange_code(code, redirect_uri, state["v"].as_str(), now)
            .await
            .map_err(|f| refused(f, now))?;
        self.store_credential(user, source, credential).await?;
        Ok(user.to_string())
    }

    fn sealer(&self) -> Result<&Sealer, ImportError> {
        self.sealer
            .as_ref()
            .ok_or_else(|| ImportError::Config("no `imports.encryption_key`".into()))
    }

    /// Seals and stores a credential: the connection row holds it whole, so a renewed access token and a
    /// rotated refresh token are saved together in one write.
    async fn store_credential(
        &self,
        user: &str,
        source: &str,
        credential: Map<String, Value>,
    ) -> Result<(), ImportError> {
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| ImportError::Config("no `imports.encryption_key`".into()))?;
        let sealed = sealer.seal(
            user,
            source,
            Value::Object(credential).to_string().as_bytes(),
        );
        let (user, source) = (user.to_string(), source.to_string());
        self.blocking(move |s| s.put_connection(&user, &source, &sealed))
            .await
    }

    /// Saves a renewed credential in place of the one it was renewed from, unless the connection changed
    /// meanwhile (the person disconnected or connected again during the step): whether it was saved.
    async fn store_renewed(
        &self,
        user: &str,
        source: &str,
        from: &Credential,
        renewed: Map<String, Value>,
    ) -> Result<bool, ImportError> {
        let sealer = self.sealer()?.clone();
        let sealed = sealer.seal(user, source, Value::Object(renewed).to_string().as_bytes());
        let from = Value::Object(from.fields().clone());
        let (user, source) = (user.to_string(), source.to_string());
        self.blocking(move |s| {
            let current = s
                .get_connection(&user, &source)?
                .and_then(|stored| sealer.open(&user, &source, &stored).ok())
                .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok());
            if current.as_ref() != Some(&from) {
                return Ok(false);
            }
            s.put_connection(&user, &source, &sealed)?;
            Ok(true)
        })
        .await
    }

    /// Forgets the user's credential for a source; whether there was one.
    pub async fn disconnect(&self, user: &str, source: &str) -> Result<bool, ImportError> {
        self.source(source)?;
        let (user, source) = (user.to_string(), source.to_string());
        self.blocking(move |s| s.delete_connection(&user, &source))
            .await
    }

    /// Whether the user has a credential for a source.
    pub async fn connected(&self, user: &str, source: &str) -> Result<bool, ImportError> {
        let (u, s) = (user.to_string(), source.to_string());
        Ok(self
            .blocking(move |st| st.get_connection(&u, &s))
            .await?
            .is_some())
    }

    async fn credential(&self, user: &str, source: &str) -> Result<Credential, ImportError> {
        let (u, s) = (user.to_string(), source.to_string());
        let sealed = self
            .blocking(move |st| st.get_connection(&u, &s))
            .await?
            .ok_or_else(|| ImportError::NoConnection(source.to_string()))?;
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| ImportError::Config("no `imports.encryption_key`".into()))?;
        let plain = sealer.open(user, source, &sealed)?;
        match serde_json::from_slice::<Value>(&plain) {
            Ok(Value::Object(fields)) => Ok(Credential::new(fields)),
            _ => Err(ImportError::Sealed),
        }
    }

    async fn load(&self, user: &str, source: &str) -> Result<Vec<ImportState>, ImportError> {
        let (u, s) = (user.to_string(), source.to_string());
        self.blocking(move |st| st.import_states(&u, Some(&s)))
            .await
    }

    async fn save(&self, user: &str, state: ImportState) -> Result<(), ImportError> {
        let user = user.to_string();
        self.blocking(move |st| st.save_import_state(&user, &state))
            .await?;
        self.changed();
        Ok(())
    }

    /// Every stream's states (initial phase, and incremental once it exists), in priority order.
    pub async fn status(&self, user: &str, source: &str) -> Result<Vec<ImportState>, ImportError> {
        let configured = self.source(source)?;
        let mut stored = self.load(user, source).await?;
        if stored.iter().any(|s| s.status == ImportStatus::Running) {
            let (u, s, now) = (user.to_string(), source.to_string(), self.clock.now_ms());
            let leased = self
                .blocking(move |st| st.import_lease(&u, &s, now))
                .await?
                .is_some();
            if !leased {
                // The step that was running it died; the next step (on any instance) picks it up.
                for state in stored.iter_mut() {
                    state.paused(now);
                }
            }
        }
        let mut out = Vec::new();
        for (stream, _) in &configured.streams {
            let initial = stored
                .iter()
                .find(|s| s.stream == *stream && s.phase == ImportPhase::Initial)
                .cloned()
                .unwrap_or_else(|| ImportState::new(source, stream, ImportPhase::Initial));
            out.push(initial);
            out.extend(
                stored
                    .iter()
                    .find(|s| s.stream == *stream && s.phase == ImportPhase::Incremental)
                    .cloned(),
            );
        }
        Ok(out)
    }

    /// Starts (or resumes) every stream of a source. In call mode, also runs one step.
    pub async fn start(&self, user: &str, source: &str) -> Result<Vec<ImportState>, ImportError> {
        let configured = self.source(source)?;
        if !self.connected(user, source).await? {
            return Err(ImportError::NoConnection(source.to_string()));
        }
        let stored = self.load(user, source).await?;
        let now = self.clock.now_ms();
        for (stream, _) in &configured.streams {
            let mut state = current(&stored, source, stream);
            state.start(now);
            self.save(user, state).await?;
        }
        tracing::info!(user, source, "import started");
        match self.mode {
            RunnerMode::Background => {
                // Answer with what `start` did (pending), read before the runner is woken to take it up.
                let started = self.status(user, source).await?;
                self.wake.notify_one();
                Ok(started)
            }
            RunnerMode::Call => {
                self.step(user, source).await?;
                self.status(user, source).await
            }
        }
    }

    /// Stops every stream of a source. A batch being fetched is dropped; `start` resumes from the checkpoint.
    pub async fn stop(&self, user: &str, source: &str) -> Result<Vec<ImportState>, ImportError> {
        let configured = self.source(source)?;
        let stored = self.load(user, source).await?;
        let now = self.clock.now_ms();
        for (stream, _) in &configured.streams {
            let mut state = current(&stored, source, stream);
            if state.status != ImportStatus::None {
                state.stopped(now);
                self.save(user, state).await?;
            }
        }
        self.status(user, source).await
    }

    /// Forgets every stream's progress: the next `start` walks everything again. Imported rows stay.
    pub async fn reset(&self, user: &str, source: &str) -> Result<Vec<ImportState>, ImportError> {
        self.source(source)?;
        for mut state in self.load(user, source).await? {
            state.reset();
            self.save(user, state).await?;
        }
        self.status(user, source).await
    }

    fn claim(&self, user: &str, source: &str) -> Option<Claim<'_>> {
        let key = (user.to_string(), source.to_string());
        let fresh = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        fresh.then_some(Claim {
            importer: self,
            key,
        })
    }

    /// Runs one step: the source's runnable streams in priority order, page by page, until every one is
    /// complete, halted (stopped, rate limited, failed) or the time budget is spent.
    pub async fn step(&self, user: &str, source: &str) -> Result<StepReport, ImportError> {
        let span = tracing::info_span!("import_step", user, source);
        self.step_inner(user, source).instrument(span).await
    }

    async fn step_inner(&self, user: &str, source: &str) -> Result<StepReport, ImportError> {
        let configured = self.source(source)?;
        let busy = StepReport {
            busy: true,
            more: true,
            ..Default::default()
        };
        let Some(_claim) = self.claim(user, source) else {
            return Ok(busy);
        };
        if !self.take_lease(user, source).await? {
            return Ok(busy);
        }
        let renewal = async {
            loop {
                tokio::time::sleep(Duration::from_millis(self.lease.ttl_ms as u64 / 3)).await;
                match self.take_lease(user, source).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::warn!(error = %e, "could not renew the import lease"),
                }
            }
        };
        let mut report = StepReport::default();
        let result = tokio::select! {
            r = self.walk_streams(user, source, configured, &mut report) => r,
            () = renewal => {
                tracing::warn!("another instance took the import's lease; this step stops");
                report.lease_lost = true;
                report.more = true;
                Ok(())
            }
        };
        let (u, s, lease) = (user.to_string(), source.to_string(), self.lease.clone());
        if let Err(e) = self
            .blocking(move |st| st.release_import(&u, &s, &lease.owner))
            .await
        {
            tracing::warn!(error = %e, "could not release the import lease");
        }
        result.map(|()| report)
    }

    /// Takes or renews this instance's lease on the job; false: another instance holds it.
    async fn take_lease(&self, user: &str, source: &str) -> Result<bool, ImportError> {
        let (u, s, lease) = (user.to_string(), source.to_string(), self.lease.clone());
        let now = self.clock.now_ms();
        self.blocking(move |st| st.claim_import(&u, &s, lease.get(), now))
            .await
    }

    /// The body of a step, under the lease: every runnable stream in priority order.
    async fn walk_streams(
        &self,
        user: &str,
        source: &str,
        configured: &Configured,
        report: &mut StepReport,
    ) -> Result<(), ImportError> {
        let deadline = Instant::now() + self.budget;
        let stored = self.load(user, source).await?;
        let runnable: Vec<(ImportState, &str)> = configured
            .streams
            .iter()
            .map(|(stream, table)| (current(&stored, source, stream), table.as_str()))
            .filter(|(s, _)| s.status.is_active())
            .collect();
        if runnable.is_empty() {
            return Ok(());
        }
        let credential = match self.credential(user, source).await {
            Ok(c) => c,
            Err(ImportError::NoConnection(_) | ImportError::Sealed) => {
                let now = self.clock.now_ms();
                for (mut state, _) in runnable {
                    state.failed(
                        ImportErrorCode::AuthExpired,
                        format!("no usable connection for `{source}`: connect again"),
                        now,
                    );
                    self.save_guarded(user, state).await?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let keeper = Keeper::new(
            self,
            user,
            source,
            configured.session.as_deref(),
            credential,
        );
        let keeper = &keeper;
        // Streams start in priority order; up to `parallel_streams` of them are walked at once.
        let mut walks = Vec::with_capacity(runnable.len());
        for (state, table) in runnable {
            let walk: crate::source::BoxFuture<'_, Result<StepReport, ImportError>> = Box::pin(
                self.walk_stream(user, source, configured, keeper, table, state, deadline),
            );
            walks.push(walk);
        }
        let mut walks = futures_util::stream::iter(walks).buffered(self.parallel_streams);
        while let Some(part) = walks.next().await {
            report.add(part?);
        }
        Ok(())
    }

    /// One stream's part of a step: takes it up (running), walks it until it completes, halts or the budget
    /// runs out, and leaves it pending in the last case.
    #[allow(clippy::too_many_arguments)]
    async fn walk_stream(
        &self,
        user: &str,
        source: &str,
        configured: &Configured,
        keeper: &Keeper<'_>,
        table: &str,
        mut state: ImportState,
        deadline: Instant,
    ) -> Result<StepReport, ImportError> {
        let mut report = StepReport::default();
        let now = self.clock.now_ms();
        if state.status == ImportStatus::RateLimited && !state.rate_limit_over(now) {
            report.more = true;
            return Ok(report);
        }
        if Instant::now() >= deadline {
            report.more = true;
            report.budget_exhausted = true;
            return Ok(report);
        }
        state.running(now);
        if !self.save_guarded(user, state.clone()).await? {
            return Ok(report);
        }
        let end = self
            .walk(
                user,
                source,
                configured,
                keeper,
                table,
                &mut state,
                deadline,
                &mut report,
            )
            .await?;
        match end {
            StreamEnd::Completed => {}
            StreamEnd::Halted => {
                report.more |= state.status == ImportStatus::RateLimited;
            }
            StreamEnd::Budget => {
                state.paused(self.clock.now_ms());
                self.save_guarded(user, state).await?;
                report.more = true;
                report.budget_exhausted = true;
            }
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        user: &str,
        source: &str,
        configured: &Configured,
        keeper: &Keeper<'_>,
        table: &str,
        state: &mut ImportState,
        deadline: Instant,
        report: &mut StepReport,
    ) -> Result<StreamEnd, ImportError> {
        loop {
            if Instant::now() >= deadline {
                return Ok(StreamEnd::Budget);
            }
            if let Some(rps) = configured.per_second
                && !self
                    .limiter
                    .until_ready(source, keeper.fingerprint, rps, deadline)
                    .await
            {
                return Ok(StreamEnd::Budget);
            }
            let request = PageRequest {
                stream: &state.stream,
                phase: state.phase,
                checkpoint: state.checkpoint.as_deref(),
                watermark: state.watermark.as_deref(),
                page_size: self.page_size,
            };
            // A token about to expire is renewed first; one the source refuses is renewed once and the
            // page asked again.
            let (credential, generation) = match keeper.fresh().await {
                Ok(c) => c,
                Err(halt) => return self.halt(user, state, halt).await,
            };
            let mut fetched = fetch(configured, &credential, request, deadline).await;
            if matches!(fetched, Err(FetchFailure::Source(SourceError::Auth(_))))
                && keeper.renewable(&credential)
            {
                match keeper.renew(generation).await {
                    Ok((renewed, _)) => {
                        fetched = fetch(configured, &renewed, request, deadline).await;
                    }
                    Err(halt) => return self.halt(user, state, halt).await,
                }
            }
            let now = self.clock.now_ms();
            let page = match fetched {
                Ok(page) => page,
                Err(FetchFailure::Budget) => return Ok(StreamEnd::Budget),
                Err(FetchFailure::Source(e)) => {
                    match &e {
                        SourceError::RateLimited(limit) => {
                            let reset = reset_at(*limit, state, now);
                            tracing::info!(stream = %state.stream, reset_at = reset, "rate limited");
                            state.rate_limited(reset, Some(0), now);
                            self.wake.notify_one();
                        }
                        SourceError::Auth(_) => {
                            state.failed(ImportErrorCode::AuthExpired, e.to_string(), now)
                        }
                        SourceError::Transient(_) => {
                            state.failed(ImportErrorCode::UpstreamUnavailable, e.to_string(), now)
                        }
                        SourceError::Permanent(_) => {
                            state.failed(ImportErrorCode::UpstreamFailed, e.to_string(), now)
                        }
                        SourceError::Private(_) => {
                            state.failed(ImportErrorCode::ProfilePrivate, e.to_string(), now)
                        }
                        SourceError::Forbidden(_) => {
                            state.failed(ImportErrorCode::MissingPermission, e.to_string(), now)
                        }
                        SourceError::Tls(_) => {
                            state.failed(ImportErrorCode::TlsFailed, e.to_string(), now)
                        }
                    }
                    if !matches!(e, SourceError::RateLimited(_)) {
                        tracing::warn!(stream = %state.stream, error = %e, "import failed");
                    }
                    self.save_guarded(user, state.clone()).await?;
                    return Ok(StreamEnd::Halted);
                }
            };
            keeper.page_fetched().await;
            let items = page.records.len() as u64;
            let complete = page.next.is_none();
            let mut next = state.clone();
            next.batch_applied(items, page.total, page.next, page.newest, now);
            next.rate_limit_remaining = page.remaining;
            if complete {
                next.completed(now);
            } else if let Some(limit) = page.window_spent {
                // The window's last request is spent: wait for its reset rather than be refused.
                let reset = reset_at(limit, &next, now);
                if reset > now {
                    next.rate_limited(reset, Some(0), now);
                }
            }
            let rows = rows_for(&self.schema, table, page.records);
            match self.write(user, table, rows, next.clone(), now).await? {
                Ok(Some(_)) => {
                    *state = next;
                    report.batches += 1;
                    report.items += items;
                    self.changed();
                    if state.status == ImportStatus::RateLimited {
                        tracing::info!(stream = %state.stream, reset_at = ?state.rate_limit_reset_at, "rate-limit window spent");
                        self.wake.notify_one();
                        return Ok(StreamEnd::Halted);
                    }
                }
                Ok(None) => return Ok(StreamEnd::Halted),
                Err(invalid) => {
                    state.failed(ImportErrorCode::InvalidRows, invalid, now);
                    self.save_guarded(user, state.clone()).await?;
                    return Ok(StreamEnd::Halted);
                }
            }
            if complete {
                return Ok(StreamEnd::Completed);
            }
        }
    }

    /// Applies rows and the state in one transaction. `Err`: the rows do not fit the table.
    async fn write(
        &self,
        user: &str,
        table: &str,
        rows: Vec<String>,
        state: ImportState,
        now: i64,
    ) -> Result<Result<Option<WriteSummary>, String>, ImportError> {
        let schema = self.schema.clone();
        let (user, table) = (user.to_string(), table.to_string());
        let lease = self.lease.clone();
        self.blocking(move |store| {
            let raws: Vec<Box<RawValue>> = rows
                .into_iter()
                .filter_map(|r| RawValue::from_string(r).ok())
                .collect();
            let mut request = BulkRequest {
                upserts: BTreeMap::new(),
                deletes: BTreeMap::new(),
            };
            if !raws.is_empty() {
                request
                    .upserts
                    .insert(table, raws.iter().map(|r| &**r).collect());
            }
            let batch = match plan_bulk(&schema, &request, &user) {
                Ok(b) => b,
                Err(e) => return Ok(Err(e.to_string())),
            };
            store
                .write_import(&user, &batch, &state, lease.get(), now)
                .map(Ok)
        })
        .await
    }

    /// Ends a stream's walk because its credential could not be renewed: in `error`, or `rate_limited`
    /// until the token endpoint's reset (the runner then resumes it by itself, as after an API's 429).
    async fn halt(
        &self,
        user: &str,
        state: &mut ImportState,
        halt: Halt,
    ) -> Result<StreamEnd, ImportError> {
        let now = self.clock.now_ms();
        match halt {
            Halt::Failed { code, message } => {
                tracing::warn!(stream = %state.stream, code = %code, "the credential could not be renewed");
                state.failed(code, message, now);
            }
            Halt::RateLimited(limit) => {
                let reset = reset_at(limit, state, now);
                tracing::info!(stream = %state.stream, reset_at = reset, "token endpoint rate limited");
                state.rate_limited(reset, Some(0), now);
                self.wake.notify_one();
            }
        }
        self.save_guarded(user, state.clone()).await?;
        Ok(StreamEnd::Halted)
    }

    /// Saves a state unless a stop or reset happened since the step loaded it or the step lost its lease;
    /// whether it was saved.
    async fn save_guarded(&self, user: &str, state: ImportState) -> Result<bool, ImportError> {
        let user = user.to_string();
        let now = self.clock.now_ms();
        let lease = self.lease.clone();
        let saved = self
            .blocking(move |st| {
                let empty = WriteBatch {
                    conflict_cursor: None,
                    tables: Vec::new(),
                };
                st.write_import(&user, &empty, &state, lease.get(), now)
            })
            .await?
            .is_some();
        if saved {
            self.changed();
        }
        Ok(saved)
    }

    /// The background runner: steps every active import, sleeping until the next rate-limit reset or a
    /// `start`. Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = self.clock.now_ms();
            let mut wake_at: Option<i64> = None;
            let mut progressed = false;
            match self.blocking(|s| s.active_imports()).await {
                Ok(active) => {
                    let mut due = BTreeSet::new();
                    for (user, state) in active {
                        if !self.sources.contains_key(&state.source) {
                            continue;
                        }
                        if state.status == ImportStatus::RateLimited && !state.rate_limit_over(now)
                        {
                            let at = state.rate_limit_reset_at.unwrap_or(now);
                            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                        } else {
                            due.insert((user, state.source));
                        }
                    }
                    for (user, source) in due {
                        match self.step(&user, &source).await {
                            Ok(r) => progressed |= r.items > 0 || r.budget_exhausted,
                            Err(e) => {
                                tracing::warn!(user, source, error = %e, "import step failed")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not list imports"),
            }
            if progressed {
                tokio::task::yield_now().await;
                continue;
            }
            let wait = wake_at
                .map(|t| Duration::from_millis((t - self.clock.now_ms()).max(1) as u64))
                .unwrap_or(IDLE)
                .min(IDLE);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The `additional data` of a consent `state`'s sealing: not a user id, so a state never opens as a
/// credential and a credential never passes as a state.
const CONSENT_AAD: &str = "\u{0}consent-state";
/// How long a consent may take.
const CONSENT_TTL_MS: i64 = 10 * 60 * 1000;
/// An access token expiring within this long is renewed before the next page.
const RENEW_MARGIN_MS: i64 = 60_000;
/// Renewals in a row, with no page fetched in between, after which a step gives up (never a loop).
const MAX_RENEWALS_IN_A_ROW: u32 = 2;

/// Whether two secrets are equal, in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// When a rate-limited stream may run again: the signal's reset, or, without one, the backoff (twice the
/// previous wait when the stream was still waiting out an earlier limit with nothing fetched since).
///
/// A signal that says "now" (`Retry-After: 0`, a reset already past) is taken once; said again with
/// nothing fetched in between, it gets the backoff, so a source that keeps saying it never makes a loop.
fn reset_at(limit: RateLimit, state: &ImportState, now: i64) -> i64 {
    let previous = state
        .rate_limit_hit_at
        .zip(state.rate_limit_reset_at)
        .map(|(hit, reset)| reset - hit);
    let backoff = || now + crate::ratelimit::backoff_ms(previous) as i64;
    let signalled = match limit {
        RateLimit::After { ms } => now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        RateLimit::At { epoch_ms } => epoch_ms.max(now),
        RateLimit::Unsignalled => return backoff(),
    };
    if signalled <= now && previous.is_some() {
        backoff()
    } else {
        signalled
    }
}

/// A refusal of the service at connect time, as an import error; `now` turns a rate limit's reset into
/// the seconds of a `Retry-After`.
fn refused(failure: AuthFailure, now: i64) -> ImportError {
    match failure {
        AuthFailure::Refused { code, message } => ImportError::Refused { code, message },
        AuthFailure::Unavailable(message) => ImportError::Unavailable(message),
        AuthFailure::RateLimited(limit) => {
            let ms = match limit {
                RateLimit::After { ms } => ms,
                RateLimit::At { epoch_ms } => epoch_ms.saturating_sub(now).max(0) as u64,
                RateLimit::Unsignalled => crate::ratelimit::FIRST_BACKOFF_MS,
            };
            ImportError::RateLimited {
                retry_after_secs: ms.div_ceil(1000).max(1),
            }
        }
    }
}

/// Why a walk stopped over its credential.
enum Halt {
    /// The code and message of its `error` state.
    Failed {
        code: ImportErrorCode,
        message: String,
    },
    /// The token endpoint is rate limiting: the stream waits, as for an API's rate limit.
    RateLimited(RateLimit),
}

impl Halt {
    fn failed(code: ImportErrorCode, message: impl Into<String>) -> Halt {
        Halt::Failed {
            code,
            message: message.into(),
        }
    }
}

impl From<AuthFailure> for Halt {
    fn from(failure: AuthFailure) -> Halt {
        match failure {
            AuthFailure::Refused { code, message } => Halt::Failed { code, message },
            AuthFailure::Unavailable(message) => Halt::failed(
                ImportErrorCode::UpstreamUnavailable,
                format!("the credential could not be renewed: {message}"),
            ),
            AuthFailure::RateLimited(limit) => Halt::RateLimited(limit),
        }
    }
}

/// The credential of one step, shared by its streams: renewed before it expires and when the source
/// refuses it, saved sealed after each renewal, and renewed at most [`MAX_RENEWALS_IN_A_ROW`] times
/// without a page in between. A refusal is remembered, so parallel streams do not ask again.
struct Keeper<'a> {
    importer: &'a Importer,
    user: &'a str,
    source: &'a str,
    session: Option<&'a dyn Session>,
    /// Of the credential the step started with (the proactive rate limit's key stays put across renewals).
    fingerprint: u64,
    held: tokio::sync::Mutex<Held>,
}

struct Held {
    credential: Arc<Credential>,
    /// Moves at each renewal, so a stream refused with an older credential takes the newer one.
    generation: u64,
    in_a_row: u32,
    refused: Option<(ImportErrorCode, String)>,
    /// The token endpoint's rate limit, met in this step.
    limited: Option<RateLimit>,
}

impl<'a> Keeper<'a> {
    fn new(
        importer: &'a Importer,
        user: &'a str,
        source: &'a str,
        session: Option<&'a dyn Session>,
        credential: Credential,
    ) -> Keeper<'a> {
        Keeper {
            importer,
            user,
            source,
            session,
            fingerprint: credential.fingerprint(),
            held: tokio::sync::Mutex::new(Held {
                credential: Arc::new(credential),
                generation: 0,
                in_a_row: 0,
                refused: None,
                limited: None,
            }),
        }
    }

    fn renewable(&self, credential: &Credential) -> bool {
        self.session.is_some_and(|s| s.renewable(credential))
    }

    /// The credential to use for the next page, renewed first when it expires within the margin (or, once
    /// renewed in this step, when it has expired).
    async fn fresh(&self) -> Result<(Arc<Credential>, u64), Halt> {
        let mut held = self.held.lock().await;
        let now = self.importer.clock.now_ms();
        let margin = if held.generation == 0 {
            RENEW_MARGIN_MS
        } else {
            0
        };
        let expiring = held
            .credential
            .number("expires_at")
            .is_some_and(|at| at <= now + margin);
        if expiring && self.renewable(&held.credential) {
            self.renew_held(&mut held).await?;
        }
        Ok((held.credential.clone(), held.generation))
    }

    /// Renews after the source refused the credential of `generation`; when another stream renewed it
    /// since, the newer one.
    async fn renew(&self, generation: u64) -> Result<(Arc<Credential>, u64), Halt> {
        let mut held = self.held.lock().await;
        if held.generation == generation {
            self.renew_held(&mut held).await?;
        }
        Ok((held.credential.clone(), held.generation))
    }

    async fn renew_held(&self, held: &mut Held) -> Result<(), Halt> {
        if let Some((code, message)) = &held.refused {
            return Err(Halt::failed(*code, message.clone()));
        }
        if let Some(limit) = held.limited {
            // Another stream of this step was just told to wait: do not ask again.
            return Err(Halt::RateLimited(limit));
        }
        let Some(session) = self.session else {
            return Ok(());
        };
        if held.in_a_row >= MAX_RENEWALS_IN_A_ROW {
            return Err(Halt::failed(
                ImportErrorCode::AuthExpired,
                "the source refused freshly renewed tokens: connect again",
            ));
        }
        held.in_a_row += 1;
        let now = self.importer.clock.now_ms();
        match session.renew(&held.credential, now).await {
            Ok(fields) => {
                match self
                    .importer
                    .store_renewed(self.user, self.source, &held.credential, fields.clone())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(Halt::failed(
                            ImportErrorCode::AuthExpired,
                            "the connection changed during the import: start it again",
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not save the renewed credential");
                        return Err(Halt::failed(
                            ImportErrorCode::AuthExpired,
                            "the renewed credential could not be saved",
                        ));
                    }
                }
                tracing::info!(source = self.source, "credential renewed");
                held.credential = Arc::new(Credential::new(fields));
                held.generation += 1;
                Ok(())
            }
            Err(failure) => {
                let halt = Halt::from(failure);
                match &halt {
                    Halt::Failed { code, message } if code.is_auth() => {
                        held.refused = Some((*code, message.clone()));
                    }
                    Halt::Failed { .. } => {}
                    Halt::RateLimited(limit) => {
                        // Not a renewal that counts against MAX_RENEWALS_IN_A_ROW: none was made.
                        held.in_a_row -= 1;
                        held.limited = Some(*limit);
                    }
                }
                Err(halt)
            }
        }
    }

    /// A page arrived: the renewals before it worked.
    async fn page_fetched(&self) {
        self.held.lock().await.in_a_row = 0;
    }
}

/// The state a stream runs next: its initial walk until that completes, then its incremental walk (which
/// starts from the initial walk's watermark).
fn current(stored: &[ImportState], source: &str, stream: &str) -> ImportState {
    let find = |phase| {
        stored
            .iter()
            .find(|s| s.stream == stream && s.phase == phase)
            .cloned()
    };
    let initial = find(ImportPhase::Initial)
        .unwrap_or_else(|| ImportState::new(source, stream, ImportPhase::Initial));
    if !initial.is_complete {
        return initial;
    }
    find(ImportPhase::Incremental).unwrap_or_else(|| {
        let mut s = ImportState::new(source, stream, ImportPhase::Incremental);
        s.watermark = initial.watermark.clone();
        s
    })
}

/// Fetches one page, retrying transient failures with exponential backoff, all within the deadline.
async fn fetch(
    configured: &Configured,
    credential: &Credential,
    request: PageRequest<'_>,
    deadline: Instant,
) -> Result<crate::Page, FetchFailure> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(FIRST_BACKOFF * 64)
        .with_max_times(configured.max_retries as usize)
        .with_jitter();
    let attempts = (|| configured.source.fetch(credential, request))
        .retry(backoff)
        .when(|e| matches!(e, SourceError::Transient(_)))
        .notify(|e, wait| tracing::debug!(error = %e, ?wait, "retrying a page"));
    match tokio::time::timeout_at(deadline, attempts).await {
        Err(_) => Err(FetchFailure::Budget),
        Ok(r) => r.map_err(FetchFailure::Source),
    }
}

/// An instance's lease terms, owned, so store calls on blocking threads can carry them.
#[derive(Debug, Clone)]
struct LeaseTerms {
    owner: Arc<str>,
    ttl_ms: i64,
}

impl LeaseTerms {
    fn get(&self) -> Lease<'_> {
        Lease {
            owner: &self.owner,
            ttl_ms: self.ttl_ms,
        }
    }
}

/// This instance's id in import leases: host, process and start time, unique enough across restarts.
fn instance_id(started_ms: i64) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{started_ms:x}", std::process::id())
}

/// The JSON text of each record, keeping only `id` and the table's declared columns.
fn rows_for(schema: &Schema, table: &str, records: Vec<Value>) -> Vec<String> {
    let Some(table) = schema.table(table) else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter_map(|r| match r {
            Value::Object(mut fields) => {
                fields.retain(|k, _| k == "id" || table.column(k).is_some());
                Some(Value::Object(fields).to_string())
            }
            _ => None,
        })
        .collect()
}
