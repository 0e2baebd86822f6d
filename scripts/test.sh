#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, storage conformance, HTTP integration), the real WatermelonDB
# client under Node against a real server process, the dashboard in headless Chromium (Playwright) against
# a real server importing from fake third-party APIs, and the TypeScript client SDK (clients/js) in Node and
# in headless Chromium against a real server. Installs the Node packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build -p syncline --bin syncline
cargo build -p syncline-testkit --example fake-apis
cargo test --workspace
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
SYNCLINE_BIN="$target/debug/syncline" node --test tests/node/
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
SYNCLINE_BIN="$target/debug/syncline" FAKE_APIS_BIN="$target/debug/examples/fake-apis" \
  SCREENSHOT_DIR="$target/dashboard-screenshots" node --test tests/browser/
npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
SYNCLINE_BIN="$target/debug/syncline" npm test --prefix clients/js
