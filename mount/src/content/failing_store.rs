//! The double-write journal's promises when the backing store fails in the
//! middle of keeping them (`crate::faults` makes one call fail): what a
//! program was told is durable stays so, and nothing the failure left
//! behind is ever put back over newer contents.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::{ContentCrypto, EncryptedFile};
use crate::cipher::Backend;
use crate::faults::{disarm, fail_nth, Point};
use crate::journal::{Journal, JOURNAL_NAME};
use crate::keys::SecretKey;
use crate::layout::{self, BLOCK_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;

fn crypto() -> Arc<ContentCrypto> {
    Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([7; 32]),
        Backend::Ring,
    ))
}

/// The file at `path` (made anew if `create`), guarded by `journal`.
fn guarded(path: &Path, create: bool, journal: &Arc<Journal>) -> EncryptedFile {
    try_guarded(path, create, journal).expect("guarded file")
}

fn try_guarded(path: &Path, create: bool, journal: &Arc<Journal>) -> crate::Result<EncryptedFile> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(path)
        .expect("open backing file");
    let content = match create {
        true => EncryptedFile::create(file, crypto(), path.to_path_buf()),
        false => EncryptedFile::open(file, crypto(), path.to_path_buf()),
    };
    content.and_then(|c| c.guarded_by(journal))
}

/// Reads the whole of `file`, failing on any error.
fn contents(file: &EncryptedFile, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len + 1];
    let n = file.read_at(0, &mut buf).expect("read");
    buf.truncate(n);
    buf
}

/// A new session on the backing directory `dir` (the journal as the disk
/// holds it) reads the file `f` (recovered) as `expected`.
fn next_session_reads(dir: &Path, expected: &[u8]) {
    let journal = Arc::new(Journal::open(dir).expect("journal"));
    let file = guarded(&dir.join("f"), false, &journal);
    assert_eq!(contents(&file, expected.len()), expected);
}

/// Three durable blocks of `1`s, synced.
fn synced_file(dir: &Path) -> (Arc<Journal>, EncryptedFile, Vec<u8>) {
    let journal = Arc::new(Journal::open(dir).expect("journal"));
    let file = guarded(&dir.join("f"), true, &journal);
    let durable = vec![1u8; 3 * BLOCK];
    file.write_at(0, &durable).expect("write");
    file.sync(true).expect("sync");
    (journal, file, durable)
}

// Protects: a copy whose clearing failed is never put back over the newer
// block it guarded, and the journal is not relied on again this session.
#[test]
fn a_copy_that_cannot_be_cleared_never_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, mut expected) = synced_file(dir.path());
    // A rewrite of a durable block, written in place (a read writes what
    // is held), after its original was copied to the journal.
    expected[..BLOCK].fill(2);
    file.write_at(0, &expected[..BLOCK]).expect("rewrite");
    assert_eq!(contents(&file, expected.len()), expected);
    assert_eq!(journal.live(), 1, "the original's copy");
    fail_nth(Point::JournalClear, 1);
    file.sync(true).expect("the sync's own data is durable");
    assert!(!disarm(), "the copy's clearing was tried and failed");
    // What needs the journal is refused from now on; nothing is lost.
    assert!(file.write_at(0, &[3u8; BLOCK]).is_err(), "held rewrite");
    assert!(
        file.set_len(BLOCK as u64).is_err(),
        "shrink of durable blocks"
    );
    assert_eq!(contents(&file, expected.len()), expected);
    drop(file);
    drop(journal);
    // The next session finds the stale copy of the original beside an
    // authentic newer block: the newer block stands.
    next_session_reads(dir.path(), &expected);
}

// Protects: a shrink that failed after its cut (its header not written)
// leaves a committed block as the file's last; the commit cannot stand
// for a last block, so its next rewrite is copied first, and a crash that
// tears that rewrite reads the block as it was before it.
#[test]
fn a_shrink_that_fails_after_its_cut_keeps_the_new_last_block_guarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, mut expected) = synced_file(dir.path());
    // Block 0 rewritten and synced by a commit (held rewrites were all
    // that changed since the file's sync).
    expected[..BLOCK].fill(2);
    file.write_at(0, &expected[..BLOCK]).expect("rewrite");
    file.sync(true).expect("sync by commit");
    assert_eq!(Journal::pending_commits(dir.path()).expect("count"), 1);
    // The shrink writes its header twice, before its cut and after it.
    fail_nth(Point::HeaderWrite, 2);
    assert!(file.set_len(100).is_err(), "the header after the cut fails");
    assert!(!disarm());
    expected.truncate(100);
    assert_eq!(contents(&file, BLOCK), expected, "the cut stands");
    let before = fs::read(dir.path().join("f")).expect("backing");
    let live = journal.live();
    expected[..3].copy_from_slice(b"new");
    file.write_at(0, b"new").expect("rewrite of the last block");
    assert_eq!(journal.live(), live + 1, "the last block was copied first");
    assert_eq!(contents(&file, BLOCK), expected);
    let after = fs::read(dir.path().join("f")).expect("backing");
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
    drop(file);
    drop(journal);
    // A power cut tore that rewrite: the block's first half is new, the
    // rest as before.
    assert_eq!(before.len(), after.len());
    let start = layout::block_offset(0) as usize;
    let mid = start + (after.len() - start) / 2;
    let mut torn = after.clone();
    torn[mid..].copy_from_slice(&before[mid..]);
    let crashed = tempfile::tempdir().expect("tempdir");
    fs::write(crashed.path().join("f"), &torn).expect("torn file");
    fs::write(crashed.path().join(JOURNAL_NAME), &journal_bytes).expect("journal");
    // Torn in its middle, the block cannot authenticate: its copy goes back.
    next_session_reads(crashed.path(), &[2u8; 100]);
}

/// A file of three durable blocks whose block 1 was rewritten and synced
/// by a commit, still held: its backing file as a power cut would find it
/// (the rewrite not in place), and the rewritten contents.
fn committed_rewrite(dir: &Path) -> (Arc<Journal>, EncryptedFile, Vec<u8>, Vec<u8>) {
    let (journal, file, mut expected) = synced_file(dir);
    expected[BLOCK..2 * BLOCK].fill(2);
    file.write_at(BLOCK as u64, &expected[BLOCK..2 * BLOCK])
        .expect("rewrite");
    file.sync(true).expect("sync by commit");
    let at_the_cut = fs::read(dir.join("f")).expect("backing");
    (journal, file, at_the_cut, expected)
}

/// The next session after a power cut that left `at_the_cut`: the
/// commit still in the journal brings the synced rewrite back.
fn after_a_power_cut(dir: &Path, at_the_cut: &[u8], expected: &[u8]) {
    fs::write(dir.join("f"), at_the_cut).expect("state at the cut");
    assert!(Journal::pending_commits(dir).expect("count") >= 1);
    next_session_reads(dir, expected);
}

// Protects: a file let go after its final sync failed keeps its records
// for the next mount, and is not opened again this session: recovering
// now would release them on the word of a sync on a new descriptor, which
// Linux does not tell of the write-back it lost.
#[test]
fn a_file_whose_final_sync_failed_keeps_its_records_for_the_next_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, at_the_cut, expected) = committed_rewrite(dir.path());
    fail_nth(Point::BackingSync, 1);
    drop(file);
    assert!(!disarm(), "the final sync failed");
    refused_while_records_wait(dir.path(), &journal);
    drop(journal);
    after_a_power_cut(dir.path(), &at_the_cut, &expected);
}

/// Opening the file `f` under `dir` fails, twice, with the error that
/// says what to do.
fn refused_until_remount(dir: &Path, journal: &Arc<Journal>) {
    for _ in 0..2 {
        let Err(e) = try_guarded(&dir.join("f"), false, journal) else {
            panic!("opened again before the next mount");
        };
        assert!(e.to_string().contains("remount the volume"), "{e}");
    }
}

/// `refused_until_remount`, and the file's records stay in `journal`.
fn refused_while_records_wait(dir: &Path, journal: &Arc<Journal>) {
    refused_until_remount(dir, journal);
    assert_eq!(journal.carried_files(), 1, "its records still wait");
}

// Protects: a recovery whose own sync fails is remembered as a failed
// sync of the file: the next opening does not recover again and release
// the records on a sync of a new descriptor.
#[test]
fn a_recovery_whose_sync_fails_is_not_tried_again_this_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, at_the_cut, expected) = committed_rewrite(dir.path());
    let journal_bytes = fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
    drop(file);
    drop(journal);
    // The power cut, then a session whose recovery of the file fails at
    // its sync.
    let crashed = tempfile::tempdir().expect("tempdir");
    fs::write(crashed.path().join("f"), &at_the_cut).expect("state at the cut");
    fs::write(crashed.path().join(JOURNAL_NAME), &journal_bytes).expect("journal");
    let journal = Arc::new(Journal::open(crashed.path()).expect("journal"));
    fail_nth(Point::BackingSync, 1);
    assert!(try_guarded(&crashed.path().join("f"), false, &journal).is_err());
    assert!(!disarm(), "the recovery's sync failed");
    refused_while_records_wait(crashed.path(), &journal);
    drop(journal);
    after_a_power_cut(crashed.path(), &at_the_cut, &expected);
}

// Protects: a file whose sync failed sets no sparse flag for a hole it
// cannot make durable (the flag would let an all-zero block read as a
// hole rather than fail authentication).
#[test]
fn a_file_whose_sync_failed_changes_nothing_for_a_refused_hole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_journal, file, _) = synced_file(dir.path());
    file.write_at(3 * BLOCK as u64, b"appended").expect("write");
    fail_nth(Point::BackingSync, 1);
    assert!(file.sync(true).is_err());
    let backing = fs::read(dir.path().join("f")).expect("backing");
    assert!(file.punch_hole(BLOCK as u64, BLOCK as u64).is_err());
    assert!(file.write_at(1000 * BLOCK as u64, b"far").is_err());
    assert_eq!(fs::read(dir.path().join("f")).expect("backing"), backing);
}

// Protects: a file let go with commits it could neither write out nor
// hand back to the journal (their headers cannot be read back) is not
// opened again this session (it would show contents older than its
// commits, and a later write could be overwritten by them at the next
// mount); the commits left on disk bring the synced rewrite back.
#[test]
fn commits_that_cannot_be_handed_on_wait_on_disk_with_their_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, at_the_cut, expected) = committed_rewrite(dir.path());
    fail_nth(Point::BlocksWrite, 1);
    fail_nth(Point::JournalRead, 1);
    drop(file);
    assert!(
        !disarm(),
        "the held rewrite's writing and the hand-on failed"
    );
    refused_until_remount(dir.path(), &journal);
    drop(journal);
    after_a_power_cut(dir.path(), &at_the_cut, &expected);
}

// Protects: a journal going idle after a burst that cannot be cut back
// clears the records past what it keeps instead, so that no copy of an
// original outlives the sync that released it.
#[test]
fn a_journal_that_cannot_be_cut_back_clears_what_it_would_have_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Arc::new(Journal::open(dir.path()).expect("journal"));
    let file = guarded(&dir.path().join("f"), true, &journal);
    // More copies than an idle journal keeps slots for (2,048).
    let blocks = 2_100;
    let mut expected = vec![1u8; blocks * BLOCK];
    file.write_at(0, &expected).expect("write");
    file.sync(true).expect("sync");
    expected.fill(2);
    file.write_at(0, &expected).expect("rewrite");
    assert_eq!(contents(&file, expected.len()), expected);
    assert!(
        journal.live() >= blocks as u64 - 1,
        "a copy of each original"
    );
    fail_nth(Point::JournalCut, 1);
    file.sync(true).expect("sync");
    assert!(!disarm(), "the cut was tried and failed");
    drop(file);
    drop(journal);
    let journal = Journal::open(dir.path()).expect("journal");
    assert_eq!(journal.carried_files(), 0, "no released copy is left");
}

// Protects: a commit whose clearing failed is written back over its block
// by the next session's recovery, so nothing may change that block after
// the failure: every later write that would is refused.
#[test]
fn a_commit_that_cannot_be_cleared_is_never_written_back_over_newer_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, file, mut expected) = synced_file(dir.path());
    expected[..BLOCK].fill(2);
    file.write_at(0, &expected[..BLOCK]).expect("rewrite");
    file.sync(true).expect("sync by commit");
    // Written in place (a read writes what is held), then the file's own
    // sync releases the commit durably, and its clearing fails: so does
    // the sync.
    assert_eq!(contents(&file, expected.len()), expected);
    fail_nth(Point::JournalClear, 1);
    assert!(file.sync(true).is_err(), "the clearing is part of the sync");
    assert!(!disarm(), "the commit's clearing was tried and failed");
    let backing = fs::read(dir.path().join("f")).expect("backing");
    assert!(file.write_at(10, b"partial").is_err(), "partial rewrite");
    assert!(file.write_at(0, &[3u8; BLOCK]).is_err(), "whole rewrite");
    assert!(file.set_len(0).is_err(), "emptied");
    assert!(file.punch_hole(0, BLOCK as u64).is_err(), "punched");
    // Far enough to leave a hole, not a run of sealed zeros.
    let far = 1000 * BLOCK as u64;
    assert!(file.write_at(far, b"far").is_err(), "grown with a hole");
    assert_eq!(
        fs::read(dir.path().join("f")).expect("backing"),
        backing,
        "a refused change leaves the backing file as it was (no sparse flag)"
    );
    assert_eq!(contents(&file, expected.len()), expected);
    drop(file);
    drop(journal);
    next_session_reads(dir.path(), &expected);
}
