"""A tiny stand-in for vLLM's OpenAI-compatible server (http.server in a thread): answers like
vLLM, or answers garbage, dies mid-request or hangs, as a test asks. No engine behind it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """mode: "ok" | "garbage" (200, not JSON) | "bad_shape" (JSON without logprobs) |
    "die" (closes the connection without answering) | "hang" (never answers) | "error" (500);
    only /v1/completions misbehaves. `bodies` holds every completion request received.

    rl: the RL endpoints it has (vLLM 0.32's paths, e.g. {"/pause", "/resume"}), listed in its
    /openapi.json and answered like vLLM; None = no /openapi.json and no RL endpoint (a server
    without VLLM_SERVER_DEV_MODE). rl_fail: {path: HTTP status} for endpoints that fail.
    `calls` holds (method, path with query, body) of every RL call."""

    def __init__(
        self,
        mode: str = "ok",
        server_info: dict | None = None,
        api_key: str | None = None,
        log_path=None,
        rl: set | None = None,
        rl_fail: dict | None = None,
        schema: bool = True,
    ):
        self.mode = mode
        self.rl = rl
        self.rl_fail = rl_fail or {}
        self.schema = schema
        self.calls: list[tuple] = []
        self.paused = False
        self.version = None
        self.weights = None
        self.server_info = server_info
        self.api_key = api_key
        self.bodies: list[dict] = []
        self.log_path = log_path
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # the "server's log"
                if fake.log_path is not None:
                    with open(fake.log_path, "a") as fh:
                        fh.write("fake-vllm: " + (fmt % args) + "\n")

            def _send(self, status: int, payload, raw: bytes | None = None):
                body = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200, {})
                if not self._authorized():
                    return None
                if self.path == "/v1/models":
                    return self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": "tiny",
                                    "object": "model",
                                    "root": "/models/tiny",
                                    "max_model_len": 512,
                                }
                            ],
                        },
                    )
                if self.path == "/version":
                    return self._send(200, {"version": "0.32.0"})
                if self.path.startswith("/server_info") and fake.server_info is not None:
                    return self._send(200, fake.server_info)
                if self.path == "/openapi.json" and fake.rl is not None and fake.schema:
                    paths = {"/v1/completions": {"post": {}}, "/health": {"get": {}}}
                    for p in fake.rl:
                        paths[p] = {"get" if p in ("/weight_info", "/is_paused") else "post": {}}
                    return self._send(200, {"openapi": "3.1.0", "paths": paths})
                if fake.rl is not None and self.path in fake.rl:
                    return self._rl("GET", {})
                return self._send(404, {"detail": "Not Found"})

            def _rl(self, method, body):
                path = self.path.split("?")[0]
                fake.calls.append((method, self.path, body))
                if path in fake.rl_fail:
                    return self._send(fake.rl_fail[path], {"error": f"{path} failed"})
                if path == "/pause":
                    fake.paused = True
                    return self._send(200, {"status": "paused"})
                if path == "/resume":
                    fake.paused = False
                    return self._send(200, {"status": "resumed"})
                if path == "/update_weight_version":
                    fake.version = body.get("new_version")
                    return self._send(200, {"success": True, "new_version": fake.version})
                if path == "/weight_info":
                    return self._send(200, {"weight_version": fake.version})
                if path == "/reset_prefix_cache":
                    return self._send(200, {"success": True})
                if path == "/collective_rpc":
                    fake.weights = body.get("kwargs", {}).get("weights_path")
                    return self._send(200, {"results": [None]})
                if path == "/weight_checker":  # the head's parameter changes with a reload
                    return self._send(
                        200,
                        {"checksums": {"lm_head.weight": str(fake.weights), "norm.weight": "same"}},
                    )
                return self._send(200, {"message": "ok"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorized():
                    return None
                if fake.rl is not None and self.path.split("?")[0] in fake.rl:
                    return self._rl("POST", body)
                fake.bodies.append(body)
                if self.path != "/v1/completions":
                    return self._send(404, {"detail": "Not Found"})
                if fake.mode == "garbage":
                    return self._send(200, None, raw=b"<html>502 bad gateway</html>")
                if fake.mode == "error":
                    return self._send(500, {"error": "engine dead"})
                if fake.mode == "die":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if fake.mode == "hang":
                    fake._stop.wait(60)
                    return None
                return self._send(200, completion(body, bad=fake.mode == "bad_shape"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(body: dict, bad: bool = False) -> dict:
    """A vLLM-shaped /v1/completions answer: sample j of a prompt emits tokens seed+j+t."""
    prompt = body["prompt"]
    choices = []
    for j in range(body.get("n", 1)):
        toks = [(body.get("seed", 0) + j + t) % 100 for t in range(body["max_tokens"])]
        lp = {
            "tokens": [f"token_id:{t}" for t in toks],
            "token_logprobs": [-0.1 * (t + 1) for t in range(len(toks))],
            "top_logprobs": [
                {f"token_id:{t}": -0.1 * (i + 1), "token_id:999": -5.0} for i, t in enumerate(toks)
            ],
            "text_offset": list(range(len(toks))),
        }
        choice = {
            "index": j,
            "text": " ".join(map(str, toks)),
            "finish_reason": "length",
            "logprobs": None if bad else lp,
            "token_ids": toks,
        }
        if body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": -0.5, "rank": 1, "decoded_token": "x"}} for t in prompt[1:]
            ]
        choices.append(choice)
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": len(prompt)},
    }
