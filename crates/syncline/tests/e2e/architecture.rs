//! The crate dependency rule, checked: core ← store ← import ← server ← binary; the client SDK depends on the core
//! only; the testkit is never a normal dependency of a library crate.

use std::collections::BTreeMap;
use std::path::Path;

/// Workspace crates each crate may depend on (normal dependencies, not dev-dependencies).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("syncline-core", &[][..]),
        ("syncline-http", &[][..]),
        ("syncline-testkit", &["syncline-http"][..]),
        ("syncline-store", &["syncline-core"][..]),
        (
            "syncline-import",
            &["syncline-core", "syncline-store", "syncline-http"][..],
        ),
        (
            "syncline-server",
            &["syncline-core", "syncline-store", "syncline-import"][..],
        ),
        ("syncline-client", &["syncline-core", "syncline-http"][..]),
        (
            "syncline",
            &[
                "syncline-core",
                "syncline-store",
                "syncline-import",
                "syncline-server",
                "syncline-client",
                "syncline-http",
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

/// README's first command is `cargo run --release -- serve`: that works only while the `syncline` binary is
/// the workspace's one binary target. Tools for tests are examples.
#[test]
fn the_syncline_binary_is_the_only_binary_so_cargo_run_finds_it() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut binaries = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_string();
        if dir.join("src/main.rs").exists() {
            binaries.push(name.clone());
        }
        if let Ok(bins) = std::fs::read_dir(dir.join("src/bin")) {
            binaries.extend(bins.map(|b| format!("{name}:{:?}", b.unwrap().file_name())));
        }
        if let Some(declared) = doc.get("bin").and_then(|b| b.as_array()) {
            binaries.extend(declared.iter().map(|b| format!("{name}:{b}")));
        }
    }
    assert_eq!(binaries, ["syncline"]);
}

/// The server knows nothing of SQL: database clients are the store's business.
#[test]
fn only_the_store_talks_to_databases() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sql = [
        "postgres",
        "rusqlite",
        "r2d2",
        "r2d2_postgres",
        "tokio-postgres",
    ];
    for name in ["syncline-core", "syncline-import", "syncline-server"] {
        let text = std::fs::read_to_string(crates.join(name).join("Cargo.toml")).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default();
        for client in sql {
            assert!(
                !deps.contains_key(client),
                "{name} must not depend on {client}: go through the store"
            );
        }
    }
}

/// Every Rust file of the workspace, tests and examples included.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && name != "node_modules" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Tidy, in rust-analyzer's way: every file says what it is for in a `//!` line first, and no test is
/// switched off.
#[test]
fn every_rust_file_opens_with_a_doc_line_and_no_test_is_ignored() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    assert!(files.len() > 20, "found {} files", files.len());
    let ignore = ["#[", "ignore]"].concat();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a `//!` line",
            file.display()
        );
        assert!(
            !text.contains(&ignore),
            "{} switches a test off",
            file.display()
        );
    }
}

/// Every crate takes its `rust-version` from the workspace, and the toolchain is pinned.
#[test]
fn every_crate_inherits_the_rust_version_and_the_toolchain_is_pinned() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(&crates).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            doc["package"]
                .get("rust-version")
                .and_then(|v| v.get("workspace")),
            Some(&toml::Value::Boolean(true)),
            "{}: rust-version.workspace = true",
            manifest.display()
        );
    }
    let toolchain = std::fs::read_to_string(crates.join("../rust-toolchain.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&toolchain).unwrap();
    assert!(doc["toolchain"]["channel"].as_str().is_some());
}

/// Wall-clock time comes from `syncline_core::Clock`: `clippy.toml` forbids `SystemTime::now`, and the one
/// exception is `SystemClock` in `syncline-core/src/clock.rs`.
#[test]
fn only_the_system_clock_reads_the_system_clock() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let clippy = std::fs::read_to_string(crates.join("../clippy.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&clippy).unwrap();
    let paths: Vec<&str> = doc["disallowed-methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.get("path").and_then(toml::Value::as_str))
        .collect();
    assert!(
        paths.contains(&"std::time::SystemTime::now"),
        "clippy.toml disallows {paths:?}"
    );
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    let allow = ["allow(clippy::", "disallowed_methods)"].concat();
    let allowed: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&allow))
        .map(|f| f.strip_prefix(&crates).unwrap().display().to_string())
        .collect();
    assert_eq!(allowed, ["syncline-core/src/clock.rs"]);
}
