//! The end-to-end suite of `tests/e2e` again, on volumes that store names
//! as given (`init --plaintext-names`): every test runs in both name modes.

/// Whether this binary's volumes store names as given.
pub const PLAINTEXT_NAMES: bool = true;

#[path = "../e2e/cli_volume.rs"]
mod cli_volume;
#[path = "../e2e/engine_cli.rs"]
mod engine_cli;
#[path = "../e2e/mount_hardening.rs"]
mod mount_hardening;
#[path = "../e2e/mount_integrity.rs"]
mod mount_integrity;
#[path = "../e2e/mount_model.rs"]
mod mount_model;
#[path = "../e2e/mount_ops.rs"]
mod mount_ops;
#[path = "../e2e/mount_soak.rs"]
mod mount_soak;
#[path = "../e2e/names.rs"]
mod names;
#[path = "../e2e/reencrypt.rs"]
mod reencrypt;
#[path = "../e2e/util.rs"]
mod util;
