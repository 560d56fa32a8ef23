"""OpenMeter's own Python SDK (PyPI `openmeter`) against a running tollgate-billing.

Usage: python conformance.py BASE_URL TOKEN
Exits non-zero with the failing step on any mismatch. Each step prints a line, so the Rust test
that runs this script shows how far it got.
"""

import datetime as dt
import sys
import uuid

from openmeter import Client

base, token = sys.argv[1], sys.argv[2]
client = Client(endpoint=base, token=token)
now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
start = now - dt.timedelta(minutes=30)


def step(name):
    print(f"step: {name}", flush=True)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


step("create meters")
api_meter = client.meters.create({"slug": "api_requests", "eventType": "kong.api_request",
                                  "aggregation": "COUNT", "groupBy": {"method": "$.request_method"}})
check(api_meter.slug == "api_requests" and api_meter.id, f"meter create returned {api_meter}")
tokens = client.meters.create({"slug": "llm_tokens", "eventType": "kong.llm_request", "aggregation": "SUM",
                               "valueProperty": "$.tokens", "groupBy": {"model": "$.model", "type": "$.type"}})
check(tokens.aggregation == "SUM", "SUM meter")
check({m.slug for m in client.meters.list()} >= {"api_requests", "llm_tokens"}, "meters listed")

step("create customers")
acme = client.customers.create({"name": "ACME", "key": "acme",
                                "usageAttribution": {"subjectKeys": ["consumer:acme-1"]}})
check(acme.key == "acme" and acme.id, f"customer {acme}")
globex = client.customers.create({"name": "Globex", "key": "globex",
                                  "usageAttribution": {"subjectKeys": ["consumer:globex-1"]}})

step("ingest (batch and single)")
events = []
for i in range(30):
    t = (start + dt.timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
    events.append({"id": f"api-{i}", "source": "sdk-test", "specversion": "1.0", "type": "kong.api_request",
                   "subject": "consumer:acme-1" if i % 3 else "consumer:globex-1", "time": t,
                   "data": {"request_method": "GET" if i % 2 else "POST"}})
    events.append({"id": f"llm-{i}", "source": "sdk-test", "specversion": "1.0", "type": "kong.llm_request",
                   "subject": "consumer:acme-1", "time": t,
                   "data": {"type": "request", "tokens": str(10 + i), "model": "gpt-4o"}})
client.events.ingest_events(events)
client.events.ingest_events(events[:10])  # a retry: deduplicated
client.events.ingest_event({"id": str(uuid.uuid4()), "source": "sdk-test", "specversion": "1.0",
                            "type": "kong.api_request", "subject": "consumer:acme-1",
                            "data": {"request_method": "PUT"}})

step("query meters")
res = client.meters.query_json("api_requests", from_parameter=start, to=now + dt.timedelta(minutes=2))
total = sum(r.value for r in res.data)
check(total == 31, f"api_requests total {total} != 31 (30 + 1, retry deduplicated)")
res = client.meters.query_json("api_requests", from_parameter=start, to=now + dt.timedelta(minutes=2),
                               group_by=["method"], filter_customer_id=[globex.id])
by_method = {r.group_by["method"]: r.value for r in res.data}
check(sum(by_method.values()) == 10, f"globex has every third request: {by_method}")
res = client.meters.query_json("llm_tokens", from_parameter=start, to=now, window_size="HOUR",
                               window_time_zone="UTC", subject=["consumer:acme-1"])
check(sum(r.value for r in res.data) == sum(10 + i for i in range(30)), "token sum")
check(all(r.subject == "consumer:acme-1" for r in res.data), "subject on rows")
csv = client.meters.query_csv("llm_tokens", from_parameter=start, to=now, group_by=["model"])
check("gpt-4o" in csv and csv.startswith("window_start"), f"csv: {csv[:200]}")

step("features and entitlements")
client.features.create({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"})
client.features.create({"key": "gpt4o_prompt", "name": "GPT-4o prompt tokens", "meterSlug": "llm_tokens",
                        "meterGroupByFilters": {"model": "gpt-4o", "type": "request"}})
client.features.create({"key": "sso", "name": "SSO"})
ent = client.customer_entitlements_v2.post("acme", {
    "type": "metered", "featureKey": "api_calls", "isSoftLimit": False,
    "usagePeriod": {"interval": "MONTH"}, "measureUsageFrom": start.isoformat().replace("+00:00", "Z")})
# The SDK returns the EntitlementV2 union as a plain mapping.
feature_key = ent["featureKey"] if isinstance(ent, dict) else ent.feature_key
check(feature_key == "api_calls", f"entitlement {ent}")
client.customer_entitlement_v2.create_customer_entitlement_grant("acme", "api_calls", {
    "amount": 100, "priority": 1, "effectiveAt": (start - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    "expiration": {"duration": "MONTH", "count": 1}})
client.customer_entitlements_v2.post("acme", {"type": "boolean", "featureKey": "sso"})

step("entitlement values")
v = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "api_calls")
check(v.has_access is True, f"has access {v}")
check(v.usage == 21, f"acme usage {v.usage} != 21 (20 batch + 1 single)")
check(v.balance == 79, f"balance {v.balance} != 79")
v1 = client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls")
check(v1.balance == 79 and v1.usage == 21, f"v1 customer value {v1}")
b = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "sso")
check(b.has_access is True, "boolean entitlement")
g = client.customer_entitlement_v2.get_customer_entitlement_value("globex", "sso")
check(g.has_access is False, "no entitlement: no access")

print("conformance: all steps passed", flush=True)
