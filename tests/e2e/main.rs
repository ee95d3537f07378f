//! End-to-end tests of the `chronicle` binary, built as one test binary, on
//! volumes with encrypted names (the default). `tests/e2e_plaintext` runs
//! the same suite on volumes made with `--plaintext-names`.

/// Whether this binary's volumes store names as given.
pub const PLAINTEXT_NAMES: bool = false;

mod cli_volume;
mod engine_cli;
mod engine_serve;
mod fstab;
mod io_uring;
mod mixed_workload;
mod mount_hardening;
mod mount_integrity;
mod mount_model;
mod mount_ops;
mod mount_soak;
mod names;
mod polling;
mod reencrypt;
mod stats;
mod util;
