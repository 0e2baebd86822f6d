#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, storage conformance, HTTP integration), then the real
# WatermelonDB client under Node against a real server process. Installs the Node packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build -p syncline --bin syncline
cargo test --workspace
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
SYNCLINE_BIN="$target/debug/syncline" node --test tests/node/
