# Builds the dev cluster's binaries from the Go module proxy into a cache outside the repository, keyed by
# version, and skips what is already there. Sourced by scripts/dev-cluster (needs say, CACHE, versions.sh).

# Go's module and build caches live beside the binaries so that `down` never touches them and their size is
# easy to see; builds run niced because they share the machine with everything else.
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
# gobuild CGO ARGS...: CGO is 0 or 1.
gobuild() { CGO_ENABLED=$1 nice -n 10 go build -trimpath "${@:2}"; }

# quiet CMD...: runs CMD, showing its output only if it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

# wrapper_module DIR: a fresh, empty module in DIR, made the working directory; the callers (subshells) require
# what they build in it.
wrapper_module() {
  rm -rf "$1" && mkdir -p "$1" && cd "$1"
  go mod init dev-cluster/build >/dev/null 2>&1
}

# timed NAME VERSION MINUTES CMD...: announces a cold build with its usual duration and reports the real one.
timed() {
  local name=$1 version=$2 minutes=$3; shift 3
  say "building $name $version (cold: ~$minutes min)"
  local start=$SECONDS
  "$@"
  say "built $name $version in $((SECONDS - start)) s"
}

# The commands built from k8s.io/kubernetes, each into $K8S_BIN under its own name.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# k8s.io/kubernetes pins its staging modules at v0.0.0 and maps them with replace directives that a
# dependent module does not see, so the wrapper replaces each one with its published v0.X.Y. Only the commands
# missing from OUT are built (a command added to the list later builds on its own), each moved into place whole.
build_kubernetes() (
  local v=$K8S_VERSION out=$1 minor=${K8S_VERSION#1.} p missing=()
  for p in "${K8S_COMMANDS[@]}"; do [ -x "$out/$p" ] || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || exit 0
  minor=${minor%%.*}
  wrapper_module "$CACHE/src/kubernetes-v$v"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local m replaces=()
  for m in $(sed -n 's/^\t\(k8s\.io\/[^ ]*\) v0\.0\.0$/\1/p' "$gomod"); do
    replaces+=("-replace=$m=$m@v0.${v#1.}")
  done
  go mod edit "${replaces[@]}"
  local pkgs=()
  for p in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$p@v$v"); done
  quiet go get "${pkgs[@]}"
  local ld="-s -w -buildid=" date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  mkdir -p "$out"
  local cgo
  for p in "${missing[@]}"; do
    cgo=0 # upstream links the control plane, kube-proxy and kubectl statically, the kubelet with cgo (hack/lib/golang.sh)
    [ "$p" != kubelet ] || cgo=1
    timed "$p" "v$v" "${BUILD_MINUTES[$p]}" \
      gobuild "$cgo" -tags selinux,notest -ldflags "$ld" -o "$out/$p.tmp" "k8s.io/kubernetes/cmd/$p"
    mv "$out/$p.tmp" "$out/$p"
  done
)

# etcd's server module has replace directives too (go install refuses it); its main package builds the same way.
build_etcd() (
  local out=$1
  wrapper_module "$CACHE/src/etcd-v$ETCD_VERSION"
  quiet go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  mkdir -p "$out.tmp"
  timed etcd "v$ETCD_VERSION" "${BUILD_MINUTES[etcd]}" \
    gobuild 0 -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$out" && mv "$out.tmp" "$out"
)

build_agent_sandbox() (
  local out=$1 v=$AGENT_SANDBOX_VERSION
  wrapper_module "$CACHE/src/agent-sandbox-v$v"
  quiet go get "sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller@v$v"
  mkdir -p "$out.tmp"
  timed agent-sandbox-controller "v$v" "${BUILD_MINUTES[agent-sandbox-controller]}" \
    gobuild 0 -ldflags "-s -w" -o "$out.tmp/agent-sandbox-controller" \
    sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller
  # The CRDs ship inside the module; keep a copy beside the controller that was built from it.
  local dir
  dir=$(go mod download -json "sigs.k8s.io/agent-sandbox@v$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$out.tmp/crds" && cp -r "$dir/k8s/crds" "$out.tmp/crds" && chmod -R u+w "$out.tmp/crds"
  rm -rf "$out" && mv "$out.tmp" "$out"
)

# Cold build times measured on 2 cores shared with other work (load ~15), for the progress messages.
declare -A BUILD_MINUTES=([kube-apiserver]=18 [kube-controller-manager]=6 [kube-scheduler]=1 [kubectl]=2 [kubelet]=11
  [kube-proxy]=3 [etcd]=2 [agent-sandbox-controller]=6)

# build_all: fills $K8S_BIN, $ETCD_BIN and $AGENT_SANDBOX_DIR with what they lack.
build_all() {
  [ -x "$ETCD_BIN/etcd" ] || build_etcd "$ETCD_BIN"
  build_kubernetes "$K8S_BIN"
  [ -x "$AGENT_SANDBOX_DIR/agent-sandbox-controller" ] || build_agent_sandbox "$AGENT_SANDBOX_DIR"
}
