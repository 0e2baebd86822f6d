//! The crate dependency rule, checked: core ← store ← import ← server ← binary; the client SDK depends on the core
//! only; the testkit is never a normal dependency of a library crate.

use std::collections::BTreeMap;
use std::path::Path;

/// Workspace crates each crate may depend on (normal dependencies, not dev-dependencies).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("syncline-core", &[][..]),
        ("syncline-testkit", &[][..]),
        ("syncline-store", &["syncline-core"][..]),
        ("syncline-import", &["syncline-core", "syncline-store"][..]),
        (
            "syncline-server",
            &["syncline-core", "syncline-store", "syncline-import"][..],
        ),
        ("syncline-client", &["syncline-core"][..]),
        (
            "syncline",
            &[
                "syncline-core",
                "syncline-store",
                "syncline-import",
                "syncline-server",
                "syncline-client",
                "syncline-testkit",
            ][..],
        ),
    ])
}

#[test]
fn crates_depend_only_in_the_allowed_direction() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let allowed = allowed();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_string();
        let permitted = allowed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} is not in the dependency rule"));
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default();
        for dep in deps.keys().filter(|d| d.starts_with("syncline")) {
            assert!(
                permitted.contains(&dep.as_str()),
                "{name} must not depend on {dep}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "found {checked} crates");
}
