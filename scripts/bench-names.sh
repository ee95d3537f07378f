#!/usr/bin/env bash
# bench-names.sh [ROUNDS]
#
# The metadata-heavy steps of the standard benchmark on the same build with
# encrypted names (the default) and with --plaintext-names, in one run,
# alternating, best of ROUNDS (default 3): untar the 10,000-file tree,
# `ls -lR` it and `rm -rf` it, caches dropped before each step, every
# backing store on a 3 GiB tmpfs. Needs root and /dev/fuse; the tarball is
# built once from linux-source-6.1 as in bench-mount.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
ROUNDS=${1:-3}
TAR=${BENCH_TAR:-/var/tmp/chronicle-bench-linux-10k.tar}
[ -f "$TAR" ] || { echo "no $TAR: run scripts/bench-format.sh or bench-mount.sh once to build it"; exit 2; }
work_dir names 3g
trap work_cleanup EXIT
random_key
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
best() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:] if x]; print(f'{min(v):.2f}')" "$@"; }
declare -A t
for round in $(seq "$ROUNDS"); do
  for mode in encrypted plaintext; do
    rm -rf "${STORE:?}"/*
    flag=(); [ $mode = plaintext ] && flag=(--plaintext-names)
    "$BIN" init "$STORE/b" "${flag[@]}" >/dev/null
    "$BIN" mount "$STORE/b" "$MNT"
    drop_caches; t0=$(now); mkdir "$MNT/src" && tar -xf "$TAR" -C "$MNT/src" && sync; t1=$(now)
    t[$mode,untar]="${t[$mode,untar]:-} $(secs "$t0" "$t1")"
    drop_caches; t0=$(now); ls -lR "$MNT/src" > /dev/null; t1=$(now)
    t[$mode,ls]="${t[$mode,ls]:-} $(secs "$t0" "$t1")"
    drop_caches; t0=$(now); rm -rf "$MNT/src"; sync; t1=$(now)
    t[$mode,rm]="${t[$mode,rm]:-} $(secs "$t0" "$t1")"
    umount "$MNT"; sleep 0.5
    echo "round $round $mode: untar${t[$mode,untar]##* } ls${t[$mode,ls]##* } rm${t[$mode,rm]##* }" >&2
  done
done
echo "| step (seconds, best of $ROUNDS) | plaintext names | encrypted names | encrypted / plaintext |"
echo "|---|---:|---:|---:|"
for step in untar ls rm; do
  p=$(best ${t[plaintext,$step]}); e=$(best ${t[encrypted,$step]})
  echo "| $step | $p | $e | $(python3 -c "print(f'{$e / $p:.3f}')") |"
done
