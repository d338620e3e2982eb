"""Fixtures of the Python tests: the dev cluster (scripts/dev-cluster, started when it is not up, as the node
cluster tests do in test/helpers/dev-cluster.ts), a namespace of their own, the GKE tutorial's python-runtime
template with a warm pool, and a sandbox router for the Python client's tunnel mode."""

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DEV_CLUSTER = HERE.parent.parent / "scripts" / "dev-cluster"

# Fixed, so that a run removes what an interrupted one left; deleted, with all in it, at the end of the session.
NAMESPACE = "pyclient"
TEMPLATE = "python-runtime-template"
WARM_POOL = "python-runtime-pool"


@dataclass
class DevCluster:
    kubeconfig: str
    # The GKE tutorial's python-runtime image, imported into the node (nothing is pulled).
    python_image: str

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        r = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: exit {r.returncode}\n{r.stderr}{r.stdout}")
        return r.stdout


def parse_env(text: str) -> dict[str, str]:
    """`scripts/dev-cluster env`'s `[export ]NAME=value` lines (paths and image names, left unquoted)."""
    return {m[1]: m[2] for m in re.finditer(r"^(?:export )?([A-Z_]+)=(.*)$", text, re.M)}


@pytest.fixture(scope="session")
def dev_cluster(pytestconfig: pytest.Config) -> DevCluster:
    if subprocess.run([DEV_CLUSTER, "status"], capture_output=True).returncode != 0:
        # A cold build takes a while: its progress goes to the terminal (the log), not to pytest's capture.
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            assert subprocess.run([DEV_CLUSTER, "up"]).returncode == 0, "scripts/dev-cluster up failed"
    printed = subprocess.run([DEV_CLUSTER, "env"], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    env = parse_env(printed.stdout)
    assert env.get("KUBECONFIG") and env.get("PYTHON_RUNTIME_IMAGE"), printed.stdout
    return DevCluster(kubeconfig=env["KUBECONFIG"], python_image=env["PYTHON_RUNTIME_IMAGE"])


@pytest.fixture(scope="session")
def namespace(dev_cluster: DevCluster):
    dev_cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait", "--timeout=180s")
    dev_cluster.kubectl("create", "namespace", NAMESPACE)
    yield NAMESPACE
    dev_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait", "--timeout=180s")


def tutorial(image: str, namespace: str) -> str:
    """The GKE Sandbox tutorial's SandboxTemplate (with its readiness probe) and a SandboxWarmPool of it, as
    agent-sandbox v0.5 takes them (v1beta1, the client's version); a grace period of 1 s makes deletes quick."""
    return f"""\
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxTemplate
metadata:
  name: {TEMPLATE}
  namespace: {namespace}
spec:
  podTemplate:
    metadata:
      labels:
        sandbox: python-sandbox-example
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: python-runtime
        image: {image}
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 8888
        readinessProbe:
          httpGet:
            path: "/"
            port: 8888
          initialDelaySeconds: 0
          periodSeconds: 1
        resources:
          requests:
            cpu: "250m"
            memory: "512Mi"
            ephemeral-storage: "512Mi"
      restartPolicy: "OnFailure"
---
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxWarmPool
metadata:
  name: {WARM_POOL}
  namespace: {namespace}
spec:
  replicas: 1
  sandboxTemplateRef:
    name: {TEMPLATE}
"""


@pytest.fixture(scope="session")
def warm_pool(dev_cluster: DevCluster, namespace: str) -> str:
    """The tutorial's template and a pool of one, once that one is Ready."""
    dev_cluster.kubectl("apply", "-f", "-", input=tutorial(dev_cluster.python_image, namespace))
    dev_cluster.kubectl(
        "wait", "-n", namespace, f"sandboxwarmpool/{WARM_POOL}",
        "--for=jsonpath={.status.readyReplicas}=1", "--timeout=180s",
    )
    return WARM_POOL


def router_manifest(image: str, namespace: str) -> str:
    """sandbox_router.py in a pod of the python-runtime image, behind the Service the client's tunnel mode
    port-forwards to (`sandbox-router-svc`, port 8080), as upstream's sandbox_router.yaml names them."""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: sandbox-router
  namespace: {namespace}
  labels:
    app: sandbox-router
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: router
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["python3", "-u", "/router/sandbox_router.py"]
    ports:
    - containerPort: 8080
    readinessProbe:
      httpGet:
        path: /healthz
        port: 8080
      periodSeconds: 1
    volumeMounts:
    - name: router
      mountPath: /router
  volumes:
  - name: router
    configMap:
      name: sandbox-router
---
apiVersion: v1
kind: Service
metadata:
  name: sandbox-router-svc
  namespace: {namespace}
spec:
  selector:
    app: sandbox-router
  ports:
  - name: http
    port: 8080
    targetPort: 8080
"""


@pytest.fixture(scope="session")
def router(dev_cluster: DevCluster, namespace: str) -> str:
    """The router's namespace, once its pod is Ready."""
    dev_cluster.kubectl(
        "create", "configmap", "sandbox-router", "-n", namespace, f"--from-file={HERE / 'sandbox_router.py'}"
    )
    dev_cluster.kubectl("apply", "-f", "-", input=router_manifest(dev_cluster.python_image, namespace))
    dev_cluster.kubectl("wait", "-n", namespace, "pod/sandbox-router", "--for=condition=Ready", "--timeout=120s")
    return namespace
