//! Power loss, simulated under BACKING (issue 9): Chronicle's backing
//! directory sits on `powercut`, a pass-through file system that holds
//! everything not yet durable. A workload runs on the mount; at a random
//! moment the mount process is killed and the power cut: each unsynced write
//! reaches the disk whole, torn at 512-byte sectors, or not at all (or only
//! its size), and a random suffix of uncommitted name changes is undone.
//! Then the volume is mounted again and everything the workload was told is
//! durable must be there, whole, with no read failing.
//!
//! `POWERCUT_RUNS` sets the crash points per workload (default 4);
//! `scripts/power-loss.sh` runs many more and records them.

mod powercut;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use powercut::{CutReport, PowerCut};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn chronicle(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .env("CHRONICLE_ENCRYPTION_KEY", KEY)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run chronicle")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn fuse_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let ok = Path::new("/dev/fuse").exists() && root;
    if !ok {
        let why = "cannot mount: needs /dev/fuse and root";
        if std::env::var("CHRONICLE_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("{why}, and CHRONICLE_REQUIRE_FUSE=1");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

fn is_mounted(path: &Path) -> bool {
    let want = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(s(&want)))
}

/// The pid of the `chronicle mount` process serving `mnt`.
fn mount_pid(mnt: &Path) -> Option<u32> {
    let wanted = s(mnt).as_bytes().to_vec();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        (args.contains(&&b"mount"[..]) && args.contains(&wanted.as_slice())).then_some(pid)
    })
}

fn umount(path: &Path) {
    for _ in 0..40 {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("umount").arg(path).status();
        if is_mounted(path) {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let _ = Command::new("umount").arg("-l").arg(path).status();
}

/// Unmounts the simulator at `at` and waits for its threads. The unmount
/// is retried while busy: another test in this process may be forking a
/// child that holds a descriptor on the simulator until it execs.
fn stop_simulator(session: fuser::BackgroundSession, at: &Path) -> std::io::Result<()> {
    umount(at);
    session.join()
}

/// One crash run's directories; unmounts everything when dropped.
struct Rig {
    dir: tempfile::TempDir,
    session: Option<fuser::BackgroundSession>,
    /// The mount process, found while nothing blocks (reading another
    /// process's command line can wait on it).
    pid: Option<u32>,
}

impl Rig {
    fn under(&self) -> PathBuf {
        self.dir.path().join("under")
    }
    fn sim(&self) -> PathBuf {
        self.dir.path().join("sim")
    }
    fn backing(&self) -> PathBuf {
        self.sim().join("vol")
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("mount.log")
    }

    /// A fresh volume on a fresh simulator, mounted.
    fn new() -> (Rig, PowerCut) {
        let base = std::env::var_os("POWERCUT_TMP").map(PathBuf::from);
        let dir = match base {
            Some(base) => tempfile::tempdir_in(base),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let mut rig = Rig {
            dir,
            session: None,
            pid: None,
        };
        std::fs::create_dir_all(rig.sim()).expect("mkdir sim");
        std::fs::create_dir_all(rig.mnt()).expect("mkdir mnt");
        let pc = rig.start_sim();
        let out = chronicle(&["init", s(&rig.backing())]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rig.mount();
        (rig, pc)
    }

    fn start_sim(&mut self) -> PowerCut {
        let pc = PowerCut::new(&self.under()).expect("simulator");
        self.session = Some(pc.mount(&self.sim()).expect("mount simulator"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&self.sim()) {
            assert!(Instant::now() < deadline, "simulator did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        pc
    }

    fn mount(&mut self) {
        let out = chronicle(&[
            "mount",
            s(&self.backing()),
            s(&self.mnt()),
            "--log-file",
            s(&self.log()),
        ]);
        assert!(
            out.status.success(),
            "mount: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        self.pid = mount_pid(&self.mnt());
    }

    /// Kills the mount, cuts the power under it, and brings the simulator
    /// back over what reached the disk.
    fn crash(&mut self, pc: &PowerCut, rng: &mut impl Rng) -> CutReport {
        // Killed without forking: a fork of this process could wait on a
        // page fault of the workload's that the frozen store holds.
        let pid = self.pid.take();
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // A request the simulator holds keeps its sender alive until it is
        // answered (FUSE waits for a request already sent): let them fail.
        pc.release();
        if let Some(pid) = pid {
            while Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        umount(&self.mnt());
        if let Some(session) = self.session.take() {
            stop_simulator(session, &self.sim()).expect("unmount simulator");
        }
        let report = pc.cut(rng).expect("power cut");
        self.start_sim();
        report
    }

    /// `chronicle fsck` of the volume (unmounted): its exit code and output.
    fn fsck(&self, repair: bool) -> (i32, String) {
        let backing = self.backing();
        let mut args = vec!["fsck", s(&backing)];
        if repair {
            args.push("--repair");
        }
        let out = chronicle(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        umount(&self.mnt());
        if let Some(session) = self.session.take() {
            let _ = stop_simulator(session, &self.sim());
        }
        umount(&self.sim());
    }
}

/// A workload: runs on the mount until it fails (the mount was killed),
/// counting what it was told is durable.
type Workload = fn(&Path, &AtomicU64, &AtomicBool);
/// Checks the remounted volume against the count acknowledged.
type Verify = fn(&Path, u64) -> Result<(), String>;

fn runs() -> u64 {
    std::env::var("POWERCUT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// Runs `workload` at `runs()` random crash points; every point must keep
/// what was acknowledged and leave a volume that `fsck` passes (after
/// `--repair` of torn tails at most).
fn crash_points(name: &str, workload: Workload, verify: Verify) {
    if !fuse_available() {
        return;
    }
    let seed0: u64 = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut totals = CutReport::default();
    let mut acked_total = 0;
    for run in 0..runs() {
        let seed = seed0 ^ (run * 0x9e37_79b9) ^ name.len() as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut rig, pc) = Rig::new();
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (mnt, acked, stop) = (rig.mnt(), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || workload(&mnt, &acked, &stop))
        };
        // The crash point: a random change among those the volume sends
        // to its backing store (or a moment, if the workload is slower).
        let fail_at = pc.changes() + rng.random_range(20..3000);
        pc.fail_at(fail_at);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pc.failed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = rig.crash(&pc, &mut rng);
        stop.store(true, Ordering::SeqCst);
        let _ = worker.join();
        let acked = acked.load(Ordering::SeqCst);
        let (code, text) = rig.fsck(false);
        let repaired = if code != 0 {
            let (code, repair) = rig.fsck(true);
            assert_eq!(
                code, 0,
                "{name} seed {seed}: fsck --repair failed:\n{text}\n{repair}"
            );
            let (code, again) = rig.fsck(false);
            assert_eq!(
                code, 0,
                "{name} seed {seed}: not clean after repair:\n{again}"
            );
            true
        } else {
            false
        };
        rig.mount();
        if let Err(e) = verify(&rig.mnt(), acked) {
            panic!(
                "{name} seed {seed}: acknowledged {acked}, lost after the power cut: {e}\n\
                 cut: {report:?}, fsck repaired: {repaired}\nmount log:\n{}",
                std::fs::read_to_string(rig.log()).unwrap_or_default()
            );
        }
        eprintln!(
            "{name} seed {seed}: {acked} acknowledged, kept; cut {report:?}, repaired {repaired}"
        );
        acked_total += acked;
        totals.writes_torn += report.writes_torn;
        totals.writes_dropped += report.writes_dropped;
        totals.writes_whole += report.writes_whole;
        totals.names_undone += report.names_undone;
    }
    eprintln!(
        "POWERCUT {name}: {} crash points, {acked_total} acknowledged operations kept; \
         torn writes {}, dropped {}, whole {}, name changes undone {}",
        runs(),
        totals.writes_torn,
        totals.writes_dropped,
        totals.writes_whole,
        totals.names_undone
    );
}

// ---- workloads ---------------------------------------------------------

const RECORD: usize = 1000;

fn record(n: u64) -> Vec<u8> {
    (0..RECORD)
        .map(|i| (n as usize * 7 + i % 249) as u8 | 0x20)
        .collect()
}

/// Appends fsynced 1000-byte records to one file.
fn appends(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    // The new name is made durable first, as a careful program does.
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mnt.join("records"))
    else {
        return;
    };
    if sync_dir(mnt).is_err() {
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if f.write_all(&record(n)).is_err() || f.sync_data().is_err() {
            return;
        }
        n += 1;
        acked.store(n, Ordering::SeqCst);
    }
}

fn verify_appends(mnt: &Path, acked: u64) -> Result<(), String> {
    let mut got = Vec::new();
    match std::fs::File::open(mnt.join("records")) {
        Ok(mut f) => f.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?,
        Err(e) if acked == 0 => {
            return {
                let _: () = drop(e);
                Ok(())
            }
        }
        Err(e) => return Err(format!("open: {e}")),
    };
    if (got.len() as u64) < acked * RECORD as u64 {
        return Err(format!("{} bytes, {acked} records acknowledged", got.len()));
    }
    for (n, chunk) in got.chunks(RECORD).enumerate() {
        if chunk != &record(n as u64)[..chunk.len()] {
            return Err(format!("record {n} differs"));
        }
    }
    Ok(())
}

const PAGE: usize = 4096;
/// Pages the rewrites workload cycles through, in a file of one more (its
/// last block is never rewritten, as a preallocated log's is not).
const PAGES: u64 = 48;

fn page(n: u64) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PAGE)
        .map(|i| (n as usize * 13 + i % 251) as u8)
        .collect();
    p[..8].copy_from_slice(&n.to_le_bytes());
    p
}

/// How a workload writes its file.
enum Io {
    Buffered,
    /// `O_DIRECT`: each write reaches the mount as it is made.
    Direct,
}

/// Creates `name` in `mnt` as `pages` zero pages, makes it and its name
/// durable, and opens it for writing.
fn zero_pages(mnt: &Path, name: &str, pages: u64, io: Io) -> std::io::Result<std::fs::File> {
    let path = mnt.join(name);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&vec![0u8; PAGE * pages as usize])?;
    f.sync_all()?;
    sync_dir(mnt)?;
    let mut open = std::fs::OpenOptions::new();
    if let Io::Direct = io {
        open.custom_flags(libc::O_DIRECT);
    }
    open.write(true).open(&path)
}

/// Rewrites 4 KiB pages of a preallocated file in turn, each `fsync`ed, as
/// a database's write-ahead log does: the mount holds such rewrites and
/// makes them durable by a commit to its journal.
fn rewrites(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let Ok(f) = zero_pages(mnt, "log", PAGES + 1, Io::Buffered) else {
        return;
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let at = (n % PAGES) * PAGE as u64;
        if f.write_all_at(&page(n), at).is_err() || f.sync_all().is_err() {
            return;
        }
        n += 1;
        acked.store(n, Ordering::SeqCst);
    }
}

/// `rewrites` with direct I/O (each write reaches the mount as it is
/// made), and after every fourth `fsync` an unsynced write of the same
/// values from the page just synced to the end of the file: a write the
/// mount does not hold (it reaches the last block), over a block whose
/// durable contents so far are a commit in the journal.
fn rewrites_then_tail_writes(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let Ok(f) = zero_pages(mnt, "log", PAGES + 1, Io::Direct) else {
        return;
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let slot = n % PAGES;
        if f.write_all_at(&page(n), slot * PAGE as u64).is_err() || f.sync_all().is_err() {
            return;
        }
        n += 1;
        acked.store(n, Ordering::SeqCst);
        if n % 4 == 0 {
            // Each page's newest value (none yet: zeros), then the last page.
            let mut tail: Vec<u8> = (slot..PAGES)
                .flat_map(|t| match (t..n).step_by(PAGES as usize).last() {
                    Some(m) => page(m),
                    None => vec![0u8; PAGE],
                })
                .collect();
            tail.extend_from_slice(&[0u8; PAGE]);
            if f.write_all_at(&tail, slot * PAGE as u64).is_err() {
                return;
            }
        }
    }
}

/// The contents of `name`, a file of `pages` pages that `zero_pages` made,
/// whole; `None` when nothing was acknowledged (the file may not even be
/// whole then).
fn synced_pages(mnt: &Path, name: &str, pages: u64, acked: u64) -> Result<Option<Vec<u8>>, String> {
    if acked == 0 {
        return Ok(None);
    }
    let got = std::fs::read(mnt.join(name)).map_err(|e| format!("read: {e}"))?;
    if got.len() != PAGE * pages as usize {
        return Err(format!("{} bytes", got.len()));
    }
    Ok(Some(got))
}

/// Each page holds the last write to it that was acknowledged, or the one
/// in flight.
fn verify_rewrites(mnt: &Path, acked: u64) -> Result<(), String> {
    let Some(got) = synced_pages(mnt, "log", PAGES + 1, acked)? else {
        return Ok(());
    };
    for slot in 0..PAGES {
        let bytes = &got[slot as usize * PAGE..(slot as usize + 1) * PAGE];
        // The acknowledged writes to this page, newest last.
        let newest_acked = (slot..acked).step_by(PAGES as usize).last();
        let in_flight = (acked % PAGES == slot).then_some(acked);
        let fine = newest_acked.map_or(bytes.iter().all(|&b| b == 0), |n| bytes == page(n))
            || in_flight.is_some_and(|n| bytes == page(n));
        if !fine {
            let found = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            return Err(format!(
                "page {slot}: holds write {found}, the newest acknowledged is {newest_acked:?}"
            ));
        }
    }
    Ok(())
}

/// Pages of the written-back rewrites workload: more than a file holds
/// back in memory (512 blocks), so that held rewrites go in place before
/// the next `fsync`.
const BACK_PAGES: u64 = 600;
/// Rewrites between that workload's syncs.
const BACK_PER_SYNC: u64 = 700;

/// Rewrites the pages of a synced file in turn with direct I/O (as a
/// database writing its own pages does: each reaches the mount at once,
/// unsynced); `fsync` every `BACK_PER_SYNC` rewrites. The mount holds
/// such rewrites and, past its budget, writes them in place over durable
/// data: a block a crash tears there must come back from the journal's
/// copy of its original. `acked` counts the rewrites before the last
/// `fsync`.
fn written_back_rewrites(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let Ok(f) = zero_pages(mnt, "pages", BACK_PAGES + 1, Io::Direct) else {
        return;
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let at = (n % BACK_PAGES) * PAGE as u64;
        if f.write_all_at(&page(n), at).is_err() {
            return;
        }
        n += 1;
        if n % BACK_PER_SYNC == 0 {
            if f.sync_all().is_err() {
                return;
            }
            acked.store(n, Ordering::SeqCst);
        }
    }
}

/// Each page holds the last rewrite of it before the last acknowledged
/// `fsync`, or a later one; none fails to read.
fn verify_written_back_rewrites(mnt: &Path, acked: u64) -> Result<(), String> {
    let Some(got) = synced_pages(mnt, "pages", BACK_PAGES + 1, acked)? else {
        return Ok(());
    };
    for slot in 0..BACK_PAGES {
        let bytes = &got[slot as usize * PAGE..(slot as usize + 1) * PAGE];
        let durable = (slot..acked).step_by(BACK_PAGES as usize).last();
        let found = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let a_rewrite = found % BACK_PAGES == slot && bytes == page(found);
        let fine = match durable {
            Some(n) => a_rewrite && found >= n,
            None => a_rewrite || bytes.iter().all(|&b| b == 0),
        };
        if !fine {
            return Err(format!(
                "page {slot}: holds {found} (whole: {a_rewrite}), the last durable is {durable:?}"
            ));
        }
    }
    Ok(())
}

/// Creates files, each fsynced with its directory.
fn creates(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let dir = mnt.join("d");
    if std::fs::create_dir(&dir).is_err() || sync_dir(mnt).is_err() {
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let made = std::fs::File::create(dir.join(format!("f{n}")))
            .and_then(|mut f| f.write_all(&record(n)).and_then(|()| f.sync_all()))
            .and_then(|()| sync_dir(&dir));
        if made.is_err() {
            return;
        }
        n += 1;
        acked.store(n, Ordering::SeqCst);
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn verify_creates(mnt: &Path, acked: u64) -> Result<(), String> {
    for n in 0..acked {
        let got =
            std::fs::read(mnt.join("d").join(format!("f{n}"))).map_err(|e| format!("f{n}: {e}"))?;
        if got != record(n) {
            return Err(format!("f{n} has {} bytes, not its record", got.len()));
        }
    }
    // Files made after the last acknowledgement may or may not exist, but
    // any that does is readable.
    if let Ok(entries) = std::fs::read_dir(mnt.join("d")) {
        for e in entries.flatten() {
            std::fs::read(e.path()).map_err(|err| format!("{:?}: {err}", e.file_name()))?;
        }
    }
    Ok(())
}

/// Replaces `current` with version n: a new file, fsynced, renamed over it,
/// the directory fsynced.
fn renames(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let tmp = mnt.join(format!("next.{n}"));
        let done = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&n.to_le_bytes())?;
                f.write_all(&record(n))?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, mnt.join("current")))
            .and_then(|()| sync_dir(mnt));
        if done.is_err() {
            return;
        }
        n += 1;
        acked.store(n, Ordering::SeqCst);
    }
}

fn verify_renames(mnt: &Path, acked: u64) -> Result<(), String> {
    if acked == 0 {
        return Ok(());
    }
    let got = std::fs::read(mnt.join("current")).map_err(|e| format!("current: {e}"))?;
    let version = u64::from_le_bytes(
        got.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or("current is short")?,
    );
    if version + 1 < acked {
        return Err(format!(
            "current is version {version}, {acked} acknowledged"
        ));
    }
    if got[8..] != record(version)[..] {
        return Err(format!("current (version {version}) is not whole"));
    }
    Ok(())
}

/// The bundled engine writing with sync=always through its CLI library.
fn engine(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    use chronicle_engine::{Engine, Options, SyncPolicy};
    let options = Options {
        sync: SyncPolicy::Always,
        memtable_points: 2000,
        retention: None,
        ..Options::default()
    };
    let Ok(e) = Engine::open(&mnt.join("db"), options) else {
        return;
    };
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut text = String::new();
        for i in 0..50 {
            let p = n + i;
            text.push_str(&format!(
                "cpu,host=h{} value={p} {}\n",
                p % 40,
                1_700_000_000_000_000_000u64 + p * 1_000_000_000
            ));
        }
        if e.write_lines(text.as_bytes(), 1).is_err() {
            break;
        }
        n += 50;
        acked.store(n, Ordering::SeqCst);
    }
    // The mount is gone: nothing more can be written; the lock goes with it.
    std::mem::forget(e);
}

fn verify_engine(mnt: &Path, acked: u64) -> Result<(), String> {
    use chronicle_engine::{Engine, Options, Query};
    if acked == 0 && !mnt.join("db").exists() {
        return Ok(());
    }
    let e = Engine::open(&mnt.join("db"), Options::default()).map_err(|e| format!("open: {e}"))?;
    let points = e
        .query(&Query::new("cpu"))
        .map_err(|e| format!("query: {e}"))?
        .points();
    e.close().map_err(|e| format!("close: {e}"))?;
    if points < acked {
        return Err(format!("{points} points"));
    }
    Ok(())
}

/// SQLite in WAL mode (synchronous=FULL) committing one row per
/// transaction; a commit is acknowledged when the shell prints after it.
fn sqlite(mnt: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let Ok(mut child) = Command::new("sqlite3")
        .arg("-bail")
        .arg(mnt.join("app.db"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return;
    };
    let Some(mut input) = child.stdin.take() else {
        return;
    };
    let output = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for line in BufReader::new(output.expect("stdout"))
            .lines()
            .map_while(Result::ok)
        {
            if let Some(n) = line.strip_prefix("ack|") {
                last = n.parse().unwrap_or(last);
            }
        }
        last
    });
    let setup = "PRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\n\
                 CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n";
    let mut ok = input.write_all(setup.as_bytes()).is_ok();
    let mut n = 0u64;
    while ok && !stop.load(Ordering::SeqCst) {
        n += 1;
        let body = String::from_utf8_lossy(&record(n)).replace('\'', "x");
        let tx =
            format!("BEGIN; INSERT INTO t VALUES ({n}, '{body}'); COMMIT; SELECT 'ack', {n};\n");
        ok = input.write_all(tx.as_bytes()).is_ok();
        if n.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    drop(input);
    let _ = child.wait();
    let last = reader.join().unwrap_or(0);
    acked.store(last, Ordering::SeqCst);
}

fn verify_sqlite(mnt: &Path, acked: u64) -> Result<(), String> {
    let db = mnt.join("app.db");
    if acked == 0 && !db.exists() {
        return Ok(());
    }
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check; SELECT count(*), coalesce(max(id), 0) FROM t;")
        .output()
        .map_err(|e| format!("sqlite3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if acked == 0 && String::from_utf8_lossy(&out.stderr).contains("no such table") {
        // Created, but its first commit was never acknowledged.
        return Ok(());
    }
    let mut lines = text.lines();
    if lines.next() != Some("ok") || !out.status.success() {
        return Err(format!(
            "integrity: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let counts: Vec<u64> = lines
        .next()
        .unwrap_or("")
        .split('|')
        .filter_map(|v| v.parse().ok())
        .collect();
    match counts[..] {
        [count, max] if count == max && count >= acked => Ok(()),
        _ => Err(format!("rows {text:?}, {acked} commits acknowledged")),
    }
}

#[test]
fn fsynced_appends_survive_power_loss() {
    crash_points("appends", appends, verify_appends);
}

#[test]
fn fsynced_rewrites_survive_power_loss() {
    crash_points("rewrites", rewrites, verify_rewrites);
}

#[test]
fn committed_rewrites_survive_unsynced_writes_over_them() {
    crash_points(
        "rewrites then tail writes",
        rewrites_then_tail_writes,
        verify_rewrites,
    );
}

#[test]
fn rewrites_written_back_before_their_fsync_survive_power_loss() {
    crash_points(
        "written-back rewrites",
        written_back_rewrites,
        verify_written_back_rewrites,
    );
}

#[test]
fn created_and_fsynced_files_survive_power_loss() {
    crash_points("creates", creates, verify_creates);
}

#[test]
fn renames_made_durable_with_fsyncdir_survive_power_loss() {
    crash_points("renames", renames, verify_renames);
}

#[test]
fn engine_with_sync_always_keeps_acknowledged_points() {
    crash_points("engine", engine, verify_engine);
}

#[test]
fn sqlite_wal_commits_survive_power_loss() {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        assert!(
            std::env::var("CHRONICLE_REQUIRE_FUSE").as_deref() != Ok("1"),
            "sqlite3 is missing (CI installs it)"
        );
        eprintln!("SKIPPED: no sqlite3");
        return;
    }
    crash_points("sqlite", sqlite, verify_sqlite);
}

// Protects: the simulator itself. Unsynced writes are held (and read
// back) and uncommitted names logged; over many cuts, synced bytes always
// survive, and unsynced writes and uncommitted names are sometimes kept and
// sometimes lost.
#[test]
fn simulator_drops_what_was_not_synced() {
    if !fuse_available() {
        return;
    }
    let (mut dropped, mut kept, mut names_lost, mut names_kept) = (0, 0, 0, 0);
    for seed in 0..16u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (under, sim) = (dir.path().join("under"), dir.path().join("sim"));
        std::fs::create_dir_all(&sim).expect("mkdir");
        let pc = PowerCut::new(&under).expect("simulator");
        let session = pc.mount(&sim).expect("mount");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(sim.join("a"))
            .expect("create");
        sync_dir(&sim).expect("commit the name");
        f.write_all_at(b"synced", 0).expect("write");
        f.sync_all().expect("sync");
        f.write_all_at(b"UNSYNCED", 6).expect("write");
        assert_eq!(
            std::fs::read(sim.join("a")).expect("read"),
            b"syncedUNSYNCED"
        );
        assert_eq!(pc.held_writes(), 1);
        std::fs::File::create(sim.join("b")).expect("uncommitted name");
        drop(f);
        stop_simulator(session, &sim).expect("unmount");
        let tree = under.join("tree");
        assert_eq!(
            std::fs::read(tree.join("a")).expect("a"),
            b"synced",
            "held in memory"
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        pc.cut(&mut rng).expect("cut");
        let a = std::fs::read(tree.join("a")).expect("a survives: its name was committed");
        assert!(a.starts_with(b"synced"), "synced bytes lost: {a:?}");
        if a == b"synced" {
            dropped += 1
        } else {
            kept += 1
        }
        if tree.join("b").exists() {
            names_kept += 1
        } else {
            names_lost += 1
        }
    }
    assert!(
        dropped > 0 && kept > 0,
        "writes: {dropped} dropped, {kept} kept"
    );
    assert!(
        names_lost > 0 && names_kept > 0,
        "names: {names_lost} lost, {names_kept} kept"
    );
}
