# Versions of what the dev cluster builds from the Go module proxy; each keys its own cache directory.
K8S_VERSION=1.36.3
ETCD_VERSION=3.6.16
AGENT_SANDBOX_VERSION=0.5.6
