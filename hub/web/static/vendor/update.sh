#!/usr/bin/env bash
# Vendors Chart.js into this folder from the npm registry (run by hand when upgrading; the
# result is committed, so the hub needs neither npm nor a CDN at run time). The tarball's
# SHA-512 must match the pinned integrity, else nothing is replaced.
set -euo pipefail
VERSION=4.6.1
INTEGRITY="sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g=="
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "chart.js@$VERSION" >/dev/null)
tarball="$work/chart.js-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$INTEGRITY" ]; then
  echo "update.sh: chart.js-$VERSION.tgz has $actual, expected $INTEGRITY; nothing replaced" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/chart.umd.min.js package/LICENSE.md
cp "$work/package/dist/chart.umd.min.js" "$here/chart.umd.min.js"
cp "$work/package/LICENSE.md" "$here/chart.js-LICENSE.md"
echo "chart.js $VERSION ($INTEGRITY) from the npm registry" > "$here/VERSIONS"
