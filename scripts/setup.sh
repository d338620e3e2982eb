#!/usr/bin/env bash
# Installs what Moat needs on Debian 12 and builds it. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

say() { printf '\033[1mmoat setup:\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "Moat manages namespaces, cgroups and mounts, so it runs as root: re-run with sudo."
  exit 1
fi

# Host packages: the OCI runtimes (runc, gVisor's runsc), bubblewrap (a baseline of the density bench), the image builder, disks for sandbox limits, sandbox networks
# (namespaces, veths, the nftables firewall), a C toolchain for moat-init; curl for the network tests;
# for microVMs: QEMU, busybox-static, crun (the sandbox inside the guest) and cpio for the guest's initramfs, socat for the agent relay, kmod to
# resolve the guest kernel's modules (the kernel itself is downloaded by apt on first use, not installed);
# zstd and util-linux's fsfreeze for volume backups;
# chromium (headless) and a font for the web portal's browser tests; postgresql's server binaries for the tests of
# the shared database (each starts a throwaway cluster of its own); python3-venv for the Python tests' virtualenv.
packages=(runc crun criu bubblewrap buildah skopeo umoci docker-registry apache2-utils attr uidmap qemu-system-x86 busybox-static cpio socat kmod mmdebstrap debian-archive-keyring e2fsprogs mount util-linux zstd tar ca-certificates iproute2 nftables gcc make libc6-dev curl chromium fonts-liberation postgresql python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/setup-runsc.sh # gVisor's runsc: a newer one than Debian 12's own (from bookworm-backports there)

bash scripts/setup-criu.sh # CRIU for runc's hibernate: built, as no packaged one can save a sandbox on these kernels

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci; compiles better-sqlite3 the first time, about a minute)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The published E2B SDKs the compatibility tests drive (pinned there, apart from the root workspace).
if [ ! -f test/e2b/node_modules/.package-lock.json ] || [ test/e2b/package-lock.json -nt test/e2b/node_modules/.package-lock.json ]; then
  say "installing the e2b SDKs for test/e2b (npm ci)"
  npm ci --prefix test/e2b --no-audit --no-fund --loglevel=error
fi

# agent-sandbox's Python client and pytest for test/python (pinned in its requirements.txt), in a virtualenv of
# their own; made again from scratch when the requirements change (a copy of them in the venv tells).
venv=test/python/.venv
if ! cmp -s test/python/requirements.txt "$venv/requirements.txt" || ! "$venv/bin/python" -c '' 2>/dev/null; then
  say "installing the Python test dependencies into $venv (pip)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r test/python/requirements.txt
  cp test/python/requirements.txt "$venv/requirements.txt"
fi

say "building"
make -s -C packages/agent
node_modules/.bin/tsc -b
npm run --silent build -w @moat/portal >/dev/null # the web portal the server serves at /

# `moat` on PATH for root's shells, unless something else owns that name.
if [ -d /usr/local/bin ] && { [ ! -e /usr/local/bin/moat ] || [ -L /usr/local/bin/moat ]; }; then
  ln -sfn "$PWD/bin/moat" /usr/local/bin/moat
fi

if [ "${1:-}" = "--images" ]; then
  node packages/cli/dist/main.js images prepare base
  node packages/cli/dist/main.js images prepare code-interpreter
fi
