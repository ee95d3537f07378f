//! `chronicle`: encryption at rest for a time-series database.
//!
//! Thin glue: parse arguments, call the libraries, map errors to exit codes.

mod cli;
mod commands;
mod daemon;
mod engine_args;
mod engine_bench;
mod engine_cli;
mod hygiene;
mod keysource;
mod logging;
mod mount_helper;
mod query_output;
mod server;
mod syslog;

use std::process::ExitCode;

use chronicle_mount::fuse::MountOptions;
use chronicle_mount::VolumeError;
use clap::Parser;

use cli::{Cli, Command};
use commands::volume::features;
use commands::{inspect, maintain, mount, volume};

/// Exit code for `encryption key mismatch`.
const EXIT_KEY_MISMATCH: u8 = 12;
/// Exit code for a block or header that failed authentication.
const EXIT_AUTHENTICATION: u8 = 26;
/// Exit code for `inspect --grep` finding plaintext in the raw files.
const EXIT_PLAINTEXT_FOUND: u8 = 3;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match argv
        .first()
        .and_then(|name| mount_helper::Helper::named(name))
    {
        Some(helper) => match mount_helper::cli(helper, &argv) {
            Some(cli) => cli,
            None => return ExitCode::SUCCESS,
        },
        None => Cli::parse_from(argv),
    };
    if !matches!(cli.command, Command::Mount { .. }) {
        logging::init_cli();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(v) = e.downcast_ref::<VolumeError>() {
        return match v {
            VolumeError::KeyMismatch => EXIT_KEY_MISMATCH,
            VolumeError::AuthenticationFailed { .. } | VolumeError::BadFileHeader { .. } => {
                EXIT_AUTHENTICATION
            }
            _ => 1,
        };
    }
    if e.is::<maintain::BlocksFailed>() || e.is::<inspect::BadHeaders>() {
        return EXIT_AUTHENTICATION;
    }
    if e.is::<inspect::PlaintextFound>() {
        return EXIT_PLAINTEXT_FOUND;
    }
    1
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init {
            backing,
            key,
            kdf,
            plaintext_names,
            xattrs,
        } => volume::init(&backing, &key, &kdf, features(plaintext_names, xattrs)),
        Command::Mount {
            backing,
            mountpoint,
            key,
            foreground,
            read_only,
            noexec,
            allow_other,
            no_writeback_cache,
            threads,
            io_uring,
            max_inodes,
            poll_us,
            log_file,
        } => {
            let defaults = MountOptions::default();
            mount::mount(mount::MountRequest {
                backing,
                mountpoint,
                key,
                foreground,
                options: MountOptions {
                    read_only,
                    no_exec: noexec,
                    allow_other,
                    writeback_cache: !no_writeback_cache,
                    threads: threads.unwrap_or(defaults.threads),
                    io_uring,
                    max_inodes: max_inodes.unwrap_or(defaults.max_inodes),
                    poll: poll_us.map_or(defaults.poll, std::time::Duration::from_micros),
                },
                log_file,
            })
        }
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
        Command::Stats { mountpoint, raw } => commands::stats::stats(&mountpoint, raw),
        Command::Info { backing, json } => volume::info(&backing, json),
        Command::Fsck {
            backing,
            key,
            repair,
        } => maintain::fsck(&backing, &key, repair),
        Command::Inspect { backing, grep } => inspect::inspect(&backing, &grep),
        Command::RotateKey {
            backing,
            key,
            new_key,
            kdf,
            reencrypt,
        } => maintain::rotate_key(&backing, &key, &new_key, &kdf, reencrypt),
        Command::Encrypt {
            plain_dir,
            backing,
            key,
            kdf,
            plaintext_names,
            xattrs,
        } => maintain::encrypt(
            &plain_dir,
            &backing,
            &key,
            &kdf,
            features(plaintext_names, xattrs),
        ),
        Command::Path {
            backing,
            path,
            key,
            to_plain,
        } => volume::map_path(&backing, &path, &key, to_plain),
        Command::Speed => volume::speed(),
        Command::Engine { command } => engine_cli::run(command),
        Command::Demo { workdir, points } => commands::demo::demo(workdir, points),
    }
}
