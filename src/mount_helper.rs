//! The mount(8) and umount(8) helpers, for `mount -t fuse.chronicle`,
//! /etc/fstab and the mount units systemd makes from it.
//!
//! mount(8) runs `/sbin/mount.fuse.chronicle` (`mount.chronicle` for the
//! type `chronicle`) as `HELPER SOURCE TARGET [-s] [-f] [-n] [-v] [-o
//! OPTIONS] [-t TYPE]`, where OPTIONS are those it does not act on itself
//! (it drops `defaults`, `x-*` and `comment=`, settles `ro`/`rw`,
//! `suid`/`dev`/`exec` into flags, and passes `ro`, `noexec`, `_netdev`,
//! `nofail` and the file system's own). umount(8) runs
//! `/sbin/umount.fuse.chronicle TARGET [-n] [-l] [-f] [-r] [-v]` for a
//! mount of that type. Linked to this binary under those names, chronicle
//! turns each call into the `chronicle mount` or `chronicle umount` it
//! stands for, so every check, message and exit code is the command's own:
//! the mount returns once it serves, and the unmount once the volume's
//! files are on disk.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::Parser;

use crate::cli::Cli;

/// Which helper the program was started as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    Mount,
    Umount,
}

impl Helper {
    /// The helper whose name, as mount(8) and umount(8) look for it
    /// (`mount.<type>`, `umount.<type>`, for the types `fuse.chronicle` and
    /// `chronicle`), is the file name of `argv0`.
    pub fn named(argv0: &OsStr) -> Option<Helper> {
        let name = Path::new(argv0).file_name()?.to_str()?;
        let kind = name
            .strip_suffix(".fuse.chronicle")
            .or_else(|| name.strip_suffix(".chronicle"))?;
        match kind {
            "mount" => Some(Helper::Mount),
            "umount" => Some(Helper::Umount),
            _ => None,
        }
    }
}

/// What mount(8) or umount(8) asked for.
#[derive(Debug, PartialEq)]
struct HelperCall {
    /// The `chronicle mount` or `chronicle umount` command line (program
    /// name first) that stands for the call.
    args: Vec<OsString>,
    /// `-f` to mount(8): check the options and mount nothing (mount(8)
    /// then only records the mount).
    fake: bool,
    /// `-v`: say what is run.
    verbose: bool,
    /// Options skipped because of `-s` (sloppy): unknown to chronicle.
    skipped: Vec<String>,
}

/// mount(8)'s and umount(8)'s `-N`: the helper would have to enter the
/// namespace; mounting inside it (`nsenter -m`) does the same.
const NO_NAMESPACES: &str =
    "mounting in another mount namespace (-N) is not supported; run mount(8) inside it (nsenter)";

/// What a mount option means to chronicle.
#[derive(Clone, Copy)]
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
    /// Where the key comes from: its option, and whether it takes a value.
    KeySource(&'static str, bool),
    /// Asks for what chronicle does not do; the reason.
    Refused(&'static str),
}

use Meaning::*;

const ALWAYS_NOSUID: &str = "a chronicle mount is always nosuid and nodev";
const FSYNC_MAKES_DURABLE: &str = "writes are made durable by fsync, as on a local file system";

/// Options are spelled as `chronicle mount`'s long options are, with `_`
/// or `-` between words (`key_file=/etc/chronicle/key`, `allow_other`).
const OPTIONS: &[(&str, Meaning)] = &[
    ("key_file", KeySource("--key-file", true)),
    ("key_env", KeySource("--key-env", true)),
    ("key_command", KeySource("--key-command", true)),
    ("passphrase", KeySource("--passphrase", false)),
    ("ro", ReadOnly(true)),
    ("rw", ReadOnly(false)),
    ("noexec", NoExec(true)),
    ("exec", NoExec(false)),
    ("allow_other", Switch("--allow-other")),
    ("threads", Valued("--threads")),
    ("max_inodes", Valued("--max-inodes")),
    ("poll_us", Valued("--poll-us")),
    ("io_uring", Switch("--io-uring")),
    ("no_writeback_cache", Switch("--no-writeback-cache")),
    ("log_file", Valued("--log-file")),
    // Every chronicle mount is nosuid and nodev; atime is the kernel's
    // (FUSE files keep none); the rest are mount(8)'s and systemd's
    // (`user=NAME` is how mount(8) names a user mount's owner).
    ("nosuid", Ignored),
    ("nodev", Ignored),
    ("async", Ignored),
    ("atime", Ignored),
    ("noatime", Ignored),
    ("relatime", Ignored),
    ("norelatime", Ignored),
    ("strictatime", Ignored),
    ("nostrictatime", Ignored),
    ("lazytime", Ignored),
    ("nolazytime", Ignored),
    ("diratime", Ignored),
    ("nodiratime", Ignored),
    ("silent", Ignored),
    ("loud", Ignored),
    ("defaults", Ignored),
    ("auto", Ignored),
    ("noauto", Ignored),
    ("nofail", Ignored),
    ("_netdev", Ignored),
    ("user", Ignored),
    ("nouser", Ignored),
    ("users", Ignored),
    ("owner", Ignored),
    ("group", Ignored),
    ("comment", Ignored),
    ("suid", Refused(ALWAYS_NOSUID)),
    ("dev", Refused(ALWAYS_NOSUID)),
    ("sync", Refused(FSYNC_MAKES_DURABLE)),
    ("dirsync", Refused(FSYNC_MAKES_DURABLE)),
    (
        "foreground",
        Refused(
            "mount(8) waits for its helper to return; a service that keeps the mount in the \
             foreground runs `chronicle mount --foreground` itself",
        ),
    ),
];

fn meaning(name: &str) -> Option<Meaning> {
    let known = OPTIONS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m);
    // `x-*`: notes for programs other than the kernel and chronicle.
    known.or_else(|| (name.starts_with("x_") || name.starts_with("X_")).then_some(Ignored))
}

/// The options chronicle acts on, for the message that refuses another.
fn options_taken() -> String {
    let names: Vec<String> = OPTIONS
        .iter()
        .filter_map(|(name, meaning)| match meaning {
            Valued(_) | KeySource(_, true) => Some(format!("{name}=")),
            Switch(_) | KeySource(_, false) | ReadOnly(_) | NoExec(_) => Some(name.to_string()),
            Ignored | Refused(_) => None,
        })
        .collect();
    names.join(", ")
}

/// The options of a call, the last of each kind winning, as mount(8)
/// lets a command line's `-o` (which it appends) override an fstab line's.
#[derive(Default)]
struct Chosen {
    key: Option<String>,
    read_only: bool,
    no_exec: bool,
    switches: Vec<&'static str>,
    values: Vec<(&'static str, String)>,
}

impl Chosen {
    fn take(&mut self, name: &str, value: Option<&str>, meaning: Meaning) -> Result<(), String> {
        match (meaning, value) {
            (Refused(why), _) => {
                return Err(format!("mount option {name} is not supported: {why}"))
            }
            (Ignored, _) => {}
            (Valued(_) | KeySource(_, true), None) => {
                return Err(format!("mount option {name} needs a value ({name}=...)"))
            }
            // One argument each, so that a value starting with '-' stays a value.
            (KeySource(flag, true), Some(value)) => self.key = Some(format!("{flag}={value}")),
            (Valued(flag), Some(value)) => {
                self.values.retain(|(f, _)| *f != flag);
                self.values.push((flag, value.to_string()));
            }
            (_, Some(_)) => return Err(format!("mount option {name} takes no value")),
            (KeySource(flag, false), None) => self.key = Some(flag.to_string()),
            (ReadOnly(on), None) => self.read_only = on,
            (NoExec(on), None) => self.no_exec = on,
            (Switch(flag), None) => {
                if !self.switches.contains(&flag) {
                    self.switches.push(flag);
                }
            }
        }
        Ok(())
    }

    fn into_args(self) -> impl Iterator<Item = OsString> {
        let values = self.values.into_iter().map(|(f, v)| format!("{f}={v}"));
        let flags = [
            self.read_only.then(|| "--read-only".to_string()),
            self.no_exec.then(|| "--noexec".to_string()),
        ];
        self.key
            .into_iter()
            .chain(self.switches.into_iter().map(String::from))
            .chain(values)
            .chain(flags.into_iter().flatten())
            .map(OsString::from)
    }
}

/// Turns a mount helper's command line (program name first) into the
/// `chronicle mount` command line it stands for; an error names the
/// offending argument or option.
fn translate_mount(argv: &[OsString]) -> Result<HelperCall, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut positional = Vec::new();
    let (mut options, mut sloppy, mut fake, mut verbose) = (Vec::new(), false, false, false);
    let mut rest = argv.iter().skip(1);
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            positional.push(arg.clone());
            continue;
        }
        let text = arg.to_str().ok_or("helper flags must be UTF-8")?;
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
                        'N' => return Err(NO_NAMESPACES.into()),
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

    let (mut chosen, mut skipped) = (Chosen::default(), Vec::new());
    for option in options {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option.as_str(), None),
        };
        let name = name.replace('-', "_");
        match meaning(&name) {
            Some(meaning) => chosen.take(&name, value, meaning)?,
            None if sloppy => skipped.push(option.clone()),
            None => {
                return Err(format!(
                    "unknown mount option {option} (chronicle takes {})",
                    options_taken()
                ))
            }
        }
    }
    // The directories after `--`, so that neither can read as an option.
    let args = ["chronicle", "mount"]
        .into_iter()
        .map(OsString::from)
        .chain(chosen.into_args())
        .chain([OsString::from("--"), source, target])
        .collect();
    Ok(HelperCall {
        args,
        fake,
        verbose,
        skipped,
    })
}

/// Turns an umount helper's command line into the `chronicle umount` it
/// stands for. `-f` is refused unless the mount is dead (`is_dead`): on a
/// live FUSE mount it aborts the connection, and writes the kernel has not
/// yet handed over are lost (`umount -i -f` still does it, without the
/// helper).
fn translate_umount(
    argv: &[OsString],
    is_dead: impl Fn(&OsStr) -> bool,
) -> Result<HelperCall, String> {
    let (mut target, mut lazy, mut force, mut verbose) = (None, false, false, false);
    let mut rest = argv.iter().skip(1);
    while let Some(arg) = rest.next() {
        let text = arg.to_str().filter(|t| t.starts_with('-') && t.len() > 1);
        let Some(text) = text else {
            if target.replace(arg.clone()).is_some() {
                return Err("an unmount helper takes one mount point".into());
            }
            continue;
        };
        if text == "-t" {
            // The type mount(8) found the helper by; nothing to check.
            rest.next();
            continue;
        }
        for flag in text[1..].chars() {
            match flag {
                'l' => lazy = true,
                'v' => verbose = true,
                // No mtab to spare; nothing to remount read-only: an
                // unmount that fails leaves the volume as it was.
                'n' | 'r' | 'c' => {}
                'f' => force = true,
                'N' => return Err(NO_NAMESPACES.into()),
                _ => return Err(format!("unknown helper flag -{flag}")),
            }
        }
    }
    let target = target.ok_or("an unmount helper takes one mount point, none given")?;
    // A dead mount has nothing left to lose, and unmounts as it is.
    if force && !is_dead(&target) {
        return Err(
            "umount -f would abort the mount and lose writes not yet handed to it; \
                    unmount without -f (or -l while programs use it)"
                .into(),
        );
    }
    let lazy = lazy.then(|| OsString::from("--lazy"));
    let args = ["chronicle", "umount"]
        .into_iter()
        .map(OsString::from)
        .chain(lazy)
        .chain([OsString::from("--"), target])
        .collect();
    Ok(HelperCall {
        args,
        fake: false,
        verbose,
        skipped: Vec::new(),
    })
}

/// The command that the helper's call stands for, checked as its command
/// line would be; `None` for a fake mount (`-f` to mount(8)), which mounts
/// nothing. A call that cannot stand for one exits as bad usage, with the
/// reason.
pub fn cli(helper: Helper, argv: &[OsString]) -> Option<Cli> {
    let translated = match helper {
        Helper::Mount => translate_mount(argv),
        Helper::Umount => translate_umount(argv, is_dead),
    };
    let call = translated.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::exit(2);
    });
    for option in &call.skipped {
        eprintln!("note: skipping mount option {option}, unknown to chronicle (-s)");
    }
    if call.verbose {
        let shown: Vec<_> = call.args.iter().map(|a| a.to_string_lossy()).collect();
        eprintln!("{}", shown.join(" "));
    }
    let cli = Cli::try_parse_from(&call.args).unwrap_or_else(|e| e.exit());
    (!call.fake).then_some(cli)
}

/// Whether the mount at `point` is one whose process died.
fn is_dead(point: &OsStr) -> bool {
    crate::commands::mount::dead_mount(Path::new(point)).is_some()
}

/// Splits a mount(8) option list at the commas outside double quotes, as
/// mount(8) does, and takes off the quotes that wrap a whole value
/// (`key_command="vault kv get -field=key a,b"`); quotes inside a value
/// are the value's.
fn split_options(list: &str) -> Result<Vec<String>, String> {
    let (mut options, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in list.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        match c {
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced double quote in mount options {list}"));
    }
    options.push(current);
    let unwrapped = |option: String| match option.split_once('=') {
        Some((name, value))
            if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') =>
        {
            format!("{name}={}", &value[1..value.len() - 1])
        }
        _ => option,
    };
    Ok(options
        .into_iter()
        .filter(|o| !o.is_empty())
        .map(unwrapped)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate_mount(&argv)
    }

    fn umount_call(args: &[&str]) -> Result<Vec<String>, String> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let c = translate_umount(&argv, |point| point == "/dead")?;
        Ok(c.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    /// The options a call stands for, without `chronicle mount` and the
    /// directories.
    fn options_of(args: &[&str]) -> Vec<String> {
        let args: Vec<String> = call(args)
            .expect("a valid call")
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..2], ["chronicle", "mount"]);
        assert_eq!(args[args.len() - 3..], ["--", "b", "m"]);
        args[2..args.len() - 3].to_vec()
    }

    #[test]
    fn helpers_are_recognised_by_their_file_name() {
        let named = |name: &str| Helper::named(OsStr::new(name));
        assert_eq!(named("/sbin/mount.fuse.chronicle"), Some(Helper::Mount));
        assert_eq!(named("mount.chronicle"), Some(Helper::Mount));
        assert_eq!(named("/sbin/umount.fuse.chronicle"), Some(Helper::Umount));
        assert_eq!(named("umount.chronicle"), Some(Helper::Umount));
        assert_eq!(named("/usr/bin/chronicle"), None);
        assert_eq!(named("/sbin/mount.fuse.chronicle.old"), None);
        assert_eq!(named("/sbin/remount.chronicle"), None);
    }

    #[test]
    fn an_unmount_becomes_chronicle_umount() {
        let call = |args: &[&str]| umount_call(args);
        assert_eq!(
            call(&["umount.fuse.chronicle", "/srv/metrics", "-n"]).expect("accepted"),
            ["chronicle", "umount", "--", "/srv/metrics"]
        );
        assert_eq!(
            call(&[
                "umount.chronicle",
                "-l",
                "/srv/metrics",
                "-t",
                "fuse.chronicle"
            ])
            .expect("accepted"),
            ["chronicle", "umount", "--lazy", "--", "/srv/metrics"]
        );
        let err = call(&["umount.chronicle", "/srv/metrics", "-f"]).expect_err("refused");
        assert!(err.contains("umount -f would abort the mount"), "{err}");
        assert_eq!(
            call(&["umount.chronicle", "-f", "/dead"]).expect("a dead mount goes"),
            ["chronicle", "umount", "--", "/dead"]
        );
        let err = call(&["umount.chronicle", "/srv/metrics", "-N", "/proc/1/ns/mnt"])
            .expect_err("refused");
        assert_eq!(err, NO_NAMESPACES);
        assert!(call(&["umount.chronicle"]).is_err());
        assert!(call(&["umount.chronicle", "/a", "/b"]).is_err());
        let args = call(&["umount.chronicle", "/srv/metrics", "-l"]).expect("accepted");
        Cli::try_parse_from(&args).expect("chronicle umount takes it");
    }

    #[test]
    fn an_fstab_line_becomes_the_mount_command() {
        // What mount(8) passed for `ro,noexec,key_file=/etc/k,_netdev,nofail,
        // x-systemd.requires=a,allow_other` (it drops the x- option itself).
        let c = call(&[
            "/sbin/mount.fuse.chronicle",
            "/srv/metrics.enc",
            "/srv/metrics",
            "-n",
            "-o",
            "ro,noexec,key_file=/etc/k,_netdev,nofail,allow_other",
        ])
        .expect("accepted");
        assert_eq!(
            c.args,
            [
                "chronicle",
                "mount",
                "--key-file=/etc/k",
                "--allow-other",
                "--read-only",
                "--noexec",
                "--",
                "/srv/metrics.enc",
                "/srv/metrics",
            ]
        );
        assert!(!c.fake && !c.verbose && c.skipped.is_empty());
    }

    #[test]
    fn the_last_of_each_option_wins_as_in_mount() {
        // mount(8) appends a command line's -o to the fstab line's.
        let options = options_of(&[
            "mount.chronicle",
            "b",
            "m",
            "-o",
            "ro,noexec,key_file=/k,threads=2,allow_other",
            "-o",
            "rw,exec,key_env=K,threads=8,allow_other,passphrase",
        ]);
        assert_eq!(options, ["--passphrase", "--allow-other", "--threads=8"]);
        let options = options_of(&["mount.chronicle", "b", "m", "-opassphrase,,key_file=/k"]);
        assert_eq!(options, ["--key-file=/k"]);
    }

    #[test]
    fn values_stay_values() {
        let options = options_of(&[
            "mount.chronicle",
            "b",
            "m",
            "-o",
            r#"key-command="vault kv get -field=key a,b",log_file=--foreground"#,
        ]);
        assert_eq!(
            options,
            [
                "--key-command=vault kv get -field=key a,b",
                "--log-file=--foreground"
            ]
        );
        // Quotes inside a value are the value's (sh -c reads them).
        let options = options_of(&[
            "mount.chronicle",
            "b",
            "m",
            "-o",
            r#"key_command=cat "/k 1""#,
        ]);
        assert_eq!(options, [r#"--key-command=cat "/k 1""#]);
        let err =
            call(&["mount.chronicle", "b", "m", "-o", r#"key_command="a,b"#]).expect_err("refused");
        assert!(err.contains("unbalanced double quote"), "{err}");
        // Only what starts with a dash is a flag; directories go after `--`.
        assert!(call(&["mount.chronicle", "--foreground", "m"]).is_err());
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"--log-file=/x\xff".to_vec());
        let argv = [OsString::from("mount.chronicle"), odd, OsString::from("m")];
        assert_eq!(
            translate_mount(&argv).expect_err("refused"),
            "helper flags must be UTF-8"
        );
        let not_a_flag = OsString::from_vec(b"b\xff".to_vec());
        let argv = [
            OsString::from("mount.chronicle"),
            not_a_flag.clone(),
            "m".into(),
        ];
        let c = translate_mount(&argv).expect("accepted");
        assert_eq!(
            c.args[c.args.len() - 3..],
            ["--".into(), not_a_flag, OsString::from("m")]
        );
    }

    #[test]
    fn unknown_and_refused_options_say_why() {
        let err = call(&["mount.chronicle", "b", "m", "-o", "keyfile=/k"]).expect_err("refused");
        assert_eq!(
            err,
            "unknown mount option keyfile=/k (chronicle takes key_file=, key_env=, key_command=, \
             passphrase, ro, rw, noexec, exec, allow_other, threads=, max_inodes=, poll_us=, \
             io_uring, no_writeback_cache, log_file=)"
        );
        let refused = |options: &str| {
            call(&["mount.chronicle", "b", "m", "-o", options]).expect_err("refused")
        };
        assert!(refused("suid").contains("always nosuid"));
        assert!(refused("sync").contains("fsync"));
        assert!(refused("foreground").contains("--foreground"));
        assert_eq!(
            refused("key_file"),
            "mount option key_file needs a value (key_file=...)"
        );
        assert_eq!(
            refused("allow_other=1"),
            "mount option allow_other takes no value"
        );
        let err = call(&["mount.chronicle", "b", "m", "-t", "ext4"]).expect_err("refused");
        assert!(err.contains("not ext4"), "{err}");
        let err = call(&["mount.chronicle", "b", "m", "-x"]).expect_err("refused");
        assert_eq!(err, "unknown helper flag -x");
        let err = call(&["mount.chronicle", "b"]).expect_err("refused");
        assert!(err.contains("1 given"), "{err}");
    }

    #[test]
    fn what_mount_8_adds_is_left_to_it() {
        let options = options_of(&[
            "mount.chronicle",
            "b",
            "m",
            "-t",
            "chronicle",
            "-o",
            "user=alice,noexec,nosuid,nodev,x-systemd.automount,comment=x,noatime",
        ]);
        assert_eq!(options, ["--noexec"]);
    }

    #[test]
    fn sloppy_skips_unknown_options_and_fake_mounts_nothing() {
        let c =
            call(&["mount.chronicle", "b", "m", "-sfv", "-o", "keyfile=/k,ro"]).expect("accepted");
        assert_eq!(c.skipped, ["keyfile=/k"]);
        assert!(c.fake && c.verbose);
        assert!(c.args.contains(&OsString::from("--read-only")));
        // Refusals are not unknowns: sloppy does not let them through.
        assert!(call(&["mount.chronicle", "b", "m", "-s", "-o", "suid"]).is_err());
    }

    #[test]
    fn every_option_it_passes_on_is_one_that_chronicle_mount_takes() {
        let rest = "ro,noexec,allow_other,io_uring,no_writeback_cache,threads=4,max_inodes=100,\
                    poll_us=200,log_file=/l";
        // The key options exclude each other, as on the command line.
        for key in ["key_file=k", "key_env=E", "key_command=c", "passphrase"] {
            let options = format!("{key},{rest}");
            let c = call(&["mount.chronicle", "b", "m", "-o", &options]).expect("accepted");
            assert_eq!(c.args.len(), 2 + 10 + 3, "{:?}", c.args);
            Cli::try_parse_from(&c.args)
                .unwrap_or_else(|e| panic!("chronicle mount refused {:?}: {e}", c.args));
        }
    }
}
