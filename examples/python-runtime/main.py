"""The agent-sandbox runtime API: GET / (health) and POST /execute {"command": "..."}."""
import json
import os
import shlex
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE_DIR = os.environ.get("SANDBOX_BASE_DIR", "/workspace")


def execute(command):
    try:
        p = subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=BASE_DIR, timeout=300)
        return {"stdout": p.stdout, "stderr": p.stderr, "exit_code": p.returncode}
    except Exception as e:  # a bad command is the caller's answer, not the server's end
        return {"stdout": "", "stderr": f"Failed to execute command: {e}", "exit_code": 1}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/":
            return self.reply(404, {"detail": "Not Found"})
        self.reply(200, {"status": "ok", "message": "Sandbox Runtime is active."})

    def do_POST(self):
        if self.path != "/execute":
            return self.reply(404, {"detail": "Not Found"})
        try:
            command = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))["command"]
        except Exception as e:
            return self.reply(422, {"detail": f"expected a JSON body {{\"command\": \"...\"}}: {e}"})
        self.reply(200, execute(command))


ThreadingHTTPServer(("0.0.0.0", 8888), Handler).serve_forever()
