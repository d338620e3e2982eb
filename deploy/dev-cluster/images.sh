# Offline OCI images for the node: the pod sandbox's pause image and the python-runtime image. Each is an OCI
# image-layout tar built here (no registry, no pull) and cached by the hash of what goes into it.
# Sourced by scripts/dev-cluster (needs say, CACHE, REPO).

# oci_image OUT REF LAYER CONFIG: packs one uncompressed layer tar and an image config (the JSON of the
# "config" field: Entrypoint, Cmd, Env...) as an OCI image layout whose index names the image REF, which is
# what `ctr images import` takes as the image's name.
oci_image() {
  local out=$1 ref=$2 layer=$3 config=$4 dir
  dir=$(mktemp -d)
  mkdir -p "$dir/blobs/sha256"
  local layer_hex layer_size
  layer_hex=$(sha256sum "$layer" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$layer")
  cp "$layer" "$dir/blobs/sha256/$layer_hex"
  local config_hex config_size manifest_hex manifest_size
  blob() { # blob JSON: stores JSON as a blob and sets blob_hex and blob_size
    printf '%s' "$1" >"$dir/blob"
    blob_hex=$(sha256sum "$dir/blob" | cut -d' ' -f1)
    blob_size=$(stat -c %s "$dir/blob")
    mv "$dir/blob" "$dir/blobs/sha256/$blob_hex"
  }
  blob "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":$config,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_hex\"]}}"
  config_hex=$blob_hex config_size=$blob_size
  blob "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_hex\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer_hex\",\"size\":$layer_size}]}"
  manifest_hex=$blob_hex manifest_size=$blob_size
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_hex" "$manifest_size" "$ref" "${ref##*:}" >"$dir/index.json"
  tar -C "$dir" -cf "$out.tmp" oci-layout index.json blobs && mv "$out.tmp" "$out"
  rm -rf "$dir"
}

# Reproducible tar of a directory, so the same input gives the same layer digest.
layer_tar() { tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$2" .; }

content_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Sets PAUSE_IMAGE and PAUSE_TAR, building the image when its inputs changed.
pause_image() {
  local src=$REPO/deploy/dev-cluster/pause.c tag
  tag=$(content_hash "$src" "$REPO/deploy/dev-cluster/images.sh")
  PAUSE_IMAGE=moat.local/dev-cluster/pause:$tag
  PAUSE_TAR=$CACHE/images/pause-$tag.tar
  [ -f "$PAUSE_TAR" ] && return
  say "building the pause image $PAUSE_IMAGE (gcc -static)"
  rm -f "$CACHE"/images/pause-*.tar # older builds
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/rootfs" "$CACHE/images"
  gcc -static -O2 -s -o "$dir/rootfs/pause" "$src"
  layer_tar "$dir/rootfs" "$dir/layer.tar"
  oci_image "$PAUSE_TAR" "$PAUSE_IMAGE" "$dir/layer.tar" '{"Entrypoint":["/pause"]}'
  rm -rf "$dir"
}

# The python-runtime server is the one in Moat's built-in template (Python's standard library only), on a
# Debian rootfs from mmdebstrap with the `base` image's packages (packages/runtime/src/images/catalog.ts).
# Sets PYTHON_RUNTIME_IMAGE and PYTHON_RUNTIME_TAR.
python_runtime_image() {
  local dir tag
  dir=$(mktemp -d)
  # Both come from Moat's own sources, so the image follows them.
  (cd "$REPO" && node --conditions=source --import tsx --input-type=module -e '
    import { readFileSync, writeFileSync } from "node:fs";
    import { parse } from "yaml";
    import { IMAGE_CATALOG } from "./packages/runtime/src/images/catalog.ts";
    const t = parse(readFileSync("packages/server/templates/python-runtime.yaml", "utf8"));
    writeFileSync(process.argv[1] + "/server.py", t.spec.podTemplate.spec.containers[0].args[0]);
    writeFileSync(process.argv[1] + "/packages", IMAGE_CATALOG.base.packages.join(","));' "$dir")
  tag=$(content_hash "$dir/server.py" "$dir/packages" "$REPO/deploy/dev-cluster/images.sh")
  PYTHON_RUNTIME_IMAGE=moat.local/dev-cluster/python-runtime:$tag
  PYTHON_RUNTIME_TAR=$CACHE/images/python-runtime-$tag.tar
  if [ ! -f "$PYTHON_RUNTIME_TAR" ]; then
    say "building the python-runtime image $PYTHON_RUNTIME_IMAGE (mmdebstrap: ~1 min)"
    mkdir -p "$CACHE/images"
    rm -f "$CACHE"/images/python-runtime-*.tar # older builds
    SOURCE_DATE_EPOCH=1700000000 quiet mmdebstrap --variant=minbase --include="$(cat "$dir/packages")" \
      --customize-hook="mkdir -p \"\$1/opt/python-runtime\" && cp '$dir/server.py' \"\$1/opt/python-runtime/server.py\"" \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
      bookworm "$dir/layer.tar"
    oci_image "$PYTHON_RUNTIME_TAR" "$PYTHON_RUNTIME_IMAGE" "$dir/layer.tar" \
      '{"Cmd":["python3","-u","/opt/python-runtime/server.py"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SANDBOX_BASE_DIR=/workspace"],"ExposedPorts":{"8888/tcp":{}}}'
  fi
  rm -rf "$dir"
}

