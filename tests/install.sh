#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine with Python >= 3.8:
# the Debian packages the tests drive, birdd with its dev extras, and the BirdNET V2.4 model.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages that tests drive for real (a broker, ffmpeg, PortAudio, the browser the hub's
# dashboard tests run: Playwright drives /usr/bin/chromium, no 'playwright install') are listed here.
# python3-venv, libsndfile1, shellcheck: deploy/install.sh checks for the first two, its test lints it.
DEBIAN_PACKAGES=(mosquitto openssl pulseaudio pulseaudio-utils libasound2-plugins libportaudio2
  ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  systemd libseccomp2 postgresql chromium python3-venv libsndfile1 shellcheck)
missing=()
for package in ${DEBIAN_PACKAGES[@]+"${DEBIAN_PACKAGES[@]}"}; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The training extra needs torch: pin the CPU build first (here from the local wheel
# directory), else resolving the extra pulls torch's multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[dev,training,hub,ray,metrics,pyav,parquet]'
python3 -m birdd.daemon models install birdnet
# The README's demo recording (opensoundscape's birds_10s.wav, MIT) from its PyPI wheel.
python3 -m birdd.daemon models install demo
# One-off: BirdNET as ONNX for the ONNX Runtime engine (tf2onnx in a throwaway virtualenv,
# about 2 minutes the first time; nothing happens when it is already converted).
python3 -m birdd.daemon models convert birdnet --to onnx
