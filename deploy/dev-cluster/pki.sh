# The cluster's certificates and kubeconfigs, made once per `up` with openssl. Sourced by scripts/dev-cluster.
# One CA signs everything: the apiserver's serving certificate, and a client certificate per component whose
# CN is its user and whose O is its group (what the Node and RBAC authorizers expect).

PKI=$STATE/pki

# issue NAME SUBJECT USAGE [SANS]
issue() {
  local name=$1 subject=$2 usage=$3 sans=${4:-}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig NAME SERVER: a self-contained kubeconfig for the client certificate NAME.
kubeconfig() {
  local name=$1 server=$2
  cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: moat-dev
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: moat-dev
  context: {cluster: moat-dev, user: $name}
current-context: moat-dev
EOF
}

make_pki() {
  mkdir -p "$PKI" && chmod 700 "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj /CN=moat-dev-cluster-ca \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  issue apiserver /CN=kube-apiserver serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP"
  issue apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
  issue front-proxy-client /CN=front-proxy-client clientAuth # the aggregation layer's, as kubeadm sets it up
  issue admin /O=system:masters/CN=moat-dev-admin clientAuth
  issue controller-manager /CN=system:kube-controller-manager clientAuth
  issue scheduler /CN=system:kube-scheduler clientAuth
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  # agent-sandbox's own manifests give its controller a ClusterRole; here it runs as an administrator.
  issue agent-sandbox /O=system:masters/CN=agent-sandbox-controller clientAuth
  # The agent-sandbox conversion webhook's serving certificate: the apiserver calls it over the node's loopback.
  issue agent-sandbox-webhook /CN=agent-sandbox-webhook serverAuth DNS:localhost,IP:127.0.0.1
  mkdir -p "$PKI/webhook"
  mv "$PKI/agent-sandbox-webhook.crt" "$PKI/webhook/tls.crt" && mv "$PKI/agent-sandbox-webhook.key" "$PKI/webhook/tls.key"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # The host reaches the apiserver over the veth; the components inside the node use loopback.
  kubeconfig admin "https://$NODE_IP:6443"
  local c
  for c in controller-manager scheduler kubelet agent-sandbox; do kubeconfig "$c" https://127.0.0.1:6443; done
}
