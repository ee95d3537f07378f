#!/usr/bin/env bash
# bench-mount.sh [FS...]
#
# Measures the same workloads on a plain directory, a chronicle mount, a
# gocryptfs mount and a securefs mount (or only the FS names given: plain,
# chronicle, gocryptfs, securefs), all on the same backing disk, and prints a
# Markdown table. Needs root, /dev/fuse, fio, gocryptfs and securefs
# (apt-get install fio gocryptfs securefs) and a release build
# (chronicle-nowb: chronicle mounted with --no-writeback-cache)
# (cargo build --release). CHRONICLE_BIN overrides the binary,
# BENCH_TAR a tarball of a source tree for the untar workload (default: the
# first 10,000 files of linux-source-6.1's drivers/ and fs/, built once).
# Turns on the kernel's FUSE over io_uring for the run and mounts Chronicle
# with --io-uring (FUSE_URING=off: Chronicle through /dev/fuse).
#
# Workloads:
#   write     1 GiB sequential, 1 MiB writes, fsync at the end     MB/s
#   read      the same file after dropping caches                   MB/s
#   untar     extract the tarball, then sync                        seconds
#   randread  fio 4 KiB random reads of a 256 MiB file, 20 s        IOPS (caches dropped)
#   randwrite fio 4 KiB random writes, 20 s, fsync at end           IOPS
#   fsync     fio 4 KiB sequential writes, fsync after each, 10 s   IOPS (a WAL)
#   append    fio 128-byte sequential writes, 32 MiB, fsync at end   IOPS (small appends)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to drop caches and mount"
CHRONICLE_BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
[ -x "$CHRONICLE_BIN" ] || { echo "no $CHRONICLE_BIN: cargo build --release first"; exit 2; }
for tool in fio gocryptfs securefs python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install fio gocryptfs securefs)"; exit 2; }
done
systems=("$@")
[ ${#systems[@]} -gt 0 ] || systems=(plain chronicle gocryptfs securefs)

# Every store on this machine's disk (WORK is in /var/tmp).
work_dir bench
trap 'work_cleanup; fuse_uring_restore' EXIT
TAR=$(bench_tarball)
fuse_uring_for_run
random_key

setup() {
  rm -rf "$STORE" "$MNT"
  case $1 in
    chronicle-nowb)
      CHRONICLE_MOUNT_ARGS="${CHRONICLE_MOUNT_ARGS:-} --no-writeback-cache" fs_mount chronicle "$STORE" "$MNT" ;;
    *) fs_mount "$1" "$STORE" "$MNT" ;;
  esac
}

teardown() { fs_unmount "${1%-nowb}" "$MNT"; }

rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" "$@"; }
fio_iops() {
  fio --output-format=json "$@" | python3 -c '
import json,sys
j=json.load(sys.stdin)["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]))'
}

declare -A result
for fs in "${systems[@]}"; do
  echo "== $fs" >&2
  setup "$fs"
  drop_caches; t0=$(now)
  dd if=/dev/zero of="$MNT/big" bs=1M count=1024 conv=fsync status=none
  t1=$(now); result[$fs,write]=$(rate $((1024 * 1048576 / 1000000)) "$t0" "$t1")
  drop_caches; t0=$(now)
  dd if="$MNT/big" of=/dev/null bs=1M status=none
  t1=$(now); result[$fs,read]=$(rate $((1024 * 1048576 / 1000000)) "$t0" "$t1")
  rm -f "$MNT/big"
  drop_caches; t0=$(now)
  mkdir "$MNT/src" && tar -xf "$TAR" -C "$MNT/src" && sync
  t1=$(now); result[$fs,untar]=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
  rm -rf "$MNT/src"
  fio --name=prep --filename="$MNT/fio" --size=256M --rw=write --bs=1M --end_fsync=1 >/dev/null
  drop_caches
  result[$fs,randread]=$(fio_iops --name=rr --filename="$MNT/fio" --size=256M --rw=randread --bs=4k --ioengine=psync --runtime=20 --time_based)
  result[$fs,randwrite]=$(fio_iops --name=rw --filename="$MNT/fio" --size=256M --rw=randwrite --bs=4k --ioengine=psync --runtime=20 --time_based --end_fsync=1)
  rm -f "$MNT/fio"
  # The removal's and earlier steps' write-back (and the discards of freed
  # extents, on a disk mounted with discard) settle first, for every
  # file system alike: the fsync loop measures one flush per write.
  drop_caches
  result[$fs,fsync]=$(fio_iops --name=wal --filename="$MNT/wal" --size=64M --rw=write --bs=4k --ioengine=psync --fsync=1 --runtime=10 --time_based)
  rm -f "$MNT/wal"
  result[$fs,append]=$(fio_iops --name=append --filename="$MNT/append" --size=32M --rw=write --bs=128 --ioengine=psync --end_fsync=1)
  rm -f "$MNT/append"
  teardown "$fs"
done

echo
echo "| workload | $(IFS='|'; echo "${systems[*]}" | sed 's/|/ | /g') |"
echo "|---|$(for _ in "${systems[@]}"; do printf -- '---:|'; done)"
for w in "write MB/s:write" "read MB/s:read" "untar 10k files, s:untar" "4K randread IOPS:randread" "4K randwrite IOPS:randwrite" "4K write+fsync IOPS:fsync" "128 B append IOPS:append"; do
  label=${w%%:*}; key=${w##*:}
  printf '| %s |' "$label"
  for fs in "${systems[@]}"; do printf ' %s |' "${result[$fs,$key]}"; done
  echo
done
