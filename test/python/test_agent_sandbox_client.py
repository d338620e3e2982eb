"""agent-sandbox's own Python client (k8s-agent-sandbox, pinned in requirements.txt), used as its README shows,
against the dev cluster: a claim from a warm pool, a command in it, the claim deleted. Moat reads and writes the
same objects through the Kubernetes API (docs/kubernetes.md), so what the client makes is what Moat sees.

The client reaches a sandbox in tunnel mode, its default: `kubectl port-forward` to the sandbox router's Service,
and the router on to the pod's IP. The other modes need what a host outside the cluster lacks here: in-cluster
mode dials the pod IP (the dev cluster's pod network is not routed from the host), gateway mode a Gateway API
implementation. The router is sandbox_router.py (see there why not upstream's image).

The tests share one claim, in file order: the last deletes it."""

import json

import kubernetes
import pytest
from k8s_agent_sandbox import SandboxClient
from k8s_agent_sandbox.models import SandboxLocalTunnelConnectionConfig

from conftest import DevCluster


@pytest.fixture(scope="module")
def client(dev_cluster: DevCluster, router: str):
    # The cluster of a kubeconfig file given by name, as the client's README shows it; the kubectl it starts for
    # the tunnel is given the same cluster.
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=dev_cluster.kubeconfig, client_configuration=configuration)
    with kubernetes.client.ApiClient(configuration=configuration) as api_client:
        # On exit the client deletes the claims it created and still tracks: what a failed test left.
        with SandboxClient(
            connection_config=SandboxLocalTunnelConnectionConfig(router_namespace=router), api_client=api_client
        ) as c:
            yield c


@pytest.fixture(scope="module")
def warm_members(dev_cluster: DevCluster, namespace: str, warm_pool: str) -> list[str]:
    """The pool's Ready sandboxes before the claim."""
    return dev_cluster.kubectl("get", "sandboxes", "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}").split()


@pytest.fixture(scope="module")
def sandbox(client: SandboxClient, namespace: str, warm_pool: str, warm_members: list[str]):
    return client.create_sandbox(warmpool=warm_pool, namespace=namespace)


def get(dev_cluster: DevCluster, namespace: str, kind: str, name: str) -> dict:
    return json.loads(dev_cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json"))


def ready(obj: dict) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)


def test_the_claim_takes_the_warm_sandbox_and_kubernetes_sees_both(
    dev_cluster: DevCluster, namespace: str, client: SandboxClient, sandbox, warm_members: list[str]
):
    assert warm_members == [sandbox.sandbox_id], "the claim adopts the pool's sandbox, not a cold start"
    assert sandbox.status()[0] == "SandboxReady"
    assert client.list_all_sandboxes(namespace=namespace) == [sandbox.claim_name]

    claim = get(dev_cluster, namespace, "sandboxclaim", sandbox.claim_name)
    assert claim["apiVersion"] == "extensions.agents.x-k8s.io/v1beta1"
    assert claim["spec"]["warmPoolRef"] == {"name": "python-runtime-pool"}
    assert claim["metadata"]["labels"]["agents.x-k8s.io/created-by"] == "python-client"
    assert claim["status"]["sandbox"]["name"] == sandbox.sandbox_id
    assert ready(claim) == "True"
    sb = get(dev_cluster, namespace, "sandbox", sandbox.sandbox_id)
    assert ready(sb) == "True"
    # The claim owns the sandbox it took; the pool has made another.
    assert [o["name"] for o in sb["metadata"]["ownerReferences"] if o["kind"] == "SandboxClaim"] == [sandbox.claim_name]


def test_a_command_runs_in_the_claimed_sandbox(dev_cluster: DevCluster, namespace: str, sandbox):
    result = sandbox.commands.run("echo hello world")
    assert (result.stdout, result.stderr, result.exit_code) == ("hello world\n", "", 0)

    result = sandbox.commands.run("sh -c 'echo oops >&2; exit 3'")
    assert (result.stdout, result.stderr, result.exit_code) == ("", "oops\n", 3)

    # It was the claimed sandbox's pod that answered (a pod's hostname is its name), not another of the pool's.
    selector = get(dev_cluster, namespace, "sandbox", sandbox.sandbox_id)["status"]["selector"]
    pod = dev_cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}")
    assert sandbox.commands.run("hostname").stdout == f"{pod}\n"


def test_deleting_through_the_client_removes_the_claim_and_its_sandbox(
    dev_cluster: DevCluster, namespace: str, client: SandboxClient, sandbox
):
    claim, sandbox_id = sandbox.claim_name, sandbox.sandbox_id
    selector = get(dev_cluster, namespace, "sandbox", sandbox_id)["status"]["selector"]
    pod = dev_cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}")

    client.delete_sandbox(claim, namespace=namespace)  # logs, does not raise, when it fails: the checks below tell
    assert client.list_active_sandboxes() == []
    dev_cluster.kubectl(
        "wait", "-n", namespace, "--for=delete", f"sandboxclaim/{claim}", f"sandbox/{sandbox_id}", f"pod/{pod}",
        "--timeout=60s",
    )
    assert client.list_all_sandboxes(namespace=namespace) == []
