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

[ "$(id -u)" = 0 ] || { echo "run as root (needs to drop caches and mount)"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first"; exit 2; }
for tool in fio gocryptfs securefs python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install fio gocryptfs securefs)"; exit 2; }
done
systems=("$@")
[ ${#systems[@]} -gt 0 ] || systems=(plain chronicle gocryptfs securefs)

WORK=$(mktemp -d /var/tmp/chronicle-bench.XXXXXX)
MNT=$WORK/mnt
CIPHER=$WORK/cipher
cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && { umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
  fuse_uring_restore
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
TAR=$(bench_tarball)
fuse_uring_for_run

export CHRONICLE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PASS=benchmark-password

setup() {
  rm -rf "$CIPHER" "$MNT"; mkdir -p "$CIPHER" "$MNT"
  case $1 in
    plain) MNT=$CIPHER ;;
    chronicle) "$BIN" init "$CIPHER" >/dev/null && "$BIN" mount "$CIPHER" "$MNT" ${CHRONICLE_MOUNT_ARGS:-} ;;
    chronicle-nowb) "$BIN" init "$CIPHER" >/dev/null && "$BIN" mount "$CIPHER" "$MNT" --no-writeback-cache ;;
    gocryptfs) gocryptfs -q -init -extpass "echo $PASS" -scryptn 10 "$CIPHER" >/dev/null &&
               gocryptfs -q -extpass "echo $PASS" "$CIPHER" "$MNT" ;;
    securefs) securefs create --pass "$PASS" --rounds 1 "$CIPHER" >/dev/null &&
              securefs mount -b --pass "$PASS" "$CIPHER" "$MNT" >/dev/null 2>&1 && sleep 1 ;;
  esac
}

teardown() {
  if [ "$MNT" != "$CIPHER" ]; then
    umount "$MNT" 2>/dev/null || umount -l "$MNT"
    sleep 0.5
  fi
  MNT=$WORK/mnt
}

now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
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
  drop; t0=$(now)
  dd if=/dev/zero of="$MNT/big" bs=1M count=1024 conv=fsync status=none
  t1=$(now); result[$fs,write]=$(rate $((1024 * 1048576 / 1000000)) "$t0" "$t1")
  drop; t0=$(now)
  dd if="$MNT/big" of=/dev/null bs=1M status=none
  t1=$(now); result[$fs,read]=$(rate $((1024 * 1048576 / 1000000)) "$t0" "$t1")
  rm -f "$MNT/big"
  drop; t0=$(now)
  mkdir "$MNT/src" && tar -xf "$TAR" -C "$MNT/src" && sync
  t1=$(now); result[$fs,untar]=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
  rm -rf "$MNT/src"
  fio --name=prep --filename="$MNT/fio" --size=256M --rw=write --bs=1M --end_fsync=1 >/dev/null
  drop
  result[$fs,randread]=$(fio_iops --name=rr --filename="$MNT/fio" --size=256M --rw=randread --bs=4k --ioengine=psync --runtime=20 --time_based)
  result[$fs,randwrite]=$(fio_iops --name=rw --filename="$MNT/fio" --size=256M --rw=randwrite --bs=4k --ioengine=psync --runtime=20 --time_based --end_fsync=1)
  rm -f "$MNT/fio"
  # The removal's and earlier steps' write-back (and the discards of freed
  # extents, on a disk mounted with discard) settle first, for every
  # file system alike: the fsync loop measures one flush per write.
  drop
  result[$fs,fsync]=$(fio_iops --name=wal --filename="$MNT/wal" --size=64M --rw=write --bs=4k --ioengine=psync --fsync=1 --runtime=10 --time_based)
  rm -f "$MNT/wal"
  result[$fs,append]=$(fio_iops --name=append --filename="$MNT/append" --size=32M --rw=write --bs=128 --ioengine=psync --end_fsync=1)
  rm -f "$MNT/append"
  teardown
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
