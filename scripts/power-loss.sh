#!/usr/bin/env bash
# power-loss.sh [RUNS] [SEED]
#
# Simulated power loss under BACKING, at RUNS random crash points per
# workload (default 50): fsynced appends, fsynced rewrites of a
# preallocated file (commits to the journal), the same with unsynced
# writes over the committed pages, rewrites written in place
# before their fsync (copies in the journal), file creation with fsync of the
# file and its directory, renames made durable with fsyncdir, the bundled
# engine with sync=always, and SQLite in WAL mode. The backing store sits on
# tests/power_loss/powercut.rs, which drops or tears (at 512-byte sectors)
# every write not yet synced and undoes uncommitted name changes; after each
# cut the volume must mount, pass fsck (after --repair of torn tails at
# most), and hold everything acknowledged. Runs on a 2 GiB tmpfs; prints one
# POWERCUT line per workload (record them in docs/RELIABILITY.md).
# Needs root and /dev/fuse.
set -euo pipefail
RUNS=${1:-50}
SEED=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /var/tmp/chronicle-powercut.XXXXXX)
mount -t tmpfs -o size=2g tmpfs "$WORK"
trap 'umount -l "$WORK"; rmdir "$WORK"' EXIT
command -v sqlite3 >/dev/null || { echo "power-loss.sh needs sqlite3 (apt-get install sqlite3)" >&2; exit 1; }
echo "power loss: $RUNS crash points per workload, seed $SEED, on $WORK"
cargo build --release --quiet --tests
POWERCUT_RUNS=$RUNS POWERCUT_SEED=$SEED POWERCUT_TMP=$WORK CHRONICLE_REQUIRE_FUSE=1 \
  cargo test --release --quiet --test power_loss -- --nocapture --test-threads 1 2>&1 |
  grep -E '^POWERCUT|panicked|lost after|^test result|FAILED' 
