//! The mount(8) helper, for `mount -t fuse.chronicle`, /etc/fstab and the
//! mount units systemd makes from it.
//!
//! mount(8) runs `/sbin/mount.fuse.chronicle` (`mount.chronicle` for the
//! type `chronicle`) as `HELPER SOURCE TARGET [-s] [-f] [-n] [-v] [-o
//! OPTIONS] [-t TYPE]`, where OPTIONS are those it does not act on itself
//! (it drops `defaults`, `x-*` and `comment=`; it passes `ro`, `noexec`,
//! `_netdev`, `nofail` and the file system's own). Linked to this binary
//! under either name, chronicle turns the call into the `chronicle mount`
//! it stands for, so every check, message and exit code is the command's
//! own, and the mount returns once it serves, as mount(8) expects of a
//! helper.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The names mount(8) looks for, `mount.<type>`, for the types
/// `fuse.chronicle` (what /proc/mounts shows) and `chronicle`.
const HELPER_NAMES: [&str; 2] = ["mount.fuse.chronicle", "mount.chronicle"];

/// Whether the program was started under a helper's name.
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| HELPER_NAMES.contains(&name))
}

/// What mount(8) asked for.
#[derive(Debug, PartialEq)]
pub struct HelperCall {
    /// The `chronicle mount` command line (program name first) that stands
    /// for the call.
    pub args: Vec<OsString>,
    /// `-f`: check the options and mount nothing (mount(8) then only
    /// records the mount).
    pub fake: bool,
    /// `-v`: say what is run.
    pub verbose: bool,
    /// Options skipped because of `-s` (sloppy): unknown to chronicle.
    pub skipped: Vec<String>,
}

/// What a mount option means to chronicle.
enum Meaning {
    /// Acted on by mount(8) or systemd, or already how every chronicle
    /// mount behaves.
    Ignored,
    ReadOnly(bool),
    NoExec(bool),
    /// A `chronicle mount` switch.
    Switch(&'static str),
    /// A `chronicle mount` option that takes a value.
    Valued(&'static str),
    /// Asks for what chronicle does not do; the reason.
    Refused(&'static str),
}

/// Options are spelled as `chronicle mount`'s long options are, with `_`
/// or `-` between words (`key_file=/etc/chronicle/key`, `allow_other`).
fn meaning(name: &str) -> Option<Meaning> {
    use Meaning::*;
    Some(match name {
        "ro" => ReadOnly(true),
        "rw" => ReadOnly(false),
        "noexec" => NoExec(true),
        "exec" => NoExec(false),
        "allow_other" => Switch("--allow-other"),
        "io_uring" => Switch("--io-uring"),
        "no_writeback_cache" => Switch("--no-writeback-cache"),
        "passphrase" => Switch("--passphrase"),
        "key_file" => Valued("--key-file"),
        "key_env" => Valued("--key-env"),
        "key_command" => Valued("--key-command"),
        "threads" => Valued("--threads"),
        "max_inodes" => Valued("--max-inodes"),
        "poll_us" => Valued("--poll-us"),
        "log_file" => Valued("--log-file"),
        // Every chronicle mount is nosuid and nodev; atime is the kernel's
        // (FUSE files keep none); the rest are mount(8)'s and systemd's.
        "nosuid" | "nodev" | "async" | "atime" | "noatime" | "relatime" | "norelatime"
        | "strictatime" | "nostrictatime" | "lazytime" | "nolazytime" | "diratime"
        | "nodiratime" | "silent" | "loud" | "defaults" | "auto" | "noauto" | "nofail"
        | "_netdev" | "user" | "nouser" | "users" | "owner" | "group" => Ignored,
        "suid" | "dev" => Refused("a chronicle mount is always nosuid and nodev"),
        "sync" | "dirsync" => Refused(
            "writes are made durable by fsync, as on a local file system; a database syncs what it needs",
        ),
        "foreground" => Refused(
            "mount(8) waits for its helper to return; a service that keeps the mount in the \
             foreground runs `chronicle mount --foreground` itself",
        ),
        _ => return None,
    })
}

/// Turns a helper's command line (program name first) into the `chronicle
/// mount` command line it stands for; an error names the offending
/// argument or option.
pub fn translate(argv: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let (mut options, mut sloppy, mut fake, mut verbose) = (Vec::new(), false, false, false);
    let mut rest = argv.iter().skip(1);
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str().filter(|t| t.starts_with('-') && t.len() > 1) else {
            positional.push(arg.clone());
            continue;
        };
        match text {
            "-o" => {
                let value = rest.next().ok_or("-o needs a list of options")?;
                let value = value.to_str().ok_or("mount options must be UTF-8")?;
                options.extend(split_options(value)?);
            }
            "-t" => {
                let kind = rest.next().ok_or("-t needs a file system type")?;
                if !matches!(kind.to_str(), Some("fuse.chronicle" | "chronicle")) {
                    return Err(format!(
                        "this helper mounts the types fuse.chronicle and chronicle, not {}",
                        kind.to_string_lossy()
                    ));
                }
            }
            _ if text.starts_with("-o") => options.extend(split_options(&text[2..])?),
            _ => {
                for flag in text[1..].chars() {
                    match flag {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'v' => verbose = true,
                        // mount(8) keeps no mtab of its own to spare.
                        'n' => {}
                        _ => return Err(format!("unknown helper flag -{flag}")),
                    }
                }
            }
        }
    }
    let [source, target] = <[OsString; 2]>::try_from(positional).map_err(|given| {
        format!(
            "a mount helper takes a backing directory and a mount point, {} given",
            given.len()
        )
    })?;

    let mut args: Vec<OsString> = vec!["chronicle".into(), "mount".into(), source, target];
    let (mut read_only, mut no_exec, mut skipped) = (false, false, Vec::new());
    for option in options {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option.as_str(), None),
        };
        let name = name.replace('-', "_");
        let known = meaning(&name).or_else(|| {
            // Comments for programs other than the kernel's and ours.
            (name.starts_with("x_") || name.starts_with("X_") || name == "comment")
                .then_some(Meaning::Ignored)
        });
        match (known, value) {
            (None, _) if sloppy => skipped.push(option.clone()),
            (None, _) => {
                return Err(format!(
                    "unknown mount option {option} (chronicle takes key_file=, key_env=, \
                     key_command=, passphrase, ro, noexec, allow_other, threads=, max_inodes=, \
                     poll_us=, io_uring, no_writeback_cache, log_file=)"
                ))
            }
            (Some(Meaning::Refused(why)), _) => {
                return Err(format!("mount option {name} is not supported: {why}"))
            }
            (Some(Meaning::Valued(flag)), Some(value)) => {
                // One argument, so that a value starting with '-' stays a value.
                args.push(format!("{flag}={value}").into());
            }
            (Some(Meaning::Valued(_)), None) => {
                return Err(format!("mount option {name} needs a value ({name}=...)"))
            }
            (Some(Meaning::Ignored), _) => {}
            (Some(_), Some(_)) => return Err(format!("mount option {name} takes no value")),
            (Some(Meaning::ReadOnly(on)), None) => read_only = on,
            (Some(Meaning::NoExec(on)), None) => no_exec = on,
            (Some(Meaning::Switch(flag)), None) => args.push(flag.into()),
        }
    }
    if read_only {
        args.push("--read-only".into());
    }
    if no_exec {
        args.push("--noexec".into());
    }
    Ok(HelperCall {
        args,
        fake,
        verbose,
        skipped,
    })
}

/// Splits a mount(8) option list at the commas outside double quotes, and
/// takes the quotes off values (`key_command="vault read -field=key a,b"`).
fn split_options(list: &str) -> Result<Vec<String>, String> {
    let (mut options, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in list.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced double quote in mount options {list}"));
    }
    options.push(current);
    Ok(options.into_iter().filter(|o| !o.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate(&argv)
    }

    fn mount_args(args: &[&str]) -> Vec<String> {
        call(args)
            .expect("a valid call")
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn helper_names_are_recognised_by_their_file_name() {
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.fuse.chronicle")));
        assert!(invoked_as_helper(OsStr::new("mount.chronicle")));
        assert!(!invoked_as_helper(OsStr::new("/usr/bin/chronicle")));
        assert!(!invoked_as_helper(OsStr::new(
            "/sbin/mount.fuse.chronicle.old"
        )));
    }

    #[test]
    fn an_fstab_line_becomes_the_mount_command() {
        // What mount(8) passed for `ro,noexec,key_file=/etc/k,_netdev,nofail,
        // x-systemd.requires=a,allow_other` (it drops the x- option itself).
        assert_eq!(
            mount_args(&[
                "/sbin/mount.fuse.chronicle",
                "/srv/metrics.enc",
                "/srv/metrics",
                "-n",
                "-o",
                "ro,noexec,key_file=/etc/k,_netdev,nofail,allow_other",
            ]),
            [
                "chronicle",
                "mount",
                "/srv/metrics.enc",
                "/srv/metrics",
                "--key-file=/etc/k",
                "--allow-other",
                "--read-only",
                "--noexec"
            ]
        );
    }

    #[test]
    fn the_last_of_opposite_options_wins_as_in_mount() {
        let args = mount_args(&[
            "mount.chronicle",
            "b",
            "m",
            "-o",
            "ro,noexec,rw",
            "-o",
            "exec",
        ]);
        assert_eq!(args, ["chronicle", "mount", "b", "m"]);
    }

    #[test]
    fn quoted_values_keep_their_commas_and_lose_their_quotes() {
        let args = mount_args(&[
            "mount.chronicle",
            "b",
            "m",
            "-o",
            r#"key-command="vault kv get -field=key a,b",threads=8"#,
        ]);
        assert_eq!(
            &args[4..],
            ["--key-command=vault kv get -field=key a,b", "--threads=8"]
        );
        let err =
            call(&["mount.chronicle", "b", "m", "-o", r#"key_command="a,b"#]).expect_err("refused");
        assert!(err.contains("unbalanced double quote"), "{err}");
    }

    #[test]
    fn unknown_and_refused_options_say_why() {
        let err = call(&["mount.chronicle", "b", "m", "-o", "keyfile=/k"]).expect_err("refused");
        assert!(
            err.starts_with("unknown mount option keyfile=/k (chronicle takes key_file="),
            "{err}"
        );
        let err = call(&["mount.chronicle", "b", "m", "-o", "suid"]).expect_err("refused");
        assert!(err.contains("always nosuid"), "{err}");
        let err = call(&["mount.chronicle", "b", "m", "-o", "sync"]).expect_err("refused");
        assert!(err.contains("fsync"), "{err}");
        let err = call(&["mount.chronicle", "b", "m", "-o", "foreground"]).expect_err("refused");
        assert!(err.contains("--foreground"), "{err}");
        let err = call(&["mount.chronicle", "b", "m", "-o", "key_file"]).expect_err("refused");
        assert_eq!(err, "mount option key_file needs a value (key_file=...)");
        let err = call(&["mount.chronicle", "b", "m", "-o", "allow_other=1"]).expect_err("refused");
        assert_eq!(err, "mount option allow_other takes no value");
        let err = call(&["mount.chronicle", "b", "m", "-t", "ext4"]).expect_err("refused");
        assert!(err.contains("not ext4"), "{err}");
        let err = call(&["mount.chronicle", "b", "m", "-x"]).expect_err("refused");
        assert_eq!(err, "unknown helper flag -x");
        let err = call(&["mount.chronicle", "b"]).expect_err("refused");
        assert!(err.contains("1 given"), "{err}");
    }

    #[test]
    fn sloppy_skips_unknown_options_and_fake_mounts_nothing() {
        let c =
            call(&["mount.chronicle", "b", "m", "-sfv", "-o", "keyfile=/k,ro"]).expect("accepted");
        assert_eq!(c.skipped, ["keyfile=/k"]);
        assert!(c.fake && c.verbose);
        assert_eq!(c.args.last().expect("an argument"), "--read-only");
        // Refusals are not unknowns: sloppy does not let them through.
        assert!(call(&["mount.chronicle", "b", "m", "-s", "-o", "suid"]).is_err());
    }

    #[test]
    fn every_option_it_passes_on_is_one_that_chronicle_mount_takes() {
        use clap::Parser;
        let rest = "ro,noexec,allow_other,io_uring,no_writeback_cache,threads=4,max_inodes=100,\
                    poll_us=200,log_file=/l";
        // The key options exclude each other, as on the command line.
        for key in ["key_file=k", "key_env=E", "key_command=c", "passphrase"] {
            let args = mount_args(&["mount.chronicle", "b", "m", "-o", &format!("{key},{rest}")]);
            assert_eq!(args.len(), 4 + 10, "{args:?}");
            crate::cli::Cli::try_parse_from(&args)
                .unwrap_or_else(|e| panic!("chronicle mount refused {args:?}: {e}"));
        }
    }
}
