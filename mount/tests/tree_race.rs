//! The tree walk that fsck, inspect, encrypt and re-encryption use cannot
//! be redirected: entries swapped for symlinks or other files between the
//! listing and the open (here, from inside the walk, at the worst moment)
//! are refused, and nothing outside the tree is ever read.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use chronicle_mount::tree::{self, Root, Visit, Visitor};
use rustix::fs::{FileType, OFlags};

/// A change made to the tree from inside the walk.
type Swap = Box<dyn FnOnce(&Path)>;

/// Records what it read; runs `swap` once, when it reaches `trigger`.
struct Racer {
    root: PathBuf,
    trigger: &'static str,
    swap: Option<Swap>,
    read: Vec<(PathBuf, Vec<u8>)>,
}

impl Visitor for Racer {
    fn entry(&mut self, visit: &Visit) -> io::Result<()> {
        if visit.relative == Path::new(self.trigger) {
            if let Some(swap) = self.swap.take() {
                swap(&self.root);
            }
        }
        if visit.kind() == FileType::RegularFile {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut visit.open(OFlags::RDONLY)?, &mut bytes)?;
            self.read.push((visit.relative.to_path_buf(), bytes));
        }
        Ok(())
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tree");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("b_dir")).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(root.join("a_file"), b"inside a").expect("write");
    fs::write(root.join("b_dir/inner"), b"inside b").expect("write");
    fs::write(root.join("c_file"), b"inside c").expect("write");
    fs::write(outside.join("secret"), b"OUTSIDE").expect("write");
    (dir, root, outside)
}

fn run(
    root: &Path,
    trigger: &'static str,
    swap: impl FnOnce(&Path) + 'static,
) -> (io::Result<()>, Vec<(PathBuf, Vec<u8>)>) {
    let mut racer = Racer {
        root: root.to_path_buf(),
        trigger,
        swap: Some(Box::new(swap)),
        read: Vec::new(),
    };
    let result = tree::walk(root, Root::Plain, &mut racer);
    (result, racer.read)
}

fn read_outside(read: &[(PathBuf, Vec<u8>)]) -> bool {
    read.iter().any(|(_, bytes)| bytes == b"OUTSIDE")
}

// Protects: a directory replaced by a symlink to outside the tree after it
// was listed is not entered.
#[test]
fn directory_swapped_for_a_symlink_is_refused() {
    let (_dir, root, outside) = setup();
    // Swapped after the walk examined b_dir, before it opens it.
    let (result, read) = run(&root, "b_dir", move |root| {
        fs::rename(root.join("b_dir"), root.join("b_moved")).expect("move");
        symlink(&outside, root.join("b_dir")).expect("symlink");
    });
    assert!(
        result.is_err(),
        "walking into a swapped directory must fail"
    );
    assert!(!read_outside(&read), "read outside the tree: {read:?}");
}

// Protects: a file replaced by a symlink to outside the tree between its
// listing and its open is refused (O_NOFOLLOW), never read.
#[test]
fn file_swapped_for_a_symlink_is_refused() {
    let (_dir, root, outside) = setup();
    let (result, read) = run(&root, "c_file", move |root| {
        fs::remove_file(root.join("c_file")).expect("rm");
        symlink(outside.join("secret"), root.join("c_file")).expect("symlink");
    });
    assert!(result.is_err());
    assert!(!read_outside(&read), "read outside the tree: {read:?}");
}

// Protects: a file replaced by another file (a hard link to something
// outside, or any other file) after it was listed is refused: the walk
// opens only what it listed.
#[test]
fn file_swapped_for_another_file_is_refused() {
    let (_dir, root, outside) = setup();
    let (result, read) = run(&root, "c_file", move |root| {
        fs::remove_file(root.join("c_file")).expect("rm");
        fs::hard_link(outside.join("secret"), root.join("c_file")).expect("link");
    });
    let err = result.expect_err("a swapped file must be refused");
    assert!(err.to_string().contains("replaced"), "{err}");
    assert!(!read_outside(&read), "read outside the tree: {read:?}");
}

// Protects: a symlink already in the tree is reported as a symlink and
// never followed; the walk reads only the tree's own files.
#[test]
fn planted_symlinks_are_not_followed() {
    let (_dir, root, outside) = setup();
    symlink(&outside, root.join("d_link_dir")).expect("symlink");
    symlink(outside.join("secret"), root.join("e_link_file")).expect("symlink");
    let (result, read) = run(&root, "none", |_| {});
    result.expect("walk");
    assert!(!read_outside(&read));
    let names: Vec<_> = read.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        names,
        vec![
            PathBuf::from("a_file"),
            PathBuf::from("b_dir/inner"),
            PathBuf::from("c_file")
        ]
    );
}
