//! The command line. Names and options follow CONTRACT.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine_cli::EngineCommand;

/// The key options, in every key-taking command's help (a macro, so that
/// `mount` can add to it with `concat!`).
macro_rules! key_help {
    () => {
        "\
Key sources (the same on every command that needs a key):
  (none)               CHRONICLE_ENCRYPTION_KEY holds 64 hex characters
  --key-env NAME       another environment variable holds the hex key
  --key-file PATH      32 raw bytes or 64 hex characters; - reads standard input
  --key-command CMD    run CMD with sh -c; its output is the key (Vault, KMS, ...)
  --passphrase         prompt (or CHRONICLE_PASSPHRASE), stretched with Argon2id

Generate a key:  openssl rand -hex 32
Keep the key apart from backups of BACKING: without it the data is unreadable.

Exit codes: 0 success, 1 failure, 2 bad usage, 12 encryption key mismatch,
26 a block or header failed authentication."
    };
}

const KEY_HELP: &str = key_help!();

const MOUNT_HELP: &str = concat!(
    key_help!(),
    "\n\n\
From /etc/fstab and systemd: link this binary as /sbin/mount.fuse.chronicle (and\n\
/sbin/umount.fuse.chronicle) and write a line such as\n  \
/srv/metrics.enc /srv/metrics fuse.chronicle key_file=/etc/chronicle/metrics.key 0 0\n\
The options are this command's, without dashes (key_file=, ro, noexec, allow_other,\n\
threads=, ...); README.md, \"At boot\", has the rest."
);

const STATS_HELP: &str = "\
The mount counts every request the kernel sends it (LOOKUP, READ, WRITE, FSYNC, ...)\n\
and the time it took from taking each to its reply; the time a program waits also\n\
holds the kernel's hand-over both ways, which is not in it. Run it before and after\n\
a job to see what the job asked of the volume:\n  \
chronicle stats /srv/metrics --raw > before; run-the-job; chronicle stats /srv/metrics --raw\n\
The mount answers root and the user who mounted it; the kernel lets root into a\n\
user's mount only if it was mounted with --allow-other. \"Forged or damaged data met\"\n\
counts the requests that met a block, header, name, symlink target or extended\n\
attribute of BACKING that failed authentication: a read of it got EIO, a listing\n\
left the name out, and the mount's log names the file.";

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Encryption at rest for a time-series database: an encrypted FUSE volume and the engine that runs on it",
    long_about = "Chronicle mounts an encrypted volume at a database's data directory. Programs \
        read and write plaintext; only AES-256-GCM ciphertext, authenticated per 4 KiB block, \
        reaches the backing directory.\n\nTypical use:\n  export CHRONICLE_ENCRYPTION_KEY=$(openssl rand -hex 32)\n  \
        chronicle init /srv/metrics.enc\n  chronicle mount /srv/metrics.enc /srv/metrics\n  \
        ... run the database on /srv/metrics ...\n  chronicle umount /srv/metrics",
    after_help = KEY_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the key comes from. At most one option; none means
/// CHRONICLE_ENCRYPTION_KEY.
#[derive(Args, Debug, Clone, Default)]
#[group(id = "key", multiple = false)]
pub struct KeyArgs {
    /// Read the hex key from environment variable NAME
    #[arg(long, value_name = "NAME")]
    pub key_env: Option<String>,
    /// Read the key from PATH (32 raw bytes or 64 hex characters; - for standard input)
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Run CMD with `sh -c`; its standard output is the key
    #[arg(long, value_name = "CMD")]
    pub key_command: Option<String>,
    /// Use a passphrase (prompted, or from CHRONICLE_PASSPHRASE), stretched with Argon2id
    #[arg(long)]
    pub passphrase: bool,
}

/// The new key of `rotate-key`, in the same forms with a `--new-` prefix.
#[derive(Args, Debug, Clone, Default)]
#[group(id = "new_key", multiple = false)]
pub struct NewKeyArgs {
    /// Read the new hex key from environment variable NAME
    #[arg(long, value_name = "NAME")]
    pub new_key_env: Option<String>,
    /// Read the new key from PATH (- for standard input)
    #[arg(long, value_name = "PATH")]
    pub new_key_file: Option<PathBuf>,
    /// Run CMD with `sh -c`; its standard output is the new key
    #[arg(long, value_name = "CMD")]
    pub new_key_command: Option<String>,
    /// Use a new passphrase (prompted, or from CHRONICLE_NEW_PASSPHRASE)
    #[arg(long)]
    pub new_passphrase: bool,
}

impl NewKeyArgs {
    pub fn as_key_args(&self) -> KeyArgs {
        KeyArgs {
            key_env: self.new_key_env.clone(),
            key_file: self.new_key_file.clone(),
            key_command: self.new_key_command.clone(),
            passphrase: self.new_passphrase,
        }
    }

    pub fn is_given(&self) -> bool {
        self.new_key_env.is_some()
            || self.new_key_file.is_some()
            || self.new_key_command.is_some()
            || self.new_passphrase
    }
}

/// Argon2id cost for a new passphrase.
#[derive(Args, Debug, Clone)]
pub struct KdfArgs {
    /// Argon2id memory in MiB (with --passphrase)
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub kdf_memory_mib: u32,
    /// Argon2id passes (with --passphrase)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub kdf_iterations: u32,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create an encrypted volume in BACKING (created if missing)
    #[command(after_help = KEY_HELP)]
    Init {
        /// The directory for the volume's encrypted files: new, or empty
        backing: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Store file names and symlink targets as given (they are encrypted
        /// by default); anyone who can list BACKING then reads the tree
        #[arg(long)]
        plaintext_names: bool,
        /// Store user.* extended attributes (sealed). Off by default: a
        /// volume without them answers every extended-attribute request
        /// "not supported" and the kernel stops asking, which makes `ls -l`
        /// and file managers much faster; databases do not use them
        #[arg(long)]
        xattrs: bool,
    },
    /// Mount the volume in BACKING at MOUNTPOINT; returns once it is serving
    #[command(after_help = MOUNT_HELP)]
    Mount {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        /// The directory where programs see the plaintext (the database's
        /// data directory)
        mountpoint: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Stay in the foreground (logs to standard error; Ctrl-C unmounts)
        #[arg(long)]
        foreground: bool,
        /// Mount read-only
        #[arg(long)]
        read_only: bool,
        /// Refuse to run programs from the mount (a data directory needs none)
        #[arg(long, alias = "no-exec")]
        noexec: bool,
        /// Let other users use the mount (the kernel checks permissions)
        #[arg(long)]
        allow_other: bool,
        /// Send every write straight through instead of letting the kernel batch them
        #[arg(long)]
        no_writeback_cache: bool,
        /// Threads serving requests (default: twice the cores, 4 to 16)
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Serve requests over FUSE over io_uring when the kernel offers it (root:
        /// echo Y > /sys/module/fuse/parameters/enable_uring): quick requests are then
        /// served on the CPU of the program that made them, which makes metadata-heavy
        /// work faster; random reads from disk are slower (experimental)
        #[arg(long, env = "CHRONICLE_IO_URING", value_parser = clap::builder::BoolishValueParser::new())]
        io_uring: bool,
        /// Files and directories the mount remembers before it asks the kernel to
        /// forget the least recently used (bounds its memory, about 300 bytes each;
        /// default 65536, at least 64)
        #[arg(long, value_name = "N")]
        max_inodes: Option<usize>,
        /// Poll /dev/fuse for up to this many microseconds once it is idle, one
        /// thread per CPU, instead of sleeping at once (200 measured best). On machines
        /// whose idle CPUs halt at once, as many VMs do, this spares each request the
        /// wake-up of a halted CPU: metadata-heavy work (rm -rf, untar) is up to a third
        /// faster. The window closes while requests come further apart, so an idle mount
        /// spends nothing, but a busy one used 1.5-1.8 times the CPU. Polling pauses
        /// while syncs take 50 µs or more (they reach a disk), which polling slowed.
        /// Default 0: off. Not used while serving over io_uring
        #[arg(long, value_name = "MICROSECONDS", env = "CHRONICLE_POLL_US",
              value_parser = clap::value_parser!(u64).range(0..=10_000))]
        poll_us: Option<u64>,
        /// Append the log of a background mount to PATH (default: the system log,
        /// as "chronicle[PID]")
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Unmount a chronicle volume
    Umount {
        /// Where the volume is mounted
        mountpoint: PathBuf,
        /// Detach it now even while programs use it; it unmounts when the
        /// last of them lets go (as umount -l), so this does not wait for the
        /// volume's files to reach the disk
        #[arg(long)]
        lazy: bool,
    },
    /// Show what a running mount reports of itself: the requests it served by
    /// kind, the time it took over them, and the forged data they met
    #[command(after_help = STATS_HELP)]
    Stats {
        /// Where the volume is mounted
        mountpoint: PathBuf,
        /// Print the figures a line each in the report's own format (for scripts:
        /// `op NAME COUNT NANOSECONDS`, `authentication_failures N`, `uptime_ns N`)
        #[arg(long)]
        raw: bool,
    },
    /// Show a volume's format and key source (no key needed)
    Info {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Authenticate every block of every file in BACKING
    #[command(after_help = KEY_HELP)]
    Fsck {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Cut torn tails (a crash mid-write) back to the last whole block
        #[arg(long)]
        repair: bool,
    },
    /// Show, without the key, that BACKING's files are ciphertext
    Inspect {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        /// Search every raw file for TEXT (repeatable); any match is reported
        #[arg(long, value_name = "TEXT")]
        grep: Vec<String>,
    },
    /// Change the key: re-wrap the master key, or re-encrypt everything
    #[command(name = "rotate-key", after_help = KEY_HELP)]
    RotateKey {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        new_key: NewKeyArgs,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Also pick a new master key and re-encrypt every file with it
        #[arg(long)]
        reencrypt: bool,
    },
    /// Encrypt an existing unencrypted directory into a new volume
    #[command(after_help = KEY_HELP)]
    Encrypt {
        /// The unencrypted directory to copy from (left as it is)
        plain_dir: PathBuf,
        /// The new volume's directory: new, or empty
        backing: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Store file names and symlink targets as given (encrypted by default)
        #[arg(long)]
        plaintext_names: bool,
        /// Store user.* extended attributes (needed when PLAIN_DIR's files
        /// carry any; without it such a file is refused)
        #[arg(long)]
        xattrs: bool,
    },
    /// Map a path inside the mount to its path in BACKING (encrypted names),
    /// or back with --to-plain; needs the key
    #[command(after_help = KEY_HELP)]
    Path {
        /// The directory that holds the volume's encrypted files
        backing: PathBuf,
        /// A path relative to the mount's root (or, with --to-plain,
        /// relative to BACKING)
        // An encrypted name may begin with '-' (base64url), as may any
        // plaintext name: it is still the path.
        #[arg(allow_hyphen_values = true)]
        path: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Map a backing path to the plaintext path it stands for
        #[arg(long)]
        to_plain: bool,
    },
    /// Measure AES-256-GCM throughput of each implementation on this machine
    Speed,
    /// The bundled time-series engine
    Engine {
        #[command(subcommand)]
        command: EngineCommand,
    },
    /// The main job: mount a volume, run the engine on it, show the raw files are ciphertext
    Demo {
        /// Working directory (default: a new temporary directory)
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Points to write
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        points: u64,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_path_may_begin_with_a_hyphen() {
        let cli = Cli::try_parse_from(["chronicle", "path", "B", "-vDQ/x", "--to-plain"])
            .expect("parses");
        match cli.command {
            Command::Path { path, to_plain, .. } => {
                assert_eq!(path, PathBuf::from("-vDQ/x"));
                assert!(to_plain);
            }
            _ => panic!("not the path command"),
        }
    }

    // Protects: every argument and option of every command says in --help
    // what it is (a bare `--data-dir <DIR>` or `<BACKING>` teaches nothing).
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, seen: &mut Vec<(String, bool)>) {
            for arg in command.get_arguments() {
                let helped = arg.get_help().is_some() || arg.get_long_help().is_some();
                seen.push((format!("{path}: {}", arg.get_id()), helped));
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut seen = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "chronicle",
            &mut seen,
        );
        // The walk reaches nested and flattened arguments.
        for known in [
            "chronicle mount: backing",
            "chronicle engine serve: data_dir",
        ] {
            assert!(
                seen.iter().any(|(name, _)| name == known),
                "{known} not seen"
            );
        }
        let bare: Vec<&String> = seen.iter().filter(|(_, h)| !h).map(|(n, _)| n).collect();
        assert!(bare.is_empty(), "arguments without help: {bare:?}");
    }

    // Protects: every duration option is parsed as the command line is,
    // so a bad one is refused before anything opens, with the same words.
    #[test]
    fn every_duration_is_refused_when_parsed() {
        for args in [
            &["engine", "compact", "--data-dir", "d", "--retention", "3x"][..],
            &["engine", "serve", "--data-dir", "d", "--retention", "3x"],
            &[
                "engine",
                "serve",
                "--data-dir",
                "d",
                "--compact-every",
                "3x",
            ],
            &["engine", "serve", "--data-dir", "d", "--max-future", "3x"],
            &["engine", "write", "--data-dir", "d", "--max-future", "3x"],
        ] {
            let refused =
                Cli::try_parse_from(std::iter::once("chronicle").chain(args.iter().copied()))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
            assert!(
                refused.contains(r#"duration "3x" is not like 10s"#) && !refused.contains("query"),
                "{args:?}: {refused}"
            );
        }
    }
}
