#!/usr/bin/env bash
# CRIU for the runc runtime class's hibernate (`runc checkpoint` / `runc restore`), built from Debian's source
# archive and installed as /usr/local/sbin/criu, beside dpkg's criu package (left as it is); the runc driver
# prefers it. No packaged CRIU does on Debian 12 or 13 with the kernels these hosts run:
#   - CRIU before 4.1 cannot read the vDSO layout of Linux 6.13 and later (checkpoint-restore/criu#2532): Debian 12's 3.17;
#   - CRIU before 4.2 cannot save an inet socket on Linux 6.16 and later, which refuses SO_PASSSEC on it: Debian 13's 4.1.1;
#   - no release saves a container in a user namespace of its own that joined a network namespace owned by the host's,
#     as a Moat sandbox does (its root must not reconfigure its network): the patch beside this script lets it.
# The build is cached in /var/cache/moat/criu-<version>-<patch>/. Idempotent: a second run only checks.
# `--rebuild` builds again (after a failed or suspect build).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

VERSION=4.2.1 # Debian sid's; its .dsc gives the tarball's hash
SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
TARBALL=criu_$VERSION.orig.tar.xz
URL=http://deb.debian.org/debian/pool/main/c/criu/$TARBALL
PATCH=$PWD/criu-userns-external-netns.patch
DEST=/usr/local/sbin/criu
work=/var/cache/moat/criu-$VERSION-$(sha256sum "$PATCH" | cut -c1-8)
built=$work/criu-$VERSION/criu/criu
rebuild=false
[ "${1:-}" = "--rebuild" ] && rebuild=true

say() { printf '\033[1mmoat setup (criu):\033[0m %s\n' "$*" >&2; }
version_of() { "$1" --version 2>/dev/null | sed -n 's/^Version: //p'; }

if ! $rebuild && [ -x "$built" ] && cmp -s "$built" "$DEST"; then
  say "CRIU $VERSION (patched) at $DEST: up to date"
else
  if $rebuild || [ ! -x "$built" ]; then
    say "building CRIU $VERSION from Debian's source archive (Debian $(cat /etc/debian_version 2>/dev/null); its criu is $(version_of /usr/sbin/criu || true))"
    # What Debian builds criu with, less what only its manual pages and Python packages need.
    say "installing CRIU's build dependencies (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends gcc make \
      pkgconf libc6-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler libnl-3-dev libnet1-dev \
      libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev patch xz-utils curl ca-certificates >/dev/null
    rm -rf "$work"
    mkdir -p "$work"
    say "downloading $URL"
    if ! curl -fsSL -o "$work/$TARBALL" "$URL"; then
      say "error: $TARBALL is no longer in Debian's archive: set VERSION and SHA256 in $0 to the criu of Debian sid (apt-cache showsrc criu)"
      exit 1
    fi
    echo "$SHA256  $work/$TARBALL" | sha256sum --check --quiet
    tar -xf "$work/$TARBALL" -C "$work"
    patch -d "$work/criu-$VERSION" -p1 --quiet <"$PATCH"
    say "compiling with $(nproc) jobs (about 2 minutes on 2 cores); log: $work/build.log"
    start=$SECONDS
    # Each linked part is a line of progress; the full output is in the log.
    if ! make -C "$work/criu-$VERSION" -j"$(nproc)" criu 2>&1 | tee "$work/build.log" | grep --line-buffered -E '^ +LINK ' >&2; then
      tail -20 "$work/build.log" >&2
      say "error: building CRIU $VERSION failed (log: $work/build.log); run $0 --rebuild after fixing it"
      exit 1
    fi
    say "built CRIU $VERSION in $((SECONDS - start)) s"
  fi
  install -D -m 0755 "$built" "$DEST"
fi

# A failing check is not a setup failure: hibernate then stops the sandbox with its disks, and its status says why.
if "$DEST" check >/dev/null 2>&1; then
  say "criu check passes"
else
  say "warning: 'criu check' fails on this kernel, so runc hibernate will not keep memory:"
  "$DEST" check 2>&1 | tail -3 | sed 's/^/  /' >&2 || true
fi
