#!/usr/bin/env python3
"""An EXAMPLE of the Kong side of Tollgate's notifications: a webhook receiver that turns
tollgate-billing's events into Kong consumer-group changes.

* `entitlements.balance.threshold` at 100 % or more (usage_percentage/PERCENT) puts the subject's
  consumer in the consumer group GROUP (e.g. one whose rate-limiting plugin allows nothing, or
  that a route's ACL denies);
* `entitlements.reset` (a new usage period) takes it out again.

The subject key is taken as the Kong consumer's username. Consumer groups are a Kong Gateway
Enterprise feature: the Admin API calls are `POST /consumer_groups/{group}/consumers`
({"consumer": ...}) and `DELETE /consumer_groups/{group}/consumers/{consumer}`. Kong is not run
by Tollgate's tests; `plan` (what the tests run) prints the calls a payload leads to.

usage:
  quota-webhook.py serve --port 9000 --secret whsec_... --admin-url http://127.0.0.1:8001 \
      [--group over-quota] [--dry-run]
  quota-webhook.py plan [--group over-quota] < payload.json

Signatures are verified with the `standardwebhooks` package (pip install standardwebhooks).
"""

import argparse
import json
import sys
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer


def plan(payload, group):
    """The Admin API calls (method, path, body) a notification payload leads to."""
    kind = payload.get("type")
    data = payload.get("data") or {}
    consumer = (data.get("subject") or {}).get("key")
    if not consumer:
        return []
    g = urllib.parse.quote(group, safe="")
    c = urllib.parse.quote(consumer, safe="")
    if kind == "entitlements.balance.threshold":
        t = data.get("threshold") or {}
        if t.get("type") in ("usage_percentage", "PERCENT") and float(t.get("value", 0)) >= 100:
            return [("POST", f"/consumer_groups/{g}/consumers", {"consumer": consumer})]
    if kind == "entitlements.reset":
        return [("DELETE", f"/consumer_groups/{g}/consumers/{c}", None)]
    return []


def apply(admin_url, calls):
    for method, path, body in calls:
        req = urllib.request.Request(
            admin_url.rstrip("/") + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except urllib.error.HTTPError as e:
            # Already in the group (409) or already out (404): the change is in place.
            if e.code not in (404, 409):
                raise


def serve(args):
    from standardwebhooks.webhooks import Webhook

    hook = Webhook(args.secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                payload = hook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except Exception as e:  # noqa: BLE001
                self.send_response(400)
                self.end_headers()
                self.wfile.write(f"signature: {e}".encode())
                return
            calls = plan(payload, args.group)
            try:
                if args.dry_run:
                    for c in calls:
                        print(json.dumps(c), flush=True)
                else:
                    apply(args.admin_url, calls)
            except Exception as e:  # noqa: BLE001 - answer 500: billing retries
                self.send_response(500)
                self.end_headers()
                self.wfile.write(str(e).encode())
                return
            self.send_response(204)
            self.end_headers()

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--admin-url", default="http://127.0.0.1:8001")
    s.add_argument("--group", default="over-quota")
    s.add_argument("--dry-run", action="store_true")
    pl = sub.add_parser("plan")
    pl.add_argument("--group", default="over-quota")
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
    else:
        for c in plan(json.load(sys.stdin), args.group):
            print(json.dumps(c))


if __name__ == "__main__":
    main()
