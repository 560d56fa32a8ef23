"""OpenMeter's own Python SDK (PyPI `openmeter` 1.0.0b236) driving tollgate-billing's
notification API unchanged: channels, rules, a test send, events (list, get, resend).

Usage: python notifications.py BASE_URL TOKEN
Exits non-zero with the failing step on any mismatch; prints "notifications: all steps passed".
"""

import sys

from corehttp.exceptions import HttpResponseError
from openmeter import Client

base, token = sys.argv[1], sys.argv[2]
client = Client(endpoint=base, token=token)


def step(name):
    print(f"step: {name}", flush=True)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


step("create a channel: the secret is generated")
ch = client.notification_channels.create(
    {"type": "WEBHOOK", "name": "sdk hook", "url": "http://127.0.0.1:9/hook",
     "customHeaders": {"x-team": "billing"}}
)
check(ch["id"] and ch["type"] == "WEBHOOK", f"channel {ch}")
check(ch["signingSecret"].startswith("whsec_"), f'secret {ch["signingSecret"]}')
check(ch["customHeaders"] == {"x-team": "billing"}, f'headers {ch["customHeaders"]}')

step("update, get and list channels")
ch2 = client.notification_channels.update(
    ch["id"], {"type": "WEBHOOK", "name": "sdk hook 2", "url": "http://127.0.0.1:9/hook2"}
)
check(ch2["name"] == "sdk hook 2" and ch2["signingSecret"] == ch["signingSecret"], f"updated {ch2}")
check(client.notification_channels.get(ch["id"])["url"].endswith("/hook2"), "get")
page = client.notification_channels.list()
check(page["totalCount"] == 1 and page["items"][0]["id"] == ch["id"], f"list {page}")

step("a bad secret is refused, naming the field")
try:
    client.notification_channels.create(
        {"type": "WEBHOOK", "name": "x", "url": "http://127.0.0.1:9/", "signingSecret": "nope"}
    )
    check(False, "a bad secret was accepted")
except HttpResponseError as e:
    check(e.status_code == 400 and "signingSecret" in e.response.text(), str(e))

step("create rules of each type")
th = client.notification_rules.create(
    {"type": "entitlements.balance.threshold", "name": "quota", "channels": [ch["id"]],
     "thresholds": [{"value": 80, "type": "usage_percentage"}, {"value": 100, "type": "PERCENT"}]}
)
check(th["type"] == "entitlements.balance.threshold" and len(th["thresholds"]) == 2, f"rule {th}")
check(th["channels"][0]["id"] == ch["id"], f'channels {th["channels"]}')
for kind in ["entitlements.reset", "invoice.created", "invoice.updated"]:
    r = client.notification_rules.create({"type": kind, "name": kind, "channels": [ch["id"]]})
    check(r["type"] == kind, f"rule {r}")
rules = client.notification_rules.list()
check(rules["totalCount"] == 4, f'rules {rules["totalCount"]}')
check(client.notification_rules.list(channel=[ch["id"]]).total_count == 4, "rules by channel")

step("test send: a real event, annotated")
ev = client.notification_rules.test(th["id"])
check(ev["type"] == "entitlements.balance.threshold", f"event {ev}")
check(ev["annotations"].get("notification.rule.test") is True, f'annotations {ev["annotations"]}')
check(ev["rule"]["id"] == th["id"], "rule of the event")
check(ev["payload"]["data"]["threshold"]["value"] == 80, f'payload {ev["payload"]}')
check(ev["deliveryStatus"][0]["channel"]["id"] == ch["id"], f'status {ev["deliveryStatus"]}')

step("events: list, get, resend")
evs = client.notification_events.list(rule=[th["id"]])
check(evs["totalCount"] == 1 and evs["items"][0]["id"] == ev["id"], f"events {evs}")
got = client.notification_events.get(ev["id"])
check(got["id"] == ev["id"] and got["deliveryStatus"][0]["state"] in
      ("PENDING", "SENDING", "FAILED", "SUCCESS"), f"get {got}")
client.notification_events.resend(ev["id"], {})
got = client.notification_events.get(ev["id"])
check(got["deliveryStatus"][0]["state"] in ("RESENDING", "SENDING", "PENDING"), f"resent {got}")

step("a channel in use is not deleted; a rule is")
try:
    client.notification_channels.delete(ch["id"])
    check(False, "a channel in use was deleted")
except HttpResponseError as e:
    check(e.status_code == 409, str(e))
client.notification_rules.delete(th["id"])
check(client.notification_rules.list()["totalCount"] == 3, "rule deleted")

print("notifications: all steps passed")
