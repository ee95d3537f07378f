#!/usr/bin/env bash
# churn-rss.sh [FILES]: resident memory of the chronicle mount process over
# a churn of FILES files (default 1,000,000) created, written, closed and
# deleted through the mount, 10,000 at a time, with encrypted names. The
# kernel's caches are dropped after each batch so it forgets the deleted
# inodes; if the mount released its nodes and handles, RSS stays flat.
# Needs root, /dev/fuse and a release build. BACKING is on a 1 GiB tmpfs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
FILES=${1:-1000000}
W=$(mktemp -d /var/tmp/chronicle-churn.XXXXXX)
cleanup() {
    mountpoint -q "$W/m" && umount -l "$W/m"
    mountpoint -q "$W/store" && umount -l "$W/store"
    rm -rf "$W"
}
trap cleanup EXIT
export CHRONICLE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$W/m" "$W/store"
mount -t tmpfs -o size=1g tmpfs "$W/store"
"$BIN" init "$W/store/b" >/dev/null
"$BIN" mount "$W/store/b" "$W/m"
pid=$(pgrep -n -f "chronicle mount $W/store/b")
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }
echo "files churned  RSS KiB  descriptors"
echo "0  $(rss)  $(fds)"
python3 - "$W/m" "$FILES" "$pid" <<'EOF'
import os, sys
root, total, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
batch = 10_000
d = os.path.join(root, "churn")
os.mkdir(d)
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return line.split()[1]
done = 0
while done < total:
    names = [os.path.join(d, f"file-{done + i:07d}") for i in range(batch)]
    for n in names:
        with open(n, "wb") as f:
            f.write(b"x" * 100)
    for n in names:
        os.unlink(n)
    done += batch
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    if done % 100_000 == 0:
        print(f"{done}  {rss()}  {len(os.listdir(f'/proc/{pid}/fd'))}", flush=True)
EOF
"$BIN" umount "$W/m"
