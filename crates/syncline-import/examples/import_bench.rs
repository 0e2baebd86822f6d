//! Import throughput from a zero-latency in-memory source, with a checkpoint per batch (every page is one
//! store transaction holding its rows and its state).
//!
//!     cargo run --release -p syncline-import --example import_bench -- [ITEMS] [PAGE_SIZE]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, json};
use syncline_core::SystemClock;
use syncline_core::{Schema, TableConfig};
use syncline_import::{
    BoxFuture, Credential, Importer, ImportsConfig, Page, PageRequest, Source, SourceError,
};
use syncline_store::{SqliteStore, Store};

/// `total` items, paged by offset, generated on the fly.
struct Generated {
    total: u64,
}

impl Source for Generated {
    fn credential_fields(&self) -> Vec<String> {
        Vec::new()
    }

    fn streams(&self) -> &'static [&'static str] {
        &["items"]
    }

    fn fetch<'a>(
        &'a self,
        _credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(async move {
            let start: u64 = request.checkpoint.map_or(0, |c| c.parse().unwrap());
            let end = (start + request.page_size as u64).min(self.total);
            let records = (start..end)
                .map(|i| json!({"id": format!("item{i:09}"), "name": format!("Item {i}"), "plays": i % 1000, "liked": i % 2 == 0}))
                .collect();
            Ok(Page {
                records,
                next: (end < self.total).then(|| end.to_string()),
                total: Some(self.total),
                ..Default::default()
            })
        })
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let items: u64 = args.get(1).map_or(200_000, |a| a.parse().unwrap());
    let page_size: usize = args.get(2).map_or(50, |a| a.parse().unwrap());
    let tables: BTreeMap<String, TableConfig> = toml::from_str(
        "[items]\ncolumns = { name = \"string\", plays = \"number\", liked = \"boolean\" }\n",
    )
    .unwrap();
    let schema = Arc::new(Schema::from_config(&tables).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("bench.db"), schema.clone()).unwrap());
    let config: ImportsConfig = toml::from_str(&format!(
        "encryption_key = \"{}\"\nmode = \"call\"\npage_size = {page_size}\nstep_budget_ms = 600000\n",
        syncline_import::Sealer::generate_key()
    ))
    .unwrap();
    let mut importer =
        Importer::from_config(&config, store.clone(), schema, Arc::new(SystemClock)).unwrap();
    importer
        .add_source(
            "generated",
            Arc::new(Generated { total: items }),
            &BTreeMap::from([("items".to_string(), "items".to_string())]),
            None,
            0,
        )
        .unwrap();
    importer
        .connect("bench", "generated", Map::new())
        .await
        .unwrap();
    let started = Instant::now();
    importer.start("bench", "generated").await.unwrap();
    while importer.step("bench", "generated").await.unwrap().more {}
    let took = started.elapsed();
    let rows = store.user_stats("bench").unwrap().tables["items"].records;
    assert_eq!(rows, items);
    println!(
        "imported {items} items in {} batches of {page_size} (one checkpoint each) in {:.2}s: {:.0} items/s",
        items.div_ceil(page_size as u64),
        took.as_secs_f64(),
        items as f64 / took.as_secs_f64()
    );
}
