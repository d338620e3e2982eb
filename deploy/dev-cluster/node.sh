# Starting, checking and stopping the node. Sourced by scripts/dev-cluster, after build.sh and images.sh.
. "$HERE/pki.sh"

# in_node CMD...: runs CMD inside the node's network and mount namespaces.
in_node() { nsenter --net="$RUN/net" --mount="$RUN/mnt" -- "$@"; }

kc() { "$K8S_BIN/kubectl" --kubeconfig "$PKI/admin.kubeconfig" "$@"; }

# wait_until WHAT SECONDS LOG CMD...: polls CMD; on timeout shows the end of LOG and fails.
wait_until() {
  local what=$1 seconds=$2 log=$3 deadline=$((SECONDS + $2))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      [ ! -f "$log" ] || tail -n 30 "$log" >&2
      die "$what: not ready after $seconds s (log: $log)"
    fi
    sleep 0.5
  done
}

ensure_packages() {
  local p missing=()
  for p in containerd runc containernetworking-plugins nftables mmdebstrap gcc libc6-dev openssl curl iproute2 util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The cgroup hierarchies: each v1 controller of a hybrid setup plus its unified tree, or the one v2 tree.
cgroup_hierarchies() {
  if [ -e /sys/fs/cgroup/cgroup.procs ]; then echo /sys/fs/cgroup; return; fi
  local h
  for h in /sys/fs/cgroup/*/; do [ -e "$h/cgroup.procs" ] && echo "${h%/}"; done
}

make_cgroups() {
  local h d
  for h in $(cgroup_hierarchies); do
    for d in "$h/$CGROUP" "$h/$CGROUP/daemons"; do
      mkdir -p "$d"
      # A v1 cpuset admits no process until it has CPUs and memory nodes.
      if [ -e "$d/cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then
        cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
        cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
      fi
    done
  done
}

join_daemons_cgroup() {
  local h
  for h in $(cgroup_hierarchies); do echo "$BASHPID" >"$h/$CGROUP/daemons/cgroup.procs"; done
}

# The node's network namespace (a veth to the host, no default route: nothing inside reaches further than the
# host's end of the veth) and its mount namespace, both kept by bind mounts of their files under $RUN.
make_namespaces() {
  mkdir -p "$RUN"
  # Binding a namespace file needs a mount point that is not shared.
  mountpoint -q "$RUN" || { mount --bind "$RUN" "$RUN" && mount --make-private "$RUN"; }
  touch "$RUN/net" "$RUN/mnt"
  unshare --net="$RUN/net" --mount="$RUN/mnt" --propagation private true
  in_node ip link add mk8s-node type veth peer name mk8s-host netns "$$"
  ip addr add "$HOST_IP/30" dev mk8s-host
  ip link set mk8s-host up
  in_node ip link set lo up
  in_node ip addr add "$NODE_IP/30" dev mk8s-node
  in_node ip link set mk8s-node up
  # The new namespace starts with a copy of every host mount, such as Moat's own sandboxes' disks and rootfs
  # overlays; a copy would keep those busy after the host unmounts them, so the node drops all but the system's.
  in_node awk '{ print $5 }' /proc/self/mountinfo | tac | while read -r m; do
    case $m in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) in_node umount -l "$m" 2>/dev/null || true ;; esac
  done
  # Inside the mount namespace: shared propagation for the kubelet's volume mounts (it affects only this
  # namespace's copy of the mount table), fresh /run and /var/log (containerd's and runc's state and shim sockets,
  # the pods' logs), and the kubelet's and CNI's fixed paths bound to the state dir, so that nothing of the node
  # lands in the host's /run, /var/log or /var/lib.
  in_node mount --make-rshared /
  in_node mount -t tmpfs -o mode=0755 dev-cluster-run /run
  in_node mount -t tmpfs -o mode=0755 dev-cluster-log /var/log
  node_dir /var/lib/kubelet "$STATE/kubelet" # some of its paths ignore --root-dir (device-plugins, pki)
  node_dir /var/lib/cni "$STATE/cni/cache"
  # The kubelet sets these kernel-wide sysctls (kernel.panic, panic_on_oops, overcommit...) unless they already
  # have its values. The node shows it files holding those values instead, so the host's settings stay as they
  # are, and protectKernelDefaults makes the kubelet fail rather than write if one is missed.
  local kv key
  mkdir -p "$STATE/sysctl"
  for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    key=${kv%%=*}
    echo "${kv#*=}" >"$STATE/sysctl/${key//\//.}"
    in_node mount --bind "$STATE/sysctl/${key//\//.}" "/proc/sys/$key"
  done
}

# node_dir PATH DIR: the node sees DIR at PATH. The host keeps an empty PATH as the mount point; `down` removes
# it again if it made it.
node_dir() {
  mkdir -p "$2"
  if [ ! -d "$1" ]; then mkdir -p "$1" && echo "$1" >>"$STATE/mount-points"; fi
  in_node mount --bind "$2" "$1"
}

# start NAME CMD...: starts a daemon inside the node, in the daemons' cgroup, logging to $STATE/logs/NAME.log.
start() {
  local name=$1
  shift
  ( join_daemons_cgroup && close_inherited_fds && exec setsid nsenter --net="$RUN/net" --mount="$RUN/mnt" -- "$@" ) \
    </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# A daemon outlives this script: it must not keep what the script's caller passed on, such as the descriptor of a
# `flock LOCKFILE scripts/dev-cluster up` (a daemon holding it would hold the lock for as long as it runs).
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -le 2 ] || eval "exec $fd>&-" 2>/dev/null || true
  done
}

# Alive, and not a zombie: a killed daemon's pid answers kill -0 until its parent reaps it.
running() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) && [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# A bridge inside the node, no masquerading. The pods' one route beyond their subnet is to the Services (kube-proxy
# translates them in the node): nothing else is reachable from the node anyway. Also written by kube_proxy_setup,
# so that new pods of a cluster started before kube-proxy was part of it get that route.
write_cni_config() {
  mkdir -p "$STATE/cni/net.d"
  cat >"$STATE/cni/net.d/10-moat-dev.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "moat-dev",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
      "routes": [{"dst": "$SERVICE_CIDR"}], "dataDir": "$STATE/cni/ipam"}
  }]
}
EOF
}

write_configs() {
  mkdir -p "$STATE/containerd" "$STATE/cni/net.d"
  : >"$STATE/resolv.conf" # pods get no name server: nothing answers outside the node
  cat >"$STATE/containerd/config.toml" <<EOF
# containerd for the dev cluster only: its own root, socket, CNI and opt paths, so it never meets another
# containerd. Its state and the shims' sockets stay under /run, which is the node's own tmpfs.
version = 2
root = "$STATE/containerd/root"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$STATE/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The kubelet asks for negative OOM scores (-998 for pause); this machine lets no process lower its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  write_cni_config
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
# cgroups here are v1 (hybrid); the kubelet manages only its own root, and leaves the rest of the machine alone.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
enforceNodeAllocatable: ["none"]
failSwapOn: false
protectKernelDefaults: true
makeIPTablesUtilChains: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
resolvConf: $STATE/resolv.conf
clusterDomain: cluster.local
podCIDR: $POD_CIDR
# Images are imported, never pulled: garbage collection must never delete them; no eviction for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%", imagefs.inodesFree: "1%"}
EOF
}

# The CRDs as agent-sandbox ships them, except that their conversion webhook (v1alpha1 <-> v1beta1, which differ:
# a v1alpha1 claim's sandboxTemplateRef is a v1beta1 warmPoolRef) is reached by URL on the node's loopback, with
# our CA, instead of through a Service in agent-sandbox-system, which needs kube-proxy.
apply_crds() {
  local f ca
  ca=$(base64 -w0 "$PKI/ca.crt")
  for f in "$AGENT_SANDBOX_DIR"/crds/*.yaml; do
    awk -v ca="$ca" -v port="$WEBHOOK_PORT" '
      /^  conversion:$/ { skip = 1; print
        print "    strategy: Webhook"
        print "    webhook:"
        print "      conversionReviewVersions: [v1]"
        print "      clientConfig: {url: \"https://127.0.0.1:" port "/convert\", caBundle: \"" ca "\"}"
        next }
      skip && /^    / { next }
      { skip = 0; print }' "$f"
    echo ---
  done | kc apply --server-side --force-conflicts -f - >/dev/null
  # The controller looks its kinds up at start: they must be served by then. Files are named GROUP_PLURAL.yaml.
  local crds=()
  for f in "$AGENT_SANDBOX_DIR"/crds/*.yaml; do
    f=$(basename "$f" .yaml)
    crds+=("crd/${f#*_}.${f%%_*}")
  done
  kc wait --for=condition=Established --timeout=60s "${crds[@]}" >/dev/null
}

# kube-proxy's client certificate and config, made here rather than with the others so that a cluster started
# before kube-proxy was part of it gets them when `up` adds it.
kube_proxy_setup() {
  if [ ! -f "$PKI/kube-proxy.kubeconfig" ]; then
    issue kube-proxy /CN=system:kube-proxy clientAuth # bound to system:node-proxier by the apiserver's defaults
    kubeconfig kube-proxy https://127.0.0.1:6443
  fi
  # A Service's pod answers a client pod on the same bridge directly (same subnet): that reply is bridged, not
  # routed, and only br_netfilter passes it through conntrack, which gives it the ClusterIP back as its source.
  # The setting is the node's network namespace's own.
  in_node sh -c 'echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables' ||
    die "kube-proxy needs br_netfilter (net.bridge.bridge-nf-call-iptables): modprobe br_netfilter"
  write_cni_config
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# nftables: the machine has nft and no iptables; the rules live in the node's network namespace only.
mode: nftables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
# Traffic from outside the pods' range to a Service is masqueraded, so that its replies come back through the node.
clusterCIDR: $POD_CIDR
nodePortAddresses: [$NODE_IP/32]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero leaves conntrack's table size and timeouts alone: the table size is the whole machine's.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

cluster_healthy() {
  local d
  for d in "${DAEMONS[@]}"; do running "$d" || return 1; done
  kc get --raw /readyz >/dev/null 2>&1 &&
    [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# start_daemon NAME: starts one of $DAEMONS and waits until it answers (cluster_up, and `start` after a `kill`).
start_daemon() {
  local kubeconfig
  case $1 in
    etcd)
      start etcd "$ETCD_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" --unsafe-no-fsync --log-level warn \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster "$NODE_NAME=http://127.0.0.1:2380"
      wait_until etcd 60 "$STATE/logs/etcd.log" in_node curl -fsS http://127.0.0.1:2379/health
      ;;
    kube-apiserver)
      start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
        --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port 6443 \
        --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --requestheader-client-ca-file "$PKI/ca.crt" --requestheader-allowed-names front-proxy-client \
        --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
        --requestheader-extra-headers-prefix X-Remote-Extra- \
        --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key"
      wait_until kube-apiserver 120 "$STATE/logs/kube-apiserver.log" kc get --raw /readyz
      ;;
    kube-controller-manager)
      kubeconfig=$PKI/controller-manager.kubeconfig
      start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$kubeconfig" \
        --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR"
      ;;
    kube-scheduler)
      kubeconfig=$PKI/scheduler.kubeconfig
      start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$kubeconfig" \
        --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false
      ;;
    containerd)
      start containerd containerd --config "$STATE/containerd/config.toml"
      wait_until containerd 60 "$STATE/logs/containerd.log" ctr --address "$STATE/containerd/containerd.sock" version
      ;;
    kubelet)
      start kubelet "$K8S_BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
        --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
      # Its own health first: after a restart the node may still read Ready from before.
      wait_until kubelet 120 "$STATE/logs/kubelet.log" in_node curl -fsS http://127.0.0.1:10248/healthz
      wait_until "node $NODE_NAME Ready" 120 "$STATE/logs/kubelet.log" \
        kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
      ;;
    kube-proxy)
      kube_proxy_setup
      start kube-proxy "$K8S_BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
      wait_until kube-proxy 60 "$STATE/logs/kube-proxy.log" in_node curl -fsS http://127.0.0.1:10256/healthz
      ;;
    agent-sandbox-controller)
      # Tuned for warm claim latency (docs/kubernetes.md, "Warm claim latency"): a pool's refill waits 500 ms after
      # an adoption, so the new pod's start does not compete with the claim and its first exec on the node's CPUs;
      # and the claim's first-observed annotation is not written, one API write fewer before the claim is served.
      start agent-sandbox-controller "$AGENT_SANDBOX_DIR/agent-sandbox-controller" \
        --kubeconfig "$PKI/agent-sandbox.kubeconfig" --extensions --leader-elect=false \
        --enable-webhook --manage-webhook-certs=false --webhook-cert-dir "$PKI/webhook" --webhook-port "$WEBHOOK_PORT" \
        --metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081 \
        --sandbox-warm-pool-replenish-delay=500ms --disable-claim-observability-annotations
      wait_until agent-sandbox-controller 60 "$STATE/logs/agent-sandbox-controller.log" \
        in_node curl -fsS http://127.0.0.1:18081/readyz
      wait_until "agent-sandbox conversion webhook" 60 "$STATE/logs/agent-sandbox-controller.log" \
        in_node bash -c ": </dev/tcp/127.0.0.1/$WEBHOOK_PORT"
      ;;
    *) die "no daemon \"$1\": one of ${DAEMONS[*]}" ;;
  esac
}

# A fault for tests: SIGKILL one daemon, as a crash would (`start NAME` brings it back, with its state).
daemon_kill() {
  running "$1" || die "$1 is not running"
  kill -KILL "$(cat "$RUN/$1.pid")"
  # SIGKILL is not instant: a `start` right after must not find it still running.
  local i
  for i in $(seq 100); do running "$1" || break; sleep 0.1; done
  running "$1" && die "$1 did not die within 10 s"
  say "$1 killed"
}

daemon_start() {
  [[ " ${DAEMONS[*]} " == *" $1 "* ]] || die "no daemon \"$1\": one of ${DAEMONS[*]}"
  [ -f "$RUN/env" ] || die "the dev cluster is not up: run scripts/dev-cluster up"
  if running "$1"; then say "$1 is running"; return; fi
  start_daemon "$1"
  say "$1 started"
}

# The images, built when their inputs changed (Moat's only once Moat is built), as REF=TAR in IMAGES.
build_images() {
  pause_image
  python_runtime_image
  postgres_image
  IMAGES=("$PAUSE_IMAGE=$PAUSE_TAR" "$PYTHON_RUNTIME_IMAGE=$PYTHON_RUNTIME_TAR" "$POSTGRES_IMAGE=$POSTGRES_TAR")
  MOAT_IMAGE=
  if [ -f "$REPO/packages/cli/dist/main.js" ]; then
    moat_image
    IMAGES+=("$MOAT_IMAGE=$MOAT_TAR")
  else
    say "no Moat image: Moat is not built (npm run build, then scripts/dev-cluster images)"
  fi
}

# import_images: what the node's containerd lacks of $IMAGES, imported; older tags of each removed (the kubelet
# never collects images here, and a pod still running one keeps its snapshot). Then `env` names them.
import_images() {
  local ctr=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io) i ref old
  for i in "${IMAGES[@]}"; do
    ref=${i%%=*}
    [ -z "$("${ctr[@]}" images ls -q "name==$ref")" ] || continue
    "${ctr[@]}" images import "${i#*=}" >/dev/null
    for old in $("${ctr[@]}" images ls -q | grep -F "${ref%:*}:" | grep -vxF "$ref"); do
      "${ctr[@]}" images rm "$old" >/dev/null
    done
  done
  echo "${IMAGES[*]%%=*}" >"$RUN/images" # the pause image first: containerd's config names it
  printf 'export KUBECONFIG=%q\nPYTHON_RUNTIME_IMAGE=%q\nPOSTGRES_IMAGE=%q\n' \
    "$PKI/admin.kubeconfig" "$PYTHON_RUNTIME_IMAGE" "$POSTGRES_IMAGE" >"$RUN/env"
  [ -z "$MOAT_IMAGE" ] || printf 'MOAT_IMAGE=%q\n' "$MOAT_IMAGE" >>"$RUN/env"
}

# The pause image the node's containerd was started with (the first of `images`).
node_pause_image() { cut -d' ' -f1 "$RUN/images" 2>/dev/null; }

# start_missing: starts the daemons that are not running, in order, as `start` does; fails if one does not come up.
start_missing() {
  local d
  for d in "${DAEMONS[@]}"; do
    running "$d" && continue
    say "starting $d"
    start_daemon "$d"
  done
}

cluster_up() {
  local start_time=$SECONDS
  ensure_packages
  build_all
  build_images
  # A cluster that is up keeps running, and gets what it lacks: a daemon that is not running (one added since it
  # started, or one that died), a new image. Only a new pause image or a failed repair starts it afresh.
  if [ -f "$RUN/env" ] && [ "$(node_pause_image)" = "$PAUSE_IMAGE" ] && (start_missing) && cluster_healthy; then
    import_images
    say "up: node $NODE_NAME is Ready"
    return
  fi
  if [ -e "$RUN" ] || [ -e "$STATE" ]; then
    say "a previous cluster is not healthy, has another pause image, or its start failed: taking it down first"
    cluster_down
  fi
  mkdir -p "$STATE/logs"
  make_cgroups
  make_namespaces
  make_pki
  write_configs

  say "starting etcd v$ETCD_VERSION"
  start_daemon etcd
  say "starting kube-apiserver, kube-controller-manager and kube-scheduler v$K8S_VERSION"
  start_daemon kube-apiserver
  start_daemon kube-controller-manager
  start_daemon kube-scheduler
  say "starting containerd $(containerd --version | cut -d' ' -f3) and importing the images"
  start_daemon containerd
  import_images
  say "starting the kubelet and kube-proxy v$K8S_VERSION"
  start_daemon kubelet
  start_daemon kube-proxy
  say "starting the agent-sandbox controller v$AGENT_SANDBOX_VERSION (its conversion webhook on 127.0.0.1:$WEBHOOK_PORT)"
  apply_crds
  start_daemon agent-sandbox-controller
  say "up in $((SECONDS - start_time)) s: node $NODE_NAME ($NODE_IP) is Ready; eval \"\$(scripts/dev-cluster env)\""
}

# `images`: builds what changed and imports it into the running node; never restarts anything.
cluster_images() {
  { [ -f "$RUN/env" ] && cluster_healthy; } || die "the dev cluster is not up: run scripts/dev-cluster up"
  build_images
  [ "$(node_pause_image)" = "$PAUSE_IMAGE" ] || die "the pause image changed: scripts/dev-cluster up restarts the cluster with it"
  import_images
}

cluster_env() {
  [ -f "$RUN/env" ] || die "the dev cluster is not up: run scripts/dev-cluster up"
  cat "$RUN/env"
}

cluster_status() {
  local d
  for d in "${DAEMONS[@]}"; do
    if running "$d"; then say "$d: running (pid $(cat "$RUN/$d.pid"))"; else say "$d: not running"; fi
  done
  if cluster_healthy; then say "node $NODE_NAME is Ready"; else say "the cluster is not healthy"; return 1; fi
}

# stop_pids PID...: SIGTERM, then SIGKILL for whatever is still there after 10 s.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local i
  for i in $(seq 20); do
    kill -0 "$@" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$@" 2>/dev/null || true
}

cluster_down() {
  local d i h pids
  # Newest first: the controllers, the kubelet, containerd, then the control plane.
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[$i]}
    if running "$d"; then say "stopping $d"; stop_pids "$(cat "$RUN/$d.pid")"; fi
    rm -f "$RUN/$d.pid"
  done
  # What the daemons left behind in the node's cgroups: containerd's shims and the pods' processes.
  for i in $(seq 20); do
    pids=$(for h in $(cgroup_hierarchies); do find "$h/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -u)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
  for h in $(cgroup_hierarchies); do
    [ ! -d "$h/$CGROUP" ] || find "$h/$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # The namespaces end with their last process and their bind mounts, and the node's mounts with them.
  for d in mnt net; do ! mountpoint -q "$RUN/$d" || umount "$RUN/$d"; done
  ip link del mk8s-host 2>/dev/null || true
  ! mountpoint -q "$RUN" || umount "$RUN"
  rm -rf "$RUN"
  if [ -f "$STATE/mount-points" ]; then
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$STATE/mount-points"
  fi
  rm -rf "$STATE"
  say "down"
}
