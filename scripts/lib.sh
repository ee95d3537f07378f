# lib.sh: what the benchmark scripts share. Source it; needs root for the
# mounts. Defines:
#   bench_tarball          prints the path of the 10,000-file source tree
#                          tarball, building it once from linux-source-6.1
#   tmpfs_dir SIZE         a new directory on its own size-limited tmpfs
#   drop_tmpfs DIR         unmounts and removes it
#   fs_mount FS CIPHER MNT mounts plain|chronicle|gocryptfs|securefs with
#                          its backing store in CIPHER at MNT (plain: MNT is
#                          used as is); CHRONICLE_BIN is the chronicle binary,
#                          CHRONICLE_MOUNT_ARGS extra `chronicle mount` flags
#   fs_unmount FS MNT
#   need_root WHY          exits with a message unless run as root
#   random_key             exports a random CHRONICLE_ENCRYPTION_KEY
#   now                    the time in seconds, to the nanosecond
#   drop_caches            writes back, then drops the kernel's caches
#   work_dir NAME [SIZE]   a new WORK directory in /var/tmp (this machine's
#                          disk) with MNT=$WORK/mnt and STORE=$WORK/store,
#                          STORE on its own tmpfs of SIZE when given;
#                          work_cleanup unmounts both and removes WORK
#                          (the caller traps EXIT with it)

BENCH_PASS=benchmark-password

need_root() {
  [ "$(id -u)" = 0 ] || { echo "run as root ($1)" >&2; exit 2; }
}

random_key() {
  CHRONICLE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export CHRONICLE_ENCRYPTION_KEY
}

now() { date +%s.%N; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

work_dir() {
  WORK=$(mktemp -d "/var/tmp/chronicle-$1.XXXXXX")
  MNT=$WORK/mnt
  STORE=$WORK/store
  mkdir -p "$MNT" "$STORE"
  [ -z "${2:-}" ] || mount -t tmpfs -o "size=$2" tmpfs "$STORE"
}

work_cleanup() {
  [ -n "${WORK:-}" ] || return 0
  mountpoint -q "$MNT" 2>/dev/null && { umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
  mountpoint -q "$STORE" 2>/dev/null && umount -l "$STORE"
  rm -rf "$WORK"
}

bench_tarball() {
  local tar=${BENCH_TAR:-/var/tmp/chronicle-bench-linux-10k.tar}
  if [ ! -f "$tar" ]; then
    local src=/usr/src/linux-source-6.1.tar.xz tmp
    [ -f "$src" ] || { echo "no $tar and no $src (apt-get install linux-source-6.1)" >&2; return 2; }
    echo "building $tar from $src ..." >&2
    tmp=$(mktemp -d /var/tmp/linux.XXXXXX)
    tar -xJf "$src" -C "$tmp" linux-source-6.1/drivers linux-source-6.1/fs
    # (head would end the pipeline early, which pipefail counts as a failure)
    (cd "$tmp" && find linux-source-6.1 -type f | sort > all && head -10000 all > list && tar -cf "$tar" -T list)
    rm -rf "$tmp"
  fi
  echo "$tar"
}

tmpfs_dir() {
  local dir
  dir=$(mktemp -d /var/tmp/chronicle-tmpfs.XXXXXX)
  mount -t tmpfs -o "size=$1" tmpfs "$dir"
  echo "$dir"
}

drop_tmpfs() {
  umount "$1" 2>/dev/null || umount -l "$1"
  rmdir "$1"
}

fs_mount() {
  local fs=$1 cipher=$2 mnt=$3
  mkdir -p "$cipher" "$mnt"
  case $fs in
    plain) ;;
    chronicle)
      # shellcheck disable=SC2086 # flags split on purpose
      "$CHRONICLE_BIN" init "$cipher" >/dev/null &&
        "$CHRONICLE_BIN" mount "$cipher" "$mnt" ${CHRONICLE_MOUNT_ARGS:-} ;;
    gocryptfs)
      gocryptfs -q -init -extpass "echo $BENCH_PASS" -scryptn 10 "$cipher" >/dev/null &&
        gocryptfs -q -extpass "echo $BENCH_PASS" "$cipher" "$mnt" ;;
    securefs)
      securefs create --pass "$BENCH_PASS" --rounds 1 "$cipher" >/dev/null &&
        securefs mount -b --pass "$BENCH_PASS" "$cipher" "$mnt" >/dev/null 2>&1 &&
        for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done ;;
    *) echo "unknown file system $fs" >&2; return 2 ;;
  esac
}

fs_unmount() {
  [ "$1" = plain ] && return 0
  umount "$2" 2>/dev/null || umount -l "$2"
  sleep 0.5
}

# fuse_uring_for_run: turns on the kernel's FUSE over io_uring and mounts
# Chronicle with --io-uring (each request served on the caller's CPU; the
# peers do not use it). fuse_uring_restore puts the switch back (call it on
# exit). FUSE_URING=off measures Chronicle through /dev/fuse.
fuse_uring_for_run() {
  local knob=/sys/module/fuse/parameters/enable_uring
  [ "${FUSE_URING:-on}" = off ] && return 0
  [ -w "$knob" ] || { echo "note: no $knob; Chronicle serves through /dev/fuse" >&2; return 0; }
  FUSE_URING_WAS=$(cat "$knob")
  echo Y > "$knob"
  CHRONICLE_MOUNT_ARGS="${CHRONICLE_MOUNT_ARGS:-} --io-uring"
}
fuse_uring_restore() {
  [ -n "${FUSE_URING_WAS:-}" ] && echo "$FUSE_URING_WAS" > /sys/module/fuse/parameters/enable_uring
  return 0
}
