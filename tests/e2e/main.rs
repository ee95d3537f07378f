//! End-to-end tests of the `chronicle` binary, built as one test binary.

mod cli_volume;
mod engine_cli;
mod mount_hardening;
mod mount_integrity;
mod mount_model;
mod mount_ops;
mod reencrypt;
mod util;
