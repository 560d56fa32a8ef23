"""A webhook receiver for billing's notification tests: verifies every request's Standard Webhooks
signature with the `standardwebhooks` reference library (PyPI) and appends one JSON line per
request to a log: {"id", "verified", "error"?, "payload"?, "headers"}.

usage: webhook_receiver.py PORT SECRET LOG [hold-first SECONDS]

With `hold-first SECONDS`, the first request is logged and then held that long before it is
answered (so billing can be killed mid-delivery); every other request is answered 200 at once.
A request whose signature does not verify is answered 400.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

PORT, SECRET, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
HOLD = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "hold-first" else 0.0
hook = Webhook(SECRET)
lock = threading.Lock()
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        line = {"id": headers.get("webhook-id"), "headers": headers}
        try:
            line["payload"] = hook.verify(body, headers)
            line["verified"] = True
        except Exception as e:  # noqa: BLE001 - any failure is a failed verification
            line["verified"] = False
            line["error"] = f"{type(e).__name__}: {e}"
        with lock:
            seen["n"] += 1
            first = seen["n"] == 1
            with open(LOG, "a") as f:
                f.write(json.dumps(line) + "\n")
        if first and HOLD:
            time.sleep(HOLD)
        self.send_response(200 if line["verified"] else 400)
        self.end_headers()
        self.wfile.write(b"ok" if line["verified"] else line["error"].encode())

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("listening", flush=True)
server.serve_forever()
