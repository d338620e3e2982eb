# A stand-in for agent-sandbox's sandbox-router (clients/python/agentic-sandbox-client/sandbox-router in
# kubernetes-sigs/agent-sandbox), which the Python client's tunnel mode reaches through
# `kubectl port-forward svc/sandbox-router-svc`. The upstream router is a FastAPI app whose image (or PyPI
# packages) an offline cluster does not have; this one is Python's standard library only, so it runs on the
# python-runtime image the dev cluster already holds. It keeps the upstream router's HTTP contract for plain
# requests: the target is X-Sandbox-Pod-IP (else the sandbox's Service DNS name) on X-Sandbox-Port (8888),
# the routing, hop-by-hop, Host and Authorization headers are not forwarded, and a sandbox that cannot be
# reached answers 502. The client sends X-Sandbox-Pod-IP from the Sandbox's status, and the dev cluster has no
# DNS, so the pod IP is the path used there. Not kept: WebSockets, streaming, authentication.
import http.client
import ipaddress
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$")
ROUTER_HEADERS = {"x-sandbox-id", "x-sandbox-namespace", "x-sandbox-port", "x-sandbox-pod-ip", "x-sandbox-timeout"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}
PROXY_TIMEOUT = 180.0


class RoutingError(Exception):
    pass


def target(headers):
    sandbox_id = headers.get("X-Sandbox-ID") or ""
    if not DNS_LABEL.match(sandbox_id) or len(sandbox_id) > 63:
        raise RoutingError("X-Sandbox-ID header is required and must be a DNS label.")
    namespace = headers.get("X-Sandbox-Namespace") or "default"
    if not DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise RoutingError("Invalid namespace format.")
    try:
        port = int(headers.get("X-Sandbox-Port") or 8888)
        if not 1 <= port <= 65535:
            raise ValueError()
    except ValueError:
        raise RoutingError("Invalid port format.")
    pod_ip = headers.get("X-Sandbox-Pod-IP")
    if pod_ip:
        try:
            ip = ipaddress.ip_address(pod_ip)
        except ValueError:
            raise RoutingError("Invalid target IP address format.")
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            raise RoutingError("Invalid target IP address.")
        return str(ip), port, sandbox_id
    return f"{sandbox_id}.{namespace}.svc.cluster.local", port, sandbox_id


def timeout(headers):
    try:
        value = float(headers.get("X-Sandbox-Timeout") or PROXY_TIMEOUT)
    except ValueError:
        return PROXY_TIMEOUT
    return value if 0 < value <= PROXY_TIMEOUT else PROXY_TIMEOUT


class Router(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def proxy(self):
        if self.command == "GET" and self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        try:
            host, port, sandbox_id = target(self.headers)
        except RoutingError as e:
            return self.reply(400, {"detail": str(e)})
        self.log_message("%s %s for sandbox %s to %s:%s", self.command, self.path, sandbox_id, host, port)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self.reply(411, {"detail": "this router takes request bodies with a Content-Length only"})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        excluded = ROUTER_HEADERS | HOP_BY_HOP | {"host", "authorization", "content-length"}
        excluded |= {t.strip().lower() for t in (self.headers.get("Connection") or "").split(",")}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in excluded}
        try:
            conn = http.client.HTTPConnection(host, port, timeout=timeout(self.headers))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
        except OSError as e:
            self.log_message("sandbox %s at %s:%s: %s", sandbox_id, host, port, e)
            return self.reply(502, {"detail": f"Could not connect to the backend sandbox: {sandbox_id}"})
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:  # send_response wrote its own
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):
        pass  # the readiness probe's every second; proxied requests are logged with their target above

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = proxy


ThreadingHTTPServer(("0.0.0.0", 8080), Router).serve_forever()
