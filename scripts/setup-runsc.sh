#!/usr/bin/env bash
# Installs a current gVisor runsc for the `gvisor` runtime class (docs/gvisor.md). Idempotent: when a recent
# enough runsc is installed it only checks its version.
#   Debian 13 (trixie) and later: the distribution's own `runsc` is recent enough.
#   Debian 12 (bookworm): its `runsc` is from 2022 (no systrap platform, statx() failing coreutils, sandboxes it
#   cannot save), so runsc alone is taken from bookworm-backports, pinned: every other package keeps coming from
#   bookworm.
set -euo pipefail

say() { printf '\033[1mmoat setup:\033[0m %s\n' "$*" >&2; }

# The oldest release Moat's gvisor driver supports (GvisorDriver.check() refuses older ones with the same date).
min=20240729

# `runsc version 0.0~20240729.0` (Debian) or `runsc version release-20240729.0` (upstream builds).
release() { runsc --version 2>/dev/null | sed -n 's/^runsc version [^0-9]*\(0\.0~\)\{0,1\}\([0-9]\{8\}\).*/\2/p' | head -n1; }

have=$(release || true)
if [ -n "$have" ] && [ "$have" -ge "$min" ]; then exit 0; fi

. /etc/os-release
case "${VERSION_CODENAME:-}" in
  bookworm)
    if ! grep -rqsE --include='*.list' --include='*.sources' '^[^#]*bookworm-backports' /etc/apt/; then
      say "adding bookworm-backports to apt's sources (only runsc is taken from it)"
      cat >/etc/apt/sources.list.d/moat-bookworm-backports.sources <<'EOF'
# Added by Moat's scripts/setup-runsc.sh for gVisor's runsc; /etc/apt/preferences.d/moat-runsc keeps every other
# package on bookworm.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    # Backports keeps priority 100 (never chosen over bookworm's 500, not even for a dependency) for everything but
    # runsc, which gets bookworm's priority and so wins by its newer version.
    cat >/etc/apt/preferences.d/moat-runsc <<'EOF'
# Added by Moat's scripts/setup-runsc.sh: gVisor's runsc, and only it, comes from bookworm-backports.
Package: runsc
Pin: release n=bookworm-backports
Pin-Priority: 500

Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100
EOF
    ;;
esac

say "installing gVisor's runsc ${have:+(replacing $have) }(apt)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runsc >/dev/null

have=$(release || true)
if [ -z "$have" ] || [ "$have" -lt "$min" ]; then
  say "runsc ${have:-(none)} is older than $min, the oldest the gvisor runtime class supports: install a newer runsc (docs/gvisor.md)"
  exit 1
fi
say "runsc $have installed"
