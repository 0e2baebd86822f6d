//! End-to-end tests of the `syncline` binary and of the workspace as a whole, in one test binary (one link on
//! 2 cores instead of one per file).

mod architecture;
mod import_cli;
mod imports;
mod instances;
mod kill;
mod support;
mod watch;
