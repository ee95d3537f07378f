//! A power cut during a rewrite in place: the rewrite reaches the disk in
//! any subset of its 512-byte sectors, the file's new size may or may not,
//! and the journal holds what was synced before the rewrite began. Whatever
//! survives, no byte that an earlier sync made durable may be lost and no
//! read may fail once the file is opened again.
//!
//! Each case captures the backing file before and after one write and the
//! journal after it, builds every prefix of the changed sectors plus random
//! subsets of them (at both sizes), and opens each result as the mount does
//! after a crash (then, if a read fails, repairs it as `fsck --repair`
//! does). A control run without the journal shows the same tears
//! destroy durable data, so the cases can fail.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::journal::{Journal, Mtime, JOURNAL_NAME};
use chronicle_mount::SecretKey;
use rand::{Rng, SeedableRng};

const SECTOR: usize = 512;
const RANDOM_SUBSETS: usize = 48;

fn crypto() -> Arc<ContentCrypto> {
    Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([3; 32]),
        Backend::Ring,
    ))
}

fn open_rw(path: &Path, create: bool) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(path)
        .expect("open backing file")
}

/// One write, as the disk saw it.
struct Captured {
    before: Vec<u8>,
    after: Vec<u8>,
    journal: Vec<u8>,
}

/// Makes a guarded file holding `durable`, syncs it, then runs `change`
/// and captures the backing file before and after, and the journal.
fn capture(durable: &[u8], change: impl FnOnce(&EncryptedFile)) -> Captured {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    // Copies released during `change` stay readable: a crash before their
    // clearing reached the disk leaves them so.
    let journal = Arc::new(
        Journal::open(dir.path())
            .expect("journal")
            .keeping_released(),
    );
    let file = new_file_guarded_by(&path, &journal);
    file.write_at(0, durable).expect("durable write");
    file.sync(true).expect("sync");
    let before = fs::read(&path).expect("read before");
    change(&file);
    // Rewrites the file holds back reach the backing file when anything
    // reads it (and only after their copies are synced): a crash comes
    // after that.
    file.read_at(0, &mut [0u8; 1]).expect("read");
    let after = fs::read(&path).expect("read after");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("read journal");
    drop(file);
    Captured {
        before,
        after,
        journal: journal_bytes,
    }
}

/// A new guarded file at `path`, with a journal beside it.
fn guarded_new_file(path: &Path) -> (Arc<Journal>, EncryptedFile) {
    let dir = path.parent().expect("a directory");
    let journal = Arc::new(Journal::open(dir).expect("journal"));
    let file = new_file_guarded_by(path, &journal);
    (journal, file)
}

/// A new file at `path`, guarded by `journal`.
fn new_file_guarded_by(path: &Path, journal: &Arc<Journal>) -> EncryptedFile {
    EncryptedFile::create(open_rw(path, true), crypto(), path.to_path_buf())
        .expect("create")
        .guarded_by(journal)
        .expect("guard")
}

/// Every state a power cut can leave: some of the changed sectors written,
/// at the old or the new size.
fn crash_states(c: &Captured, seed: u64, sizes: &[usize]) -> Vec<Vec<u8>> {
    // A shrink's cut is not a write of zeros: only bytes the new file holds
    // can have been written.
    let span = c.after.len();
    let byte = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
    let changed: Vec<usize> = (0..span.div_ceil(SECTOR))
        .filter(|s| {
            (s * SECTOR..((s + 1) * SECTOR).min(span))
                .any(|i| byte(&c.before, i) != byte(&c.after, i))
        })
        .collect();
    let mut subsets: Vec<Vec<usize>> = (0..=changed.len()).map(|k| changed[..k].to_vec()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..RANDOM_SUBSETS {
        subsets.push(
            changed
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect(),
        );
    }
    let mut states = Vec::new();
    for &len in sizes {
        for subset in &subsets {
            let mut state: Vec<u8> = (0..len).map(|i| byte(&c.before, i)).collect();
            for &s in subset {
                for (i, slot) in state.iter_mut().enumerate().skip(s * SECTOR).take(SECTOR) {
                    *slot = byte(&c.after, i);
                }
            }
            states.push(state);
        }
    }
    states
}

/// Opens `state` as the mount does after a crash, with `journal` beside
/// it; the plaintext, or why it could not be read.
fn reopen(state: &[u8], journal: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, state).expect("write state");
    fs::write(dir.path().join(JOURNAL_NAME), journal).expect("write journal");
    let journal = Arc::new(Journal::open(dir.path()).map_err(|e| e.to_string())?);
    let file = EncryptedFile::open(open_rw(&path, false), crypto(), path.clone())
        .and_then(|f| f.guarded_by(&journal))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if file.read_to_end(&mut out).is_err() {
        // A torn tail of unsynced data that no copy mends is left for
        // `fsck --repair` (the mount does not cut files on its own).
        out.clear();
        file.repair_tail().map_err(|e| e.to_string())?;
        file.read_to_end(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Tries every crash state of `c`; returns the states that `keeps`
/// rejects or that fail to read, described.
fn losses(
    c: &Captured,
    journal: &[u8],
    seed: u64,
    keeps: &dyn Fn(&[u8]) -> bool,
) -> (usize, Vec<String>) {
    losses_at(c, journal, seed, &[c.before.len(), c.after.len()], keeps)
}

/// `losses` with the file's size in each state one of `sizes`.
fn losses_at(
    c: &Captured,
    journal: &[u8],
    seed: u64,
    sizes: &[usize],
    keeps: &dyn Fn(&[u8]) -> bool,
) -> (usize, Vec<String>) {
    let states = crash_states(c, seed, sizes);
    let mut lost = Vec::new();
    for (n, state) in states.iter().enumerate() {
        match reopen(state, journal) {
            Ok(content) if keeps(&content) => {}
            Ok(content) => lost.push(format!("state {n}: {} bytes, wrong", content.len())),
            Err(e) => lost.push(format!("state {n}: {e}")),
        }
    }
    (states.len(), lost)
}

fn record(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n * 31 + i % 251) as u8 | 1).collect()
}

/// An append keeps what was durable and adds a prefix of what it wrote.
fn append_keeps(durable: &[u8], new: &[u8]) -> impl Fn(&[u8]) -> bool {
    let durable = durable.to_vec();
    let new = new.to_vec();
    move |got: &[u8]| got.starts_with(&durable) && new.starts_with(got)
}

// Protects: the measured loss in issue 9 (a file of fsynced 1000-byte
// records lost half of them to one torn append). Every record appended on
// top of synced ones, torn at every sector: the synced records survive.
#[test]
fn torn_appends_keep_synced_records() {
    let mut tried = 0;
    for n in 1..=8 {
        let durable: Vec<u8> = (0..n).flat_map(|r| record(r, 1000)).collect();
        let mut new = durable.clone();
        new.extend(record(n, 1000));
        let at = durable.len() as u64;
        let appended = record(n, 1000);
        let c = capture(&durable, |f| f.write_at(at, &appended).expect("append"));
        let (states, lost) = losses(&c, &c.journal, n as u64, &append_keeps(&durable, &new));
        assert!(lost.is_empty(), "after {n} records: {lost:?}");
        tried += states;
    }
    assert!(tried > 500, "only {tried} crash states");
}

// Protects: growing a file whose last block is full re-seals that block as
// not last; a torn re-seal must not lose the full block.
#[test]
fn torn_growth_past_a_full_block_keeps_it() {
    let durable = record(1, 8192);
    let mut new = durable.clone();
    new.extend(record(2, 10));
    let tail = record(2, 10);
    let c = capture(&durable, |f| f.write_at(8192, &tail).expect("append"));
    let (_, lost) = losses(&c, &c.journal, 7, &append_keeps(&durable, &new));
    assert!(lost.is_empty(), "{lost:?}");
}

// Protects: an overwrite inside a synced block leaves the old contents or
// the new, never an unreadable block.
#[test]
fn torn_overwrite_reads_old_or_new() {
    let old = record(4, 3 * 4096 + 100);
    let mut new = old.clone();
    new[5000..5100].copy_from_slice(&record(9, 100));
    let patch = record(9, 100);
    let c = capture(&old, |f| f.write_at(5000, &patch).expect("overwrite"));
    let keeps = |got: &[u8]| got == old.as_slice() || got == new.as_slice();
    let (_, lost) = losses(&c, &c.journal, 11, &keeps);
    assert!(lost.is_empty(), "{lost:?}");
}

// Protects: rewrites held back in memory tear like any other: after a
// crash while they are written, each block reads old or new.
#[test]
fn torn_held_rewrites_read_old_or_new() {
    let old = record(6, 10 * 4096);
    let rewritten = [2usize, 3, 7];
    let new_block = |b: usize| record(b + 20, 4096);
    let c = capture(&old, |f| {
        for &b in &rewritten {
            f.write_at((b * 4096) as u64, &new_block(b))
                .expect("rewrite");
        }
    });
    let keeps = |got: &[u8]| {
        got.len() == old.len()
            && got.chunks(4096).enumerate().all(|(b, block)| {
                block == &old[b * 4096..(b + 1) * 4096]
                    || (rewritten.contains(&b) && block == new_block(b).as_slice())
            })
    };
    let (states, lost) = losses(&c, &c.journal, 17, &keeps);
    assert!(lost.is_empty(), "{lost:?}");
    assert!(states > 50, "only {states} crash states");
}

// Protects: held rewrites wait in memory, their copies made but not yet
// synced; nothing reaches the backing file until one journal sync covers
// them all, reads see them, and the file's sync releases the copies.
#[test]
fn rewrites_are_held_until_read_or_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let (journal, file) = guarded_new_file(&path);
    let old = record(1, 8 * 4096);
    file.write_at(0, &old).expect("write");
    file.sync(true).expect("sync");
    let stored = fs::read(&path).expect("stored");
    let syncs = journal.syncs();
    for b in [1u64, 4, 5] {
        file.write_at(b * 4096, &record(9, 4096)).expect("rewrite");
    }
    assert_eq!(journal.live(), 3, "each durable block copied");
    assert_eq!(journal.syncs(), syncs, "copies not yet synced");
    assert_eq!(
        fs::read(&path).expect("stored"),
        stored,
        "held, not written"
    );
    // A partial write over a held block builds on the held block, not on
    // the one stored (it writes what is held first: one sync).
    file.write_at(4096 + 10, &record(4, 100)).expect("patch");
    let mut patched = record(9, 4096);
    patched[10..110].copy_from_slice(&record(4, 100));
    assert_eq!(journal.syncs(), syncs + 1, "one sync for the three");
    let mut got = vec![0u8; 4096];
    file.read_at(4 * 4096, &mut got).expect("read");
    assert_eq!(got, record(9, 4096));
    file.read_at(4096, &mut got).expect("read");
    assert_eq!(got, patched);
    assert_ne!(
        fs::read(&path).expect("stored"),
        stored,
        "written once read"
    );
    // A rewrite of the last block is never held: it moves the file's end.
    file.write_at(7 * 4096, &record(3, 10))
        .expect("rewrite last");
    assert_ne!(
        fs::read(&path).expect("stored")[7 * 4136..],
        stored[7 * 4136..]
    );
    file.sync(true).expect("sync");
    assert_eq!(journal.live(), 0);
}

// Protects: after a sync of the journal failed, nothing is copied or held
// through it: a rewrite or shrink of synced blocks fails at once and leaves
// the file as it was (Linux reports a lost write-back once, so a later sync could
// succeed with copies missing).
#[test]
fn a_failed_journal_sync_refuses_rewrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let journal = Arc::new(
        Journal::open(dir.path())
            .expect("journal")
            .as_if_a_sync_failed(),
    );
    let file = new_file_guarded_by(&path, &journal);
    let old = record(1, 3 * 4096);
    file.write_at(0, &old).expect("a new file needs no copies");
    file.sync(true).expect("sync");
    let refused = file
        .write_at(4096, &record(2, 4096))
        .expect_err("a rewrite of a synced block");
    assert!(
        refused.to_string().contains("an earlier sync failed"),
        "{refused}"
    );
    // A shrink, which needs the journal too, is refused before it starts.
    let stored = fs::read(&path).expect("stored");
    file.set_len(5000).expect_err("a shrink of synced blocks");
    assert_eq!(fs::read(&path).expect("stored"), stored, "nothing changed");
    let mut all = Vec::new();
    file.read_to_end(&mut all).expect("read");
    assert_eq!(all, old);
    assert_eq!(journal.held_blocks(), 0);
}

// Protects: a shrink re-seals its new last block in place; torn, the file
// is the old one or the shrunk one.
#[test]
fn torn_shrink_reads_old_or_new() {
    let old = record(5, 3 * 4096 + 100);
    let new = old[..5000].to_vec();
    let c = capture(&old, |f| f.set_len(5000).expect("shrink"));
    let keeps = |got: &[u8]| got == old.as_slice() || got == new.as_slice();
    // The re-sealed block is synced before the cut, so a tear meets the
    // old size; the cut size is seen only with the re-seal whole.
    let (_, lost) = losses_at(&c, &c.journal, 13, &[c.before.len()], &keeps);
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(reopen(&c.after, &c.journal), Ok(new.clone()));
}

// Protects: the cases above mean something. Without the journal's copies
// the same tears lose synced records (what issue 9 measured).
#[test]
fn without_the_journal_the_same_tears_lose_data() {
    let durable: Vec<u8> = (0..4).flat_map(|r| record(r, 1000)).collect();
    let mut new = durable.clone();
    new.extend(record(4, 1000));
    let appended = record(4, 1000);
    let c = capture(&durable, |f| f.write_at(4000, &appended).expect("append"));
    let (_, lost) = losses(&c, &[], 4, &append_keeps(&durable, &new));
    assert!(!lost.is_empty(), "tears without copies lost nothing");
}

// Protects: copies are released once the file is synced again, so the
// journal holds no live record in a quiet volume, and an append after an append (no
// sync between) copies nothing more.
#[test]
fn copies_are_released_by_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let (journal, file) = guarded_new_file(&path);
    file.write_at(0, &record(1, 100)).expect("write");
    assert_eq!(journal.live(), 0, "a new file has nothing durable");
    file.sync(true).expect("sync");
    file.write_at(100, &record(2, 100)).expect("append");
    assert_eq!(journal.live(), 1, "the synced partial block was copied");
    file.write_at(200, &record(3, 100)).expect("append");
    assert_eq!(journal.live(), 1, "copied once per sync, not per write");
    file.sync(false).expect("sync");
    assert_eq!(journal.live(), 0);
    drop(file);
    drop(journal);
    let reopened = Journal::open(dir.path()).expect("reopen");
    assert_eq!(reopened.live(), 0, "no record left live on disk");
}

// Protects: growing a file far past its full last block writes the old last
// block (re-sealed as not last) and the new far end separately; when the
// re-seal is lost but the far end lands, the old block still opens as a
// last block but is not the end: it goes back from its copy, and the
// unsynced growth is cut.
#[test]
fn lost_reseal_before_a_far_growth_keeps_the_old_end() {
    let durable = record(6, 8192);
    let far = 8192 + 300 * 4096;
    let mut new = durable.clone();
    new.resize(far, 0);
    new.extend(record(7, 10));
    let tail = record(7, 10);
    let c = capture(&durable, |f| {
        f.write_at(far as u64, &tail).expect("far write")
    });
    let (_, lost) = losses(&c, &c.journal, 17, &append_keeps(&durable, &new));
    assert!(lost.is_empty(), "{lost:?}");
}

// Protects: a record planted in the journal does not make the mount cut a
// file on its own. A file cut back at a block boundary (which reads fail
// on) stays as it is when it is opened, planted copy or not; only
// `fsck --repair` may cut it.
#[test]
fn a_planted_record_does_not_repair_a_cut_file() {
    let durable = record(8, 3 * 4096);
    let c = capture(&durable, |_| {});
    let mut cut = c.before.clone();
    cut.truncate(64 + 2 * 4136);
    // A hole record for block 0 of this file's contents, with a valid
    // checksum: all an attacker needs is the content id in the header.
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("journal");
    let mut content_id = [0u8; 16];
    content_id.copy_from_slice(&c.before[24..40]);
    let zeros = vec![0u8; 4136];
    journal
        .save(
            &content_id,
            &[chronicle_mount::journal::Original {
                index: 0,
                stored: &zeros,
            }],
        )
        .expect("plant");
    drop(journal);
    let planted = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal bytes");
    let state = tempfile::tempdir().expect("tempdir");
    let path = state.path().join("f");
    fs::write(&path, &cut).expect("cut file");
    fs::write(state.path().join(JOURNAL_NAME), &planted).expect("plant journal");
    let journal = Arc::new(Journal::open(state.path()).expect("open journal"));
    let file = EncryptedFile::open(open_rw(&path, false), crypto(), path.clone())
        .and_then(|f| f.guarded_by(&journal))
        .expect("open");
    let mut out = Vec::new();
    assert!(
        file.read_to_end(&mut out).is_err(),
        "the cut is still reported"
    );
    assert_eq!(fs::read(&path).expect("raw"), cut, "nothing changed");
}

// Protects: something other than a journal planted under its name (a FIFO,
// a hard link to another file) is refused, not written through.
#[test]
fn a_planted_journal_that_is_not_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join(JOURNAL_NAME))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    assert!(Journal::open(dir.path()).is_err(), "a FIFO");
    let other = tempfile::tempdir().expect("tempdir");
    fs::write(other.path().join("victim"), b"precious").expect("victim");
    fs::hard_link(other.path().join("victim"), other.path().join(JOURNAL_NAME)).expect("link");
    assert!(Journal::open(other.path()).is_err(), "a hard link");
    assert_eq!(
        fs::read(other.path().join("victim")).expect("read"),
        b"precious"
    );
}

/// A crash state laid out for recovery: the backing file `state` and the
/// journal bytes `journal` in a new directory, the journal opened.
fn staged(state: &[u8], journal: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, Arc<Journal>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, state).expect("write state");
    fs::write(dir.path().join(JOURNAL_NAME), journal).expect("write journal");
    let journal = Arc::new(Journal::open(dir.path()).expect("open journal"));
    (dir, path, journal)
}

/// A file of `blocks` whole blocks of `durable`, synced by `fsync`, with a
/// journal beside it.
fn synced_file(dir: &Path, durable: &[u8]) -> (Arc<Journal>, EncryptedFile, std::path::PathBuf) {
    let path = dir.join("f");
    let (journal, file) = guarded_new_file(&path);
    file.write_at(0, durable).expect("write");
    file.sync(false).expect("fsync");
    (journal, file, path)
}

// Protects: a sync of rewrites held in memory, with nothing else changed
// since the file's last `fsync`, commits them to the journal with one
// journal sync and leaves the file as it was; after a crash right then,
// or while the held blocks were later written in place and torn any way,
// the file reads as the sync left it. Without the journal the old
// contents come back, so the commit is what made the sync durable.
#[test]
fn a_sync_of_held_rewrites_commits_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = record(9, 5 * 4096);
    let (journal, file, path) = synced_file(dir.path(), &durable);
    let before = fs::read(&path).expect("before");
    let new_block = record(10, 4096);
    let mut expected = durable.clone();
    expected[4096..8192].copy_from_slice(&new_block);

    file.write_at(4096, &new_block).expect("rewrite");
    let syncs = journal.syncs();
    file.sync(false).expect("fsync");
    assert_eq!(journal.syncs(), syncs + 1, "one journal sync");
    assert_eq!(
        fs::read(&path).expect("after"),
        before,
        "nothing in place yet"
    );
    let committed = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
    assert_eq!(reopen(&before, &committed), Ok(expected.clone()));
    assert_eq!(reopen(&before, &[]), Ok(durable), "the control");

    // A second sync with nothing new costs nothing.
    file.sync(false).expect("fsync again");
    assert_eq!(journal.syncs(), syncs + 1);

    file.write_held_back().expect("written in place");
    let c = Captured {
        after: fs::read(&path).expect("after"),
        before,
        journal: committed,
    };
    assert_ne!(c.after, c.before);
    let (tried, lost) = losses_at(&c, &c.journal, 23, &[c.before.len()], &|got| {
        got == expected.as_slice()
    });
    assert!(tried > 8 && lost.is_empty(), "{tried} states: {lost:?}");
}

// Protects: a write that the mount does not hold (it reaches the file's
// last block), over a block whose durable contents are a commit, takes no
// copy of that block: the copy would be newer than the commit and hide it,
// so a crash that lost the writes in place would bring back the contents
// from before the sync.
#[test]
fn a_write_over_a_committed_block_keeps_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = record(13, 5 * 4096);
    let (_journal, file, path) = synced_file(dir.path(), &durable);
    let before = fs::read(&path).expect("before");
    let mut expected = durable.clone();
    expected[4096..8192].copy_from_slice(&record(14, 4096));
    file.write_at(4096, &expected[4096..8192]).expect("rewrite");
    file.sync(false).expect("fsync: a commit");
    file.write_at(4096, &expected[4096..])
        .expect("the same bytes to the end");
    let journal = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
    assert!(
        reopen(&before, &journal) == Ok(expected),
        "every write in place lost: the file must read as the sync left it"
    );
}

/// Something done to a synced file (and its backing path) before a rewrite.
type Change = dyn Fn(&EncryptedFile, &Path);

// Protects: a commit stands for a sync only when held rewrites are all
// that changed since the file's last `fsync`. After other writes, after a
// sync by `fdatasync` (which did not make the file's attributes durable)
// or after a change of mode, the sync writes everything in place and
// syncs the file.
#[test]
fn a_sync_after_other_changes_is_a_sync_of_the_file() {
    let rewrite = record(12, 4096);
    let cases: [(&str, &Change); 3] = [
        ("an append", &|f, _| {
            f.write_at(5 * 4096, b"tail").expect("append")
        }),
        ("fdatasync", &|f, _| f.sync(true).expect("fdatasync")),
        ("a mode change", &|_, p| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(0o600)).expect("chmod")
        }),
    ];
    for (what, change) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, file, path) = synced_file(dir.path(), &record(11, 5 * 4096));
        change(&file, &path);
        file.write_at(4096, &rewrite).expect("rewrite");
        file.sync(false).expect("fsync");
        let mut got = vec![0u8; 4096];
        let stored = fs::read(&path).expect("stored");
        let reread = EncryptedFile::open(open_rw(&path, false), crypto(), path.clone())
            .expect("open")
            .read_at(4096, &mut got)
            .expect("read");
        assert_eq!((reread, &got), (4096, &rewrite), "{what}: in place");
        assert!(stored.len() > 5 * 4096);
        assert_eq!(
            Journal::pending_commits(dir.path()).expect("pending"),
            0,
            "{what}: no commit"
        );
        drop(file);
        drop(journal);
    }
}

// Protects: commits never outlive the file's next sync of its own. Once
// the committed blocks are in place and the file synced, the journal holds
// no commit, so none can be written over the file's later contents (here a
// shrink and a regrowth over the committed block) after a crash.
#[test]
fn commits_are_gone_after_the_files_own_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, file, path) = synced_file(dir.path(), &record(13, 5 * 4096));
    file.write_at(4096, &record(14, 4096)).expect("rewrite");
    file.sync(false).expect("commit");
    assert_eq!(Journal::pending_commits(dir.path()).expect("pending"), 1);
    file.write_at(5 * 4096, b"x").expect("an append, not held");
    file.sync(false).expect("fsync");
    assert_eq!(Journal::pending_commits(dir.path()).expect("pending"), 0);

    file.set_len(100).expect("shrink");
    let regrown = record(15, 3 * 4096);
    file.write_at(100, &regrown).expect("regrow");
    file.sync(false).expect("fsync");
    let mut expected = record(13, 100);
    expected.extend(&regrown);
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
    let state = fs::read(&path).expect("state");
    assert_eq!(reopen(&state, &journal_bytes), Ok(expected));
}

// Protects: a commit torn while it was written (its journal sync never
// returned, so its `fsync` failed) does not hide the commit before it: the
// block reads as the earlier sync or, with the new commit whole, as the
// new one, never as it was before both.
#[test]
fn a_torn_commit_leaves_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    // Released records stay on disk, as before their clearing lands.
    let journal = Arc::new(
        Journal::open(dir.path())
            .expect("journal")
            .keeping_released(),
    );
    let file = new_file_guarded_by(&path, &journal);
    let durable = record(16, 5 * 4096);
    file.write_at(0, &durable).expect("write");
    file.sync(false).expect("fsync");
    let backing = fs::read(&path).expect("backing");
    let journal_path = dir.path().join(JOURNAL_NAME);
    let (first, second) = (record(17, 4096), record(18, 4096));
    file.write_at(4096, &first).expect("rewrite");
    file.sync(false).expect("commit");
    let after_first = fs::read(&journal_path).expect("journal");
    file.write_at(4096, &second).expect("rewrite again");
    file.sync(false).expect("commit again");
    assert_eq!(
        fs::read(&path).expect("backing"),
        backing,
        "nothing in place"
    );
    let c = Captured {
        after: fs::read(&journal_path).expect("journal"),
        before: after_first,
        journal: Vec::new(),
    };
    let with = |page: &[u8]| {
        let mut all = durable.clone();
        all[4096..8192].copy_from_slice(page);
        all
    };
    let (expect_first, expect_second) = (with(&first), with(&second));
    let states = crash_states(&c, 29, &[c.after.len()]);
    assert!(states.len() > 8);
    for (n, torn) in states.iter().enumerate() {
        let got = reopen(&backing, torn);
        assert!(
            got.as_ref() == Ok(&expect_first) || got.as_ref() == Ok(&expect_second),
            "state {n}: {:?}",
            got.map(|g| g.len())
        );
    }
    drop(file);
}

// Protects: the modification time a commit carries is the file's after
// recovery (when later than the file's own): an `fsync` made it durable.
#[test]
fn a_commit_keeps_the_files_modification_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, file, path) = synced_file(dir.path(), &record(19, 5 * 4096));
    let before = fs::read(&path).expect("backing");
    file.write_at(4096, &record(20, 4096)).expect("rewrite");
    // As the mount's SETATTR sets it, a time no recovery could stumble on.
    let synced_time = rustix::fs::Timespec {
        tv_sec: 4_000_000_000,
        tv_nsec: 123_456_789,
    };
    let times = rustix::fs::Timestamps {
        last_access: synced_time,
        last_modification: synced_time,
    };
    rustix::fs::futimens(file.backing(), &times).expect("set the time");
    file.sync(false).expect("commit");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");

    assert_eq!(
        mtime_after_commit(&before, &journal_bytes),
        (4_000_000_000, 123_456_789)
    );
}

// Protects: a commit records the modification time the mount last set for
// the kernel (`mtime_set`, which the mount calls for the times the kernel
// writes back) without reading the backing file's, and recovery gives the
// file that time.
#[test]
fn a_commit_records_the_time_the_kernel_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, file, path) = synced_file(dir.path(), &record(23, 5 * 4096));
    let before = fs::read(&path).expect("backing");
    file.write_at(4096, &record(24, 4096)).expect("rewrite");
    // Not set on the backing file: only the commit can carry it.
    let set = Mtime {
        secs: 4_000_000_000,
        nanos: 7,
    };
    file.set_kernel_mtime(set, || Ok::<(), ()>(()))
        .expect("set");
    file.sync(false).expect("commit");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");

    assert_eq!(
        mtime_after_commit(&before, &journal_bytes),
        (set.secs, set.nanos)
    );
}

// Protects: a time set before a write of the file's own is not what a
// later commit records (the write moved the backing file's time).
#[test]
fn a_time_set_before_a_write_is_not_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, file, path) = synced_file(dir.path(), &record(25, 5 * 4096));
    let stale = Mtime {
        secs: 4_000_000_000,
        nanos: 7,
    };
    file.set_kernel_mtime(stale, || Ok::<(), ()>(()))
        .expect("set");
    file.write_at(5 * 4096, &record(26, 4096)).expect("append");
    file.sync(false).expect("fsync");
    let before = fs::read(&path).expect("backing");
    file.write_at(4096, &record(27, 4096)).expect("rewrite");
    file.sync(false).expect("commit");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");

    let (secs, _) = mtime_after_commit(&before, &journal_bytes);
    assert!(secs < stale.secs, "the stale time came back");
}

/// The modification time of a file opened after a crash that left it as
/// `before`, with `journal` beside it holding the one commit a sync wrote.
fn mtime_after_commit(before: &[u8], journal: &[u8]) -> (i64, u32) {
    let (_state, path, journal) = staged(before, journal);
    assert_eq!(journal.carried_commits(), 1, "the sync was a commit");
    let reopened = EncryptedFile::open(open_rw(&path, false), crypto(), path.clone())
        .and_then(|f| f.guarded_by(&journal))
        .expect("recover");
    let stat = rustix::fs::fstat(reopened.backing()).expect("stat");
    (stat.st_mtime, stat.st_mtime_nsec as u32)
}

// Protects: held blocks written in place after the kernel set the file's
// modification time give the backing file a newer time, as any write does
// (whoever copies BACKING by modification time must see its bytes change;
// the kernel's newer writes may not have sent their time yet).
#[test]
fn held_blocks_written_later_move_the_time_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, _path) = synced_file(dir.path(), &record(31, 5 * 4096));
    file.write_at(4096, &record(32, 4096)).expect("rewrite");
    assert_eq!(journal.held_blocks(), 1, "the rewrite is held");
    let set = Mtime {
        secs: 1_700_000_000,
        nanos: 5,
    };
    let times = set.as_modification_time();
    file.set_kernel_mtime(set, || rustix::fs::futimens(file.backing(), &times))
        .expect("set the time");
    file.write_held_back().expect("write held");
    assert_eq!(journal.held_blocks(), 0, "written in place");
    let stat = rustix::fs::fstat(file.backing()).expect("stat");
    assert!(stat.st_mtime > set.secs, "the time went back");
}

// Protects: a held rewrite of a hole in a sparse file takes the hole's
// space at once (on a full store the write fails, not the writing in place
// after it was acknowledged), and a held rewrite of a block stored with
// data leaves the backing file as it was: an `fsync` loop over rewrites
// changes nothing there (docs/PERFORMANCE.md). Read after a `stat`, a
// changed file's ctime moves on Linux 6.13 and later (fine-grained times).
#[test]
fn held_rewrites_take_space_only_for_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, _path) = synced_file(dir.path(), &record(28, 40 * 4096));
    // 32 blocks: whole backing pages among them are freed, up to 64 KiB.
    file.punch_hole(2 * 4096, 32 * 4096).expect("punch");
    file.sync(false).expect("fsync");
    let allocated = || rustix::fs::fstat(file.backing()).expect("stat").st_blocks;
    let before = allocated();

    file.write_at(17 * 4096, &record(29, 4096))
        .expect("rewrite a hole");
    assert_eq!(journal.held_blocks(), 1, "the rewrite is held");
    assert!(allocated() > before, "the hole's space was not taken");

    let stat = rustix::fs::fstat(file.backing()).expect("stat");
    file.write_at(4096, &record(30, 4096))
        .expect("rewrite data");
    assert_eq!(journal.held_blocks(), 2, "the rewrite is held");
    let after = rustix::fs::fstat(file.backing()).expect("stat");
    assert_eq!(
        (after.st_ctime, after.st_ctime_nsec, after.st_blocks),
        (stat.st_ctime, stat.st_ctime_nsec, stat.st_blocks),
        "the backing file changed"
    );
}

// Protects: a file whose commits cannot be written (here its backing file
// is open read-only) fails to open rather than showing the older
// contents, and keeps its commits for an opening that can write them.
#[test]
fn commits_that_cannot_be_written_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = record(21, 5 * 4096);
    let (_journal, file, path) = synced_file(dir.path(), &durable);
    let before = fs::read(&path).expect("backing");
    let page = record(22, 4096);
    file.write_at(4096, &page).expect("rewrite");
    file.sync(false).expect("commit");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");

    let (_state, path, journal) = staged(&before, &journal_bytes);
    let read_only = fs::File::open(&path).expect("open read-only");
    let refused = EncryptedFile::open(read_only, crypto(), path.clone())
        .and_then(|f| f.guarded_by(&journal))
        .err();
    assert!(refused.is_some(), "opened with the older contents");
    assert_eq!(journal.carried_files(), 1, "the commit waits");
    let reopened = EncryptedFile::open(open_rw(&path, false), crypto(), path.clone())
        .and_then(|f| f.guarded_by(&journal))
        .expect("recover");
    let mut got = Vec::new();
    reopened.read_to_end(&mut got).expect("read");
    let mut expected = durable;
    expected[4096..8192].copy_from_slice(&page);
    assert_eq!(got, expected);
}

// Protects: a commit replaced by a newer one of the same block is cleared
// durably before the newer one is (one more journal sync in the file's
// next sync of its own); otherwise a crash while both clearings were on
// their way could keep only the older, which recovery would write over
// the newer contents.
#[test]
fn a_replaced_commit_is_cleared_durably_first() {
    let syncs_of_own_sync = |replace: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, file, path) = synced_file(dir.path(), &record(23, 5 * 4096));
        file.write_at(4096, &record(24, 4096)).expect("rewrite");
        file.sync(false).expect("commit");
        let other = if replace { 4096 } else { 2 * 4096 };
        file.write_at(other, &record(25, 4096)).expect("rewrite");
        file.sync(false).expect("commit");
        // A change that makes the next sync the file's own without a
        // journal sync of its own (an append would copy the old end).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let syncs = journal.syncs();
        file.sync(false).expect("fsync");
        assert_eq!(Journal::pending_commits(dir.path()).expect("pending"), 0);
        journal.syncs() - syncs
    };
    assert_eq!(syncs_of_own_sync(true), syncs_of_own_sync(false) + 1);
}
