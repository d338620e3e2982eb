# Offline images of Moat's own install in the cluster: Moat's server, and a PostgreSQL for its replicas. Built
# like the node's other images (images.sh: one OCI layer, cached by content hash). Sourced by scripts/dev-cluster
# after images.sh (needs say, quiet, CACHE, REPO, oci_image, layer_tar, content_hash).

# The image's config. deploy/kubernetes/Dockerfile makes the same image for real clusters
# (test/structure/moat-image.test.ts keeps the two alike).
MOAT_IMAGE_CONFIG='{"User":"10001","Entrypoint":["/usr/local/bin/node","/opt/moat/packages/cli/dist/main.js"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","NODE_ENV=production","MOAT_INIT_BINARY=/opt/moat/packages/agent/build/moat-init"],"ExposedPorts":{"6628/tcp":{}}}'

# debian_rootfs OUT PACKAGES HOOK...: a Debian bookworm rootfs (mmdebstrap's minbase and PACKAGES, comma-separated)
# as a tar, with mmdebstrap customize hooks run on it. Like Debian's -slim images, without documentation, manual
# pages and translations (dpkg never unpacks them), nor apt's caches.
debian_rootfs() {
  local out=$1 packages=$2 opts=() h d
  shift 2
  for d in doc man info locale; do opts+=(--dpkgopt="path-exclude=/usr/share/$d/*"); done
  opts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
  for h in "$@" 'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*'; do opts+=(--customize-hook="$h"); done
  SOURCE_DATE_EPOCH=1700000000 quiet mmdebstrap --variant=minbase ${packages:+--include="$packages"} "${opts[@]}" \
    bookworm "$out"
}

# Moat's server: the host's Node 20 (Debian bookworm's nodejs is 18) and the built checkout's runtime files
# (scripts/stage-moat.ts) on Debian's minbase, which the Dockerfile's bookworm-slim matches. The Debian part is
# built once (cached by this file's hash) and the Moat part appended to a copy of it, so a change to Moat costs
# seconds. Sets MOAT_IMAGE and MOAT_TAR; fails, saying so, when Moat is not built.
moat_image() {
  local base_tag base dir tag node
  base_tag=$(content_hash "$REPO/deploy/dev-cluster/moat-images.sh")
  base=$CACHE/images/moat-base-$base_tag.tar
  mkdir -p "$CACHE/images"
  if [ ! -f "$base" ]; then
    say "building the Moat image's Debian base (mmdebstrap: ~1 min)"
    rm -f "$CACHE"/images/moat-base-*.tar # older builds
    debian_rootfs "${base%.tar}.tmp.tar" "" # mmdebstrap's format is its output's extension
    mv "${base%.tar}.tmp.tar" "$base"
  fi
  node=$(command -v node) || die "no node on PATH: the Moat image takes the host's Node 20"
  case $("$node" --version) in v20.*) ;; *) die "the Moat image needs Node 20; $node is $("$node" --version)" ;; esac
  dir=$(mktemp -d)
  (cd "$REPO" && node --import tsx scripts/stage-moat.ts "$dir/rootfs/opt/moat") || { rm -rf "$dir"; return 1; }
  install -D -m 0755 "$node" "$dir/rootfs/usr/local/bin/node"
  # Appended after the base's entries (same reproducible options as layer_tar), and only the new paths.
  cp "$base" "$dir/layer.tar"
  tar -C "$dir/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -rf "$dir/layer.tar" \
    ./opt/moat ./usr/local/bin/node
  tag=$(printf '%s' "$MOAT_IMAGE_CONFIG" | content_hash "$dir/layer.tar" -)
  MOAT_IMAGE=moat.local/dev-cluster/moat:$tag
  MOAT_TAR=$CACHE/images/moat-image-$tag.tar
  if [ ! -f "$MOAT_TAR" ]; then
    say "packing the Moat image $MOAT_IMAGE"
    rm -f "$CACHE"/images/moat-image-*.tar # older builds
    oci_image "$MOAT_TAR" "$MOAT_IMAGE" "$dir/layer.tar" "$MOAT_IMAGE_CONFIG"
  fi
  rm -rf "$dir"
}

# PostgreSQL from Debian's postgresql package, without the cluster its postinst makes (a pod makes its own with
# initdb, as the test's overlay does); `initdb` and `postgres` on PATH, running as the package's postgres user.
# Sets POSTGRES_IMAGE and POSTGRES_TAR.
postgres_image() {
  local tag dir uid
  tag=$(content_hash "$REPO/deploy/dev-cluster/moat-images.sh")
  POSTGRES_IMAGE=moat.local/dev-cluster/postgres:$tag
  POSTGRES_TAR=$CACHE/images/postgres-$tag.tar
  [ -f "$POSTGRES_TAR" ] && return
  say "building the PostgreSQL image $POSTGRES_IMAGE (mmdebstrap: ~1 min)"
  mkdir -p "$CACHE/images"
  rm -f "$CACHE"/images/postgres-*.tar # older builds
  dir=$(mktemp -d)
  debian_rootfs "$dir/layer.tar" postgresql \
    'rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main' \
    'for b in initdb postgres; do ln -s "/$(cd "$1" && echo usr/lib/postgresql/*/bin)/$b" "$1/usr/local/bin/$b"; done'
  # The user's numbers, so that pods can require a non-root user (a name cannot be checked before the start).
  uid=$(tar -xOf "$dir/layer.tar" ./etc/passwd | awk -F: '$1 == "postgres" { print $3 ":" $4 }')
  [ -n "$uid" ] || die "the postgresql package made no postgres user"
  oci_image "$POSTGRES_TAR" "$POSTGRES_IMAGE" "$dir/layer.tar" \
    "{\"User\":\"$uid\",\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"PGDATA=/var/lib/postgresql/data\"],\"ExposedPorts\":{\"5432/tcp\":{}}}"
  rm -rf "$dir"
}
