#!/usr/bin/env bash
# One-command install of birdd as a systemd service on Raspberry Pi OS, Debian, Ubuntu and
# JetPack: the Debian packages, the system user birdd, a virtualenv under /opt/birdd with the
# engine extra for this board, the BirdNET model in /var/lib/birdd, /etc/birdd/config.yaml
# from the reference config.yaml (never overwritten) and the unit, enabled and started.
# Run it again to update (it says what is already in place); --uninstall undoes it but keeps
# /var/lib/birdd and /etc/birdd unless --purge. docs/deployment.md explains each step.
#
#   sudo bash deploy/install.sh                 # from a checkout of the repository
#   sudo bash deploy/install.sh --dry-run       # print the plan, change nothing
#
# --root DIR (or $BIRDD_INSTALL_ROOT) installs into DIR instead of / (the tests' throwaway root):
# the board is detected from DIR's files, the user goes into DIR/etc/passwd, the unit is enabled
# with `systemctl --root` and nothing is started. Debian packages are checked on this machine
# and not installed there (apt cannot install into a bare directory).
set -Eeuo pipefail # -E: the ERR trap below also reports a failure inside a function

PROG=birdd-install
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${BIRDD_INSTALL_ROOT:-}
PREFIX=/opt/birdd ACTION=install PURGE=0 DRY_RUN=0 FROM="" ENGINE=auto PYTHON=""
USER_NAME=birdd STATE=/var/lib/birdd CONFIG=/etc/birdd/config.yaml
UNIT=/etc/systemd/system/birdd.service SYSUSERS=/etc/sysusers.d/birdd.conf LINK=/usr/local/bin/birdd
SYSTEMD_ROOT=() SHADOW_ROOT=() # with --root: --root=DIR for systemd's tools, --prefix DIR for useradd

say() { printf '%s: %s\n' "$PROG" "$*"; }
# fail CODE MESSAGE: one line on stderr, exit CODE (2: bad usage or input, 1: a step failed).
fail() { printf '%s: error: %s\n' "$PROG" "${*:2}" >&2 && exit "$1"; }
trap 'fail 1 "line $LINENO: \`$BASH_COMMAND\` failed (exit $?); the output above says why"' ERR

usage() {
  cat <<'EOF'
usage: deploy/install.sh [--from PATH|SPEC] [--engine auto|tflite|onnx|tensorrt]
                         [--python PATH] [--prefix DIR] [--root DIR] [--dry-run]
       deploy/install.sh --uninstall [--purge] [--root DIR] [--dry-run]

  --from PATH|SPEC  what to pip install: a source tree, a wheel, or a pip requirement
                    (birdd==0.1.0, git+https://...); default: the tree this script is in
  --engine E        the engine extra; auto: tensorrt on a Jetson, else tflite
  --python PATH     interpreter for the virtualenv (default /usr/bin/python3)
  --prefix DIR      the virtualenv (default /opt/birdd; not under /home)
  --root DIR        install into DIR instead of / (tests; also $BIRDD_INSTALL_ROOT)
  --dry-run         print the plan and change nothing
  --uninstall       remove the unit, the virtualenv and the user; keep data and config
  --purge           with --uninstall: also delete /var/lib/birdd and /etc/birdd
EOF
}

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --from | --engine | --python | --prefix | --root)
        [ $# -ge 2 ] || fail 2 "$1 needs a value (deploy/install.sh --help)"
        case $1 in
          --from) FROM=$2 ;;
          --engine) ENGINE=$2 ;;
          --python) PYTHON=$2 ;;
          --prefix) PREFIX=$2 ;;
          --root) ROOT=$2 ;;
        esac
        shift 2
        ;;
      --dry-run) DRY_RUN=1 && shift ;;
      --uninstall) ACTION=uninstall && shift ;;
      --purge) PURGE=1 && shift ;;
      -h | --help) usage && exit 0 ;;
      *) fail 2 "unknown option '$1' (deploy/install.sh --help lists them)" ;;
    esac
  done
  case $ENGINE in auto | tflite | onnx | tensorrt) ;; *)
    fail 2 "--engine '$ENGINE' is not one of auto, tflite, onnx, tensorrt" ;;
  esac
  case $PREFIX in /home/* | /root/*)
    fail 2 "--prefix $PREFIX: the unit's ProtectHome=yes hides it from the service; use /opt or /srv" ;;
  /?*) ;; *) fail 2 "--prefix '$PREFIX' must be an absolute path other than /" ;;
  esac
  [ "$PURGE" -eq 0 ] || [ "$ACTION" = uninstall ] || fail 2 "--purge goes with --uninstall"
  if [ -d "$FROM" ]; then
    [ -f "$FROM/setup.cfg" ] || fail 2 "--from $FROM: no setup.cfg there, not a birdd source tree"
  elif [[ ! -e $FROM && ($FROM == /* || $FROM == ./* || $FROM == ../*) ]]; then
    fail 2 "--from $FROM: no such file or directory"
  fi
  [ -z "$PYTHON" ] || [ -x "$PYTHON" ] || fail 2 "--python $PYTHON: no such interpreter"
  if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || fail 2 "--root $ROOT is not a directory: create it first"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
  fi
  if [ -n "$ROOT" ]; then SYSTEMD_ROOT=(--root="$ROOT") SHADOW_ROOT=(--prefix "$ROOT"); fi
  [ "$DRY_RUN" -eq 1 ] || [ "$(id -u)" -eq 0 ] || fail 2 "run as root (sudo bash deploy/install.sh ...)"
}

# act DESCRIPTION COMMAND...: run a changing step, or only print it with --dry-run.
act() {
  local what=$1
  shift
  if [ "$DRY_RUN" -eq 1 ]; then
    say "would $what"
    return 0
  fi
  say "$what"
  "$@" || fail 1 "could not $what (\`$*\` failed; its output is above)"
}

user_field() { # user_field N: field N of the birdd line in the root's passwd, empty if none
  [ -f "$ROOT/etc/passwd" ] || return 0
  awk -F: -v u="$USER_NAME" -v f="$1" '$1 == u { print $f }' "$ROOT/etc/passwd" 2>/dev/null
}

in_group() { # in_group GROUP USER: whether USER is listed in GROUP in the root's group file
  awk -F: -v g="$1" -v u="$2" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++)
    if (m[i] == u) found = 1 } END { exit !found }' "$ROOT/etc/group" 2>/dev/null
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# --- the board ------------------------------------------------------------------------------
detect_board() {
  ARCH=$(uname -m)
  # shellcheck source=/dev/null
  OS_NAME=$( (. "$ROOT/etc/os-release" && printf '%s' "${PRETTY_NAME:-$ID}") 2>/dev/null || echo unknown)
  BOARD=generic
  BOARD_DESC="$OS_NAME on $ARCH"
  if [ -f "$ROOT/etc/nv_tegra_release" ]; then
    BOARD=jetson
    local l4t major jetpack
    l4t=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' nvidia-l4t-core 2>/dev/null \
      | cut -d- -f1) || l4t=""
    [ -n "$l4t" ] || l4t=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' \
      "$ROOT/etc/nv_tegra_release" | head -n 1)
    major=${l4t%%.*}
    case $major in 32) jetpack=4 ;; 34 | 35) jetpack=5 ;; 36) jetpack=6 ;; *) jetpack=unknown ;; esac
    BOARD_DESC="Jetson, L4T ${l4t:-unknown} (JetPack $jetpack), $OS_NAME"
  elif grep -qa "Raspberry Pi" "$ROOT/proc/device-tree/model" 2>/dev/null; then
    BOARD=pi
    BOARD_DESC="$(tr -d '\0' <"$ROOT/proc/device-tree/model"), $OS_NAME, $ARCH"
  fi
  say "board: $BOARD_DESC"
}

py_version() { # py_version PYTHON: its major.minor ("3.11"), empty when it does not run
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

choose_python() { # after the Debian packages: a minimal system has no python3 before them
  if [ -z "$PYTHON" ]; then
    PYTHON=/usr/bin/python3
    [ -x "$PYTHON" ] || PYTHON=$(command -v python3) || PYTHON=""
  fi
  if [ -z "$PYTHON" ] && [ "$DRY_RUN" -eq 1 ]; then
    PYTHON=/usr/bin/python3 PY_VERSION="(python3 once installed)"
    return
  fi
  [ -n "$PYTHON" ] || fail 1 "no python3 after the Debian packages: apt-get install python3"
  PY_VERSION=$(py_version "$PYTHON")
  [ -n "$PY_VERSION" ] || fail 2 "$PYTHON does not run: give a Python 3.8+ interpreter (--python)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || fail 1 "Python $PY_VERSION at $PYTHON is too old: birdd needs 3.8 or later"
}

choose_engine() {
  local why
  if [ "$ENGINE" = auto ]; then
    case $BOARD/$ARCH in
      jetson/*) ENGINE=tensorrt why="a Jetson: TensorRT on its GPU (the config starts on TFLite on the CPU until an ONNX model is there: docs/deployment.md)" ;;
      pi/*) ENGINE=tflite why="a Raspberry Pi: TFLite on the CPU (birdd's default engine; no GPU to use)" ;;
      */x86_64) ENGINE=tflite why="x86_64 without a GPU: TFLite is faster live than ONNX Runtime (13.7 vs 16.5 ms per window, docs/benchmarks.md) and needs no model conversion; --engine onnx for a GPU" ;;
      *) ENGINE=tflite why="$ARCH: TFLite on the CPU" ;;
    esac
  else
    why="chosen with --engine"
  fi
  say "engine: $ENGINE: $why"
}

# The pip extras: live (sound devices) always, the engine's, and tflite-runtime where
# ai-edge-litert has no wheel (Python 3.8, 32-bit ARM) so that the default config still runs.
choose_extras() {
  local why=""
  EXTRAS=live
  if [ "$ENGINE" != tflite ]; then EXTRAS="$EXTRAS,$ENGINE"; fi
  if [ "$ARCH" = armv7l ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    EXTRAS="$EXTRAS,tflite-runtime"
    why=": tflite-runtime because ai-edge-litert has no wheel for Python $PY_VERSION on $ARCH"
  fi
  say "pip extras [$EXTRAS] for Python $PY_VERSION$why"
}

# --- the steps ------------------------------------------------------------------------------
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

ensure_packages() {
  command -v dpkg-query >/dev/null \
    || fail 1 "no dpkg: this installer is for Debian, Ubuntu, Raspberry Pi OS and JetPack; elsewhere follow deploy/systemd/README.md"
  local wanted=(python3 python3-venv libportaudio2 libsndfile1 ffmpeg ca-certificates) missing=() p
  [ "$ENGINE" != tensorrt ] || wanted+=(python3-dev build-essential) # pycuda is built on the board
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: already installed (${wanted[*]})"
  elif [ -n "$ROOT" ] && [ "$DRY_RUN" -eq 0 ]; then
    fail 1 "missing Debian packages here: ${missing[*]} (--root installs none): apt-get install ${missing[*]}"
  else
    act "install Debian packages: ${missing[*]}" apt_install "${missing[@]}"
  fi
}

# install_file SRC DEST MODE: copy SRC to DEST in the root unless it has the same content there.
install_file() {
  if cmp -s "$1" "$ROOT$2"; then
    say "already up to date: $2"
  else
    act "$([ -e "$ROOT$2" ] && echo update || echo install) $2" install -D -m "$3" "$1" "$ROOT$2"
  fi
}

ensure_user() {
  install_file "$SRC_DIR/deploy/systemd/birdd.sysusers" "$SYSUSERS" 0644
  if [ -n "$(user_field 1)" ]; then
    say "user $USER_NAME: already exists (uid $(user_field 3))"
  elif command -v systemd-sysusers >/dev/null; then
    act "create the system user $USER_NAME in group audio (systemd-sysusers)" \
      systemd-sysusers "${SYSTEMD_ROOT[@]}" "$ROOT$SYSUSERS"
  else
    grep -q '^audio:' "$ROOT/etc/group" \
      || act "create the group audio" groupadd "${SHADOW_ROOT[@]}" --system audio
    act "create the system user $USER_NAME (useradd)" useradd "${SHADOW_ROOT[@]}" --system \
      --user-group --groups audio --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  fi
  if [ "$DRY_RUN" -eq 0 ] && ! in_group audio "$USER_NAME"; then
    act "add $USER_NAME to the group audio" usermod "${SHADOW_ROOT[@]}" -a -G audio "$USER_NAME"
  fi
}

venv_ok() { # the virtualenv exists and runs on the Python it would be made with now
  [ -x "$ROOT$PREFIX/bin/python" ] && [ "$(py_version "$ROOT$PREFIX/bin/python")" = "$PY_VERSION" ]
}

ensure_venv() {
  local venv=$ROOT$PREFIX args=()
  # A Jetson's TensorRT bindings are the JetPack's (python3-libnvinfer), in the system Python.
  [ "$BOARD" != jetson ] || args+=(--system-site-packages)
  if venv_ok; then
    say "virtualenv $PREFIX: already there (Python $PY_VERSION)"
    return
  fi
  if [ -e "$venv" ]; then
    [ -f "$venv/pyvenv.cfg" ] || fail 1 "$venv exists and is not a virtualenv: move it away or pick --prefix"
    act "remove $PREFIX: its Python is gone or not $PY_VERSION (an OS upgrade?)" rm -rf "$venv"
  fi
  act "create the virtualenv $PREFIX (Python $PY_VERSION)" "$PYTHON" -m venv "${args[@]}" "$venv"
}

pip_spec() { # SPEC: what pip installs, the source tree or wheel with the extras, or the requirement
  local from=${FROM:-$SRC_DIR}
  if [ -d "$from" ]; then
    SPEC="$(cd "$from" && pwd)[$EXTRAS]"
  elif [ -f "$from" ]; then
    SPEC="$(cd "$(dirname "$from")" && pwd)/$(basename "$from")[$EXTRAS]"
  elif [[ $from =~ ^birdd([^[:alnum:]_.-].*)?$ && $from != *"["* ]]; then
    SPEC="birdd[$EXTRAS]${from#birdd}"
  else
    SPEC="birdd[$EXTRAS] @ $from"
  fi
}

make_link() { mkdir -p "$(dirname "$ROOT$LINK")" && ln -s "$PREFIX/bin/birdd" "$ROOT$LINK"; }

ensure_birdd() {
  local spec=$SPEC before
  # pycuda (the tensorrt extra) is compiled on a Jetson with the JetPack's nvcc.
  if [ "$BOARD" = jetson ] && [ -d /usr/local/cuda/bin ]; then PATH=/usr/local/cuda/bin:$PATH; fi
  before=$("$ROOT$PREFIX/bin/birdd" --version 2>/dev/null || true)
  [ -z "$before" ] || say "installed now: $before; pip updates it to what --from names"
  act "pip install '$spec' into $PREFIX" "$ROOT$PREFIX/bin/python" -m pip install -q \
    --disable-pip-version-check "$spec"
  [ "$DRY_RUN" -eq 1 ] || say "birdd in $PREFIX: $("$ROOT$PREFIX/bin/birdd" --version)"
  if [ -L "$ROOT$LINK" ] && [ "$(readlink "$ROOT$LINK")" = "$PREFIX/bin/birdd" ]; then
    say "already linked: $LINK -> $PREFIX/bin/birdd"
  elif [ -e "$ROOT$LINK" ] || [ -L "$ROOT$LINK" ]; then
    say "left alone: $LINK is another birdd; the unit runs $PREFIX/bin/birdd, use that path"
  else
    act "link $LINK -> $PREFIX/bin/birdd (birdd on root's PATH)" make_link
  fi
}

as_birdd() { # as_birdd COMMAND...: run as the service's user, with its data dir
  setpriv --reuid="$(user_field 3)" --regid="$(user_field 4)" --clear-groups \
    env HOME="$ROOT$STATE" BIRDD_DATA_DIR="$ROOT$STATE" PIP_NO_CACHE_DIR=1 "$@"
}

ensure_model() {
  local owner
  if [ ! -d "$ROOT$STATE" ]; then
    act "create $STATE (the service's state: models, birdd.sqlite)" \
      install -d -m 0750 -o "$(user_field 3)" -g "$(user_field 4)" "$ROOT$STATE"
  else
    owner=$(stat -c %u "$ROOT$STATE")
    if [ "$owner" != "$(user_field 3)" ]; then
      act "give $STATE (kept from an earlier install, owner uid $owner) to $USER_NAME" \
        chown -R "$(user_field 3):$(user_field 4)" "$ROOT$STATE"
    else
      say "already there: $STATE"
    fi
  fi
  # birdd's own installer: says "already installed" when the model is there.
  act "install the BirdNET V2.4 model into $STATE/models as $USER_NAME" \
    as_birdd "$ROOT$PREFIX/bin/birdd" models install birdnet
}

station_id() { # this machine's name, as a valid station.id
  local name
  name=$(cat "$ROOT/etc/hostname" 2>/dev/null || uname -n)
  name=$(printf '%s' "${name%%.*}" | tr -c 'A-Za-z0-9_.-' '_')
  printf '%s' "${name:-birdd}"
}

ensure_config() {
  local reference=$SRC_DIR/config.yaml tmp
  if [ -e "$ROOT$CONFIG" ]; then
    say "config: $CONFIG already exists, kept as it is (the reference: $reference)"
  else
    [ -f "$reference" ] || fail 1 "no reference config at $reference: run the script from a birdd checkout"
    tmp=$(mktemp)
    sed "0,/^  id: birdd /s//  id: $(station_id) /" "$reference" >"$tmp"
    act "install $CONFIG from the reference config.yaml, station.id $(station_id)" \
      install -D -m 0644 "$tmp" "$ROOT$CONFIG"
    rm -f "$tmp"
  fi
  [ "$DRY_RUN" -eq 1 ] || "$ROOT$PREFIX/bin/birdd" check-config "$ROOT$CONFIG" >/dev/null \
    || fail 1 "$CONFIG is not valid for this birdd: fix the key named above (birdd check-config $CONFIG)"
}

ensure_unit() {
  local tmp
  tmp=$(mktemp)
  sed "s#^ExecStart=/usr/local/bin/birdd #ExecStart=$PREFIX/bin/birdd #" \
    "$SRC_DIR/deploy/systemd/birdd.service" >"$tmp"
  grep -q "^ExecStart=$PREFIX/bin/birdd run " "$tmp" \
    || fail 1 "deploy/systemd/birdd.service has no 'ExecStart=/usr/local/bin/birdd run' line to point at $PREFIX"
  install_file "$tmp" "$UNIT" 0644
  rm -f "$tmp"
}

start_service() {
  local start="sudo -u $USER_NAME env BIRDD_DATA_DIR=$STATE $PREFIX/bin/birdd run --config $CONFIG"
  if ! command -v systemctl >/dev/null; then
    say "no systemctl here: the unit is installed but not enabled; by hand: $start"
  elif [ -n "$ROOT" ]; then
    act "enable birdd.service in $ROOT (systemctl --root; nothing is started there)" \
      systemctl --quiet --root="$ROOT" enable birdd.service
  elif ! systemd_running; then
    act "enable birdd.service for the next boot" systemctl --quiet enable birdd.service
    say "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)): not started; by hand: $start"
  elif systemctl --quiet is-active birdd.service; then
    act "reload systemd's units" systemctl daemon-reload
    act "enable birdd.service" systemctl --quiet enable birdd.service
    say "birdd.service is already running; to run what was just installed: systemctl restart birdd"
  else
    act "reload systemd's units" systemctl daemon-reload
    act "enable and start birdd.service" systemctl --quiet enable --now birdd.service
  fi
  [ "$BOARD" != jetson ] || say "Jetson GPU: the unit needs the drop-in in deploy/systemd/README.md (\"A GPU\")"
  say "done: edit $CONFIG (audio.inputs, mqtt), then systemctl reload birdd; check with: $PREFIX/bin/birdd doctor --config $CONFIG"
}

install_all() {
  detect_board
  choose_engine
  ensure_packages
  choose_python
  choose_extras
  pip_spec
  ensure_user
  ensure_venv
  ensure_birdd
  ensure_model
  ensure_config
  ensure_unit
  start_service
}

# --- uninstall ------------------------------------------------------------------------------
uninstall_all() {
  if [ -e "$ROOT$UNIT" ]; then
    if ! command -v systemctl >/dev/null; then
      act "remove the unit's link in multi-user.target.wants (no systemctl here)" \
        rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/birdd.service"
    elif systemd_running; then
      act "stop and disable birdd.service" systemctl --quiet disable --now birdd.service
    else
      act "disable birdd.service" systemctl --quiet "${SYSTEMD_ROOT[@]}" disable birdd.service
    fi
    act "remove $UNIT" rm -f "$ROOT$UNIT"
    ! systemd_running || act "reload systemd's units" systemctl daemon-reload
  else
    say "already gone: $UNIT"
  fi
  if [ -L "$ROOT$LINK" ] && [ "$(readlink "$ROOT$LINK")" = "$PREFIX/bin/birdd" ]; then
    act "remove the link $LINK" rm -f "$ROOT$LINK"
  fi
  if [ -f "$ROOT$PREFIX/pyvenv.cfg" ]; then
    act "remove the virtualenv $PREFIX" rm -rf "$ROOT$PREFIX"
  elif [ -e "$ROOT$PREFIX" ]; then
    fail 1 "$ROOT$PREFIX is not a virtualenv (no pyvenv.cfg): not removing it"
  else
    say "already gone: $PREFIX"
  fi
  [ ! -e "$ROOT$SYSUSERS" ] || act "remove $SYSUSERS" rm -f "$ROOT$SYSUSERS"
  if [ -n "$(user_field 1)" ]; then
    act "remove the user $USER_NAME" userdel "${SHADOW_ROOT[@]}" "$USER_NAME"
  else
    say "already gone: user $USER_NAME"
  fi
  # userdel drops the group only where login.defs says USERGROUPS_ENAB yes.
  if grep -q "^$USER_NAME:" "$ROOT/etc/group" 2>/dev/null; then
    act "remove the group $USER_NAME" groupdel "${SHADOW_ROOT[@]}" "$USER_NAME"
  fi
  if [ "$PURGE" -eq 1 ]; then
    act "delete $STATE (models, database) and /etc/birdd" rm -rf "$ROOT$STATE" "$ROOT/etc/birdd"
  else
    say "kept: $STATE (models, database) and /etc/birdd (config); --uninstall --purge deletes them"
  fi
}

parse_args "$@"
[ -z "$ROOT" ] || say "installing into the root $ROOT"
[ "$DRY_RUN" -eq 0 ] || say "dry run: nothing is changed"
if [ "$ACTION" = install ]; then install_all; else uninstall_all; fi
