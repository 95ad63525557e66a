#!/usr/bin/env bash
# deploy/install.sh on the Raspberry Pi's architecture, emulated: a Debian bookworm arm64 root
# (the base of 64-bit Raspberry Pi OS) made by debootstrap, entered with chroot under
# qemu-user-static, where the installer runs at / exactly as on a board (apt-get, the user,
# the virtualenv with aarch64 wheels from PyPI, the model, the config, the unit). Then the
# XC563936 soundscape goes through the installed birdd as user birdd and through this
# machine's birdd, and the detections are compared. Results: docs/deployment.md.
#
#   sudo bash bench/arm64.sh [WORKDIR]        # default /var/tmp/birdd-arm64; ~1.5 GB there
#
# Needs root, the network (deb.debian.org, PyPI), birdd and its model installed on this
# machine (tests/install.sh), and ../shared/audio (or $BIRDD_TEST_AUDIO). It registers
# qemu-aarch64 with binfmt_misc (mounting it first where needed); the root is kept for reruns.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-/var/tmp/birdd-arm64}
ROOT=$WORK/root
AUDIO=${BIRDD_TEST_AUDIO:-$REPO/../shared/audio}/soundscapes/XC563936_soundscape.mp3
MIRROR=http://deb.debian.org/debian

step() { printf '%s arm64: %s\n' "$(date +%T)" "$*"; }
fail() { printf 'arm64: error: %s\n' "$*" >&2 && exit 2; }

[ "$(id -u)" -eq 0 ] || fail "run as root (sudo bash bench/arm64.sh)"
[ -f "$AUDIO" ] || fail "$AUDIO is missing: set BIRDD_TEST_AUDIO to the shared audio folder"
if ! command -v debootstrap >/dev/null || [ ! -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
  step "apt-get install debootstrap qemu-user-static"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap qemu-user-static
fi
binfmt=/proc/sys/fs/binfmt_misc
[ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt
[ -e $binfmt/qemu-aarch64 ] || grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >$binfmt/register

if [ ! -x "$ROOT/usr/bin/systemctl" ]; then
  step "debootstrap bookworm arm64 (minbase + systemd) into $ROOT"
  debootstrap --arch=arm64 --variant=minbase --include=systemd,ca-certificates bookworm "$ROOT" "$MIRROR"
fi

# The committed tree, as a clone on the board would have it.
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src/birdd"
git -C "$REPO" archive HEAD | tar -x -C "$ROOT/src/birdd"
cp "$AUDIO" "$ROOT/src/soundscape.mp3"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# This machine's own CAs (here: the egress proxy's), so that pip in the root reaches PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi

# In the chroot: /proc, /sys and /dev in a private mount namespace (gone when it ends).
# shellcheck disable=SC2016 # expanded inside the chroot
INSIDE='
set -euo pipefail
echo "arm64: inside: $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME")"
update-ca-certificates >/dev/null
SECONDS=0
bash /src/birdd/deploy/install.sh
echo "arm64: install took $SECONDS s"
bash /src/birdd/deploy/install.sh >/src/second-run.txt 2>&1
echo "arm64: second run: $(grep -c already /src/second-run.txt) lines say already"
# ai-edge-litert 2.3.0 (what pip picks) segfaults creating any interpreter under the Debian 12
# qemu-user 7.2, whatever QEMU_CPU says; 1.4.0 runs there. On a real Pi: not known here.
/opt/birdd/bin/python -m pip install -q --disable-pip-version-check "ai-edge-litert==1.4.0"
cp /src/soundscape.mp3 /var/lib/birdd/soundscape.mp3
cd /var/lib/birdd
SECONDS=0
runuser -u birdd -- env BIRDD_DATA_DIR=/var/lib/birdd birdd --simulate soundscape.mp3 \
  --config /etc/birdd/config.yaml --format jsonl --db bench.sqlite >/src/arm64.jsonl
echo "arm64: simulate took $SECONDS s for 72 s of audio"
'
step "deploy/install.sh inside the arm64 root"
# shellcheck disable=SC2016 # $1 and $2 are the inner shell's
unshare -m bash -c 'mount -t proc proc "$1/proc" && mount --rbind /sys "$1/sys" &&
  mount --rbind /dev "$1/dev" && exec chroot "$1" /usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 bash -c "$2"' sh "$ROOT" "$INSIDE"

step "the same soundscape through this machine's birdd ($(uname -m))"
python3 -m birdd.daemon --simulate "$ROOT/src/soundscape.mp3" --format jsonl \
  --db "$WORK/x86.sqlite" >"$WORK/x86.jsonl"
python3 - "$ROOT/src/arm64.jsonl" "$WORK/x86.jsonl" <<'EOF'
import json
import sys

arm, x86 = ([json.loads(line) for line in open(path) if line.strip()] for path in sys.argv[1:])
key = lambda row: (row["offset_start"], row["offset_end"], row["species"]["scientific"])
same = [key(a) == key(b) for a, b in zip(arm, x86)]
delta = max((abs(a["confidence"] - b["confidence"]) for a, b in zip(arm, x86)), default=0.0)
print(f"arm64: {len(arm)} detections on arm64, {len(x86)} on x86_64, {sum(same)} identical in "
      f"time and species, max |delta confidence| {delta:.1e}")
sys.exit(0 if len(arm) == len(x86) == sum(same) else 1)
EOF
