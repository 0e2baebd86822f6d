//! The example import configurations (`examples/*/imports.toml`) read, and build an importer whose every
//! stream goes to a declared table.

use std::collections::BTreeMap;
use std::sync::Arc;

use syncline_core::SystemClock;
use syncline_core::{Schema, TableConfig};
use syncline_import::{Importer, ImportsConfig};
use syncline_store::{SqliteStore, Store};

#[test]
fn every_example_import_configuration_builds_an_importer() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path().join("imports.toml");
        if !path.exists() {
            continue;
        }
        let mut file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let imports: ImportsConfig = file
            .remove("imports")
            .unwrap()
            .try_into()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tables: BTreeMap<String, TableConfig> =
            file.remove("tables").unwrap().try_into().unwrap();
        let schema = Arc::new(Schema::from_config(&tables).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("s.db"), schema.clone()).unwrap());
        let importer = Importer::from_config(&imports, store, schema, Arc::new(SystemClock))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        sources.extend(importer.source_names());
    }
    sources.sort();
    assert_eq!(
        sources,
        ["github", "playstation", "spotify", "steam", "xbox"],
        "game-library, music-library and rest-api"
    );
}
