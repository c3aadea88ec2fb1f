"""The one stand-in for an OpenAI-compatible chat endpoint in tests (LLM prompts, VLM instructions and judges, the
chat client's retries): a ``/v1/chat/completions`` server on 127.0.0.1 in a thread."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChatServer:
    """``reply``: ``request body -> text`` (the assistant message) or a dict (the whole response body), or such a
    value itself; default ``"ok"``. ``statuses``: the HTTP statuses of the first requests in turn (then 200); a
    non-200 answer is ``{"error": ...}``. Keeps every request's ``bodies`` and ``headers``; ``requests`` counts
    them. Serves from construction until its ``with`` block ends."""

    def __init__(self, reply=None, statuses=()):
        outer, self.bodies, self.headers = self, [], []
        statuses, lock = list(statuses), threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers))
                    status = statuses.pop(0) if statuses else 200
                if status != 200:
                    data = {"error": f"status {status}"}
                else:
                    answer = reply(body) if callable(reply) else ("ok" if reply is None else reply)
                    data = answer if isinstance(answer, dict) else \
                        {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
