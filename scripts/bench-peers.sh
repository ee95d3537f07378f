#!/usr/bin/env bash
# bench-peers.sh [ROUNDS]
#
# The standard six-step benchmark (../shared/bench/six-step.sh: write and
# read a 262 MB file, untar 10,000 files of a source tree, md5 every file,
# ls -lR, rm -rf) on plain tmpfs, Chronicle (encrypted names, the default),
# gocryptfs and securefs, in one run, ROUNDS rounds (default 2, at least 2)
# with the file systems alternating, best of each column kept. Every backing
# store is on its own 3 GiB tmpfs, so the layer is measured, not the disk.
# Prints each round's lines, the best of each, and Chronicle's ratio to the
# best peer per column (above 1: Chronicle ahead; for times, the peer's time
# over Chronicle's). Installs gocryptfs, securefs and linux-source-6.1 from
# Debian when missing. Turns on the kernel's FUSE over io_uring for the run
# and mounts Chronicle with --io-uring (FUSE_URING=off: Chronicle through
# /dev/fuse). Needs root and /dev/fuse; scripts/bench-mount.sh has the fio
# workloads.
set -euo pipefail
ROUNDS=${1:-2}
[ "$ROUNDS" -ge 2 ] || ROUNDS=2
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
CHRONICLE_BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
[ -x "$CHRONICLE_BIN" ] || { echo "no $CHRONICLE_BIN: cargo build --release first"; exit 2; }
SIX=${SIX_STEP:-$here/../shared/bench/six-step.sh}
[ -f "$SIX" ] || { echo "no six-step benchmark at $SIX (set SIX_STEP)"; exit 2; }
missing=()
command -v gocryptfs >/dev/null || missing+=(gocryptfs)
command -v securefs >/dev/null || missing+=(securefs)
command -v bc >/dev/null || missing+=(bc)
[ -f /usr/src/linux-source-6.1.tar.xz ] || [ -f "${BENCH_TAR:-/var/tmp/chronicle-bench-linux-10k.tar}" ] || missing+=(linux-source-6.1)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
TAR=$(bench_tarball)
fuse_uring_for_run
trap fuse_uring_restore EXIT
random_key
systems=(tmpfs chronicle gocryptfs securefs)
declare -A best
columns=(write read untar md5 ls rm)
for round in $(seq "$ROUNDS"); do
  for fs in "${systems[@]}"; do
    store=$(tmpfs_dir 3g)
    kind=$fs; [ "$fs" = tmpfs ] && kind=plain
    mnt=$store/mnt; [ "$kind" = plain ] && mnt=$store
    fs_mount "$kind" "$store/cipher" "$mnt"
    line=$(bash "$SIX" "$mnt" "$fs" "$TAR")
    fs_unmount "$kind" "$mnt"
    drop_tmpfs "$store"
    echo "round $round: $line"
    # LABEL write W MB/s read R MB/s untar U s md5 M s ls L s rm X s
    read -r _ _ w _ _ r _ _ u _ _ m _ _ l _ _ x _ <<<"$line"
    values=("$w" "$r" "$u" "$m" "$l" "$x")
    for i in "${!columns[@]}"; do
      c=${columns[$i]}; v=${values[$i]}; old=${best[$fs,$c]:-}
      if [ -z "$old" ]; then best[$fs,$c]=$v
      elif [ "$i" -lt 2 ]; then best[$fs,$c]=$(echo "if ($v > $old) $v else $old" | bc -l)
      else best[$fs,$c]=$(echo "if ($v < $old) $v else $old" | bc -l); fi
    done
  done
done
echo
echo "| file system | write MB/s | read MB/s | untar s | md5 s | ls -lR s | rm -rf s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for fs in "${systems[@]}"; do
  printf '| %s |' "$fs"
  for c in "${columns[@]}"; do printf ' %.2f |' "${best[$fs,$c]}"; done
  echo
done
printf '| **chronicle / best peer** |'
for i in "${!columns[@]}"; do
  c=${columns[$i]}; ch=${best[chronicle,$c]}; g=${best[gocryptfs,$c]}; s=${best[securefs,$c]}
  if [ "$i" -lt 2 ]; then
    peer=$(echo "if ($g > $s) $g else $s" | bc -l); ratio=$(echo "$ch / $peer" | bc -l)
  else
    peer=$(echo "if ($g < $s) $g else $s" | bc -l); ratio=$(echo "$peer / $ch" | bc -l)
  fi
  printf ' %.2fx |' "$ratio"
done
echo
echo "(best of $ROUNDS rounds; ratios above 1 mean Chronicle is ahead of the best peer)"
