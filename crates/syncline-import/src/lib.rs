//! Syncline's import runner: resumable imports from third-party APIs into the declared tables.
//!
//! A [`Source`] fetches one page of one stream from a checkpoint and classifies its failures. The
//! [`Importer`] walks the streams of a source in their priority order, in steps bounded by a time budget:
//! each page becomes a bulk upsert applied by [`syncline_store::ImportStore::write_import`] together with the
//! checkpoint after it, so a crash loses at most the page in flight and never applies one twice. The pure
//! state transitions live in [`syncline_core::ImportState`]; this crate does the I/O around them.
//!
//! Architecture invariant: this crate never logs or returns a credential; credentials are sealed with
//! [`Sealer`] before they reach the store.

mod auth;
mod config;
mod connectors;
mod crypto;
mod error;
mod limiter;
mod ratelimit;
mod runner;
mod source;

pub use config::{AuthConfig, ImportsConfig, RestConfig, RunnerMode, SourceConfig, SourceKind};
pub use connectors::build_source;
pub use crypto::Sealer;
pub use error::ImportError;
pub use runner::{Consent, Importer, StepReport};
pub use source::{BoxFuture, Credential, Page, PageRequest, RateLimit, Source, SourceError};
