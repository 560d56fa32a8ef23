"""OpenMeter's own Python SDK (PyPI `openmeter`) against a running tollgate-billing.

Usage: python conformance.py BASE_URL TOKEN
Exits non-zero with the failing step on any mismatch. Each step prints a line, so the Rust test
that runs this script shows how far it got.
"""

import datetime as dt
import sys
import time
import uuid

from corehttp.exceptions import HttpResponseError, ResourceNotFoundError
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


def iso(t):
    return t.isoformat().replace("+00:00", "Z")


def refused(status, fn, *args, contains="", **kwargs):
    """The call fails with this HTTP status and a problem detail mentioning `contains`."""
    try:
        fn(*args, **kwargs)
    except HttpResponseError as e:
        detail = str(e) + " " + (e.response.text() if e.response is not None else "")
        check(e.status_code == status, f"{fn.__name__}: status {e.status_code} != {status}: {detail}")
        check(contains in detail, f"{fn.__name__}: {contains!r} not in {detail}")
        return
    raise SystemExit(f"FAILED: {fn.__name__}{args} was accepted, expected {status}")


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

step("query with a JSON body (POST /api/v1/meters/{slug}/query)")
res = client.meters.query("llm_tokens", {"from": iso(start), "to": iso(now), "windowSize": "HOUR",
                                         "subject": ["consumer:acme-1"], "groupBy": ["model"]})
check(sum(r.value for r in res.data) == sum(10 + i for i in range(30)), f"POST token sum {res.data}")
check(all(r.group_by["model"] == "gpt-4o" and r.subject == "consumer:acme-1" for r in res.data),
      f"POST rows grouped {res.data}")
res = client.meters.query("api_requests", {"from": iso(start), "to": iso(now + dt.timedelta(minutes=2)),
                                           "filterCustomerId": [globex.id], "groupBy": ["method"]})
check(sum(r.value for r in res.data) == 10 and all(r.customer_id == globex.id for r in res.data),
      f"POST customer filter: rows carry customerId {res.data}")
res = client.meters.query("api_requests", {"filterGroupBy": {"method": ["PUT", "POST"]}})
check(sum(r.value for r in res.data) == 16, f"filterGroupBy any-of: 15 POST + 1 PUT, got {res.data}")
refused(400, client.meters.query, "llm_tokens", {"groupBy": ["colour"]}, contains="groupBy")
refused(400, client.meters.query, "llm_tokens", {"from": iso(now), "to": iso(start)}, contains="from")

step("advancedMeterGroupByFilters on queries")
lab = []
models = ["gpt-4o", "gpt-4o-mini", "claude-3"]
for i in range(6):
    lab.append({"id": f"lab-{i}", "source": "sdk-test", "specversion": "1.0", "type": "kong.llm_request",
                "subject": "consumer:lab-1", "time": iso(start + dt.timedelta(minutes=i)),
                "data": {"model": models[i % 3], "type": "request" if i < 3 else "response",
                         "tokens": 100 * (i + 1), "provider": "openai" if i % 3 < 2 else "anthropic"}})
before_lab = dt.datetime.now(dt.timezone.utc)
time.sleep(0.05)
client.events.ingest_events(lab)
# tokens: gpt-4o 100+400, gpt-4o-mini 200+500, claude-3 300+600
window = {"from": iso(start), "to": iso(now + dt.timedelta(minutes=1)), "subject": ["consumer:lab-1"]}


def lab_sum(filters, via_get=False):
    if via_get:
        res = client.meters.query_json("llm_tokens", from_parameter=start, to=now + dt.timedelta(minutes=1),
                                       subject=["consumer:lab-1"], advanced_meter_group_by_filters=filters)
    else:
        res = client.meters.query("llm_tokens", {**window, "advancedMeterGroupByFilters": filters})
    return sum(r.value for r in res.data)


check(lab_sum({"model": {"$like": "gpt-4o%"}}) == 1200, "$like")
check(lab_sum({"model": {"$ilike": "GPT-4O"}}) == 500, "$ilike")
check(lab_sum({"model": {"$in": ["gpt-4o", "claude-3"]}, "type": {"$eq": "request"}}) == 400, "$in + $eq")
check(lab_sum({"model": {"$nin": ["claude-3"]}}, via_get=True) == 1200, "$nin (GET, JSON parameter)")
check(lab_sum({"model": {"$ne": "gpt-4o"}}) == 1600, "$ne")
check(lab_sum({"model": {"$or": [{"$eq": "claude-3"}, {"$nlike": "gpt%"}]}}) == 900, "$or")
check(lab_sum({"model": {"$and": [{"$gte": "gpt-4o"}, {"$lt": "gpt-4o-z"}]}}) == 1200, "$and of $gte/$lt")
refused(400, client.meters.query, "llm_tokens", {"advancedMeterGroupByFilters": {"model": {"$eq": "a", "$ne": "b"}}},
        contains="advancedMeterGroupByFilters.model")
refused(400, client.meters.query, "llm_tokens", {"advancedMeterGroupByFilters": {"colour": {"$eq": "red"}}},
        contains="advancedMeterGroupByFilters.colour")

step("meter update (PUT /api/v1/meters/{slug})")
updated = client.meters.update("llm_tokens", {"name": "LLM tokens", "description": "Tokens per model",
                                              "groupBy": {"model": "$.model", "type": "$.type",
                                                          "provider": "$.provider"},
                                              "metadata": {"team": "ml"}})
check(updated.name == "LLM tokens" and updated.description == "Tokens per model", f"updated {updated}")
check(set(updated.group_by) == {"model", "type", "provider"}, f"groupBy {updated.group_by}")
check(client.meters.get("llm_tokens").group_by.get("provider") == "$.provider", "update persisted")
res = client.meters.query("llm_tokens", {**window, "groupBy": ["provider"]})
by_provider = {r.group_by["provider"]: r.value for r in res.data}
check(by_provider == {"openai": 1200, "anthropic": 900}, f"a new group-by covers past events {by_provider}")
refused(400, client.meters.update, "llm_tokens", {"aggregation": "MAX", "groupBy": updated.group_by},
        contains="aggregation")
refused(400, client.meters.update, "llm_tokens", {"eventType": "other", "groupBy": updated.group_by},
        contains="eventType")
refused(404, client.meters.update, "no_such_meter", {"name": "x"})

step("meter subjects and group-by values")
check(client.meters.list_group_by_values("llm_tokens", "provider") == ["anthropic", "openai"],
      "group-by values of the last 24 h (provider exists only on the lab events)")
check(client.meters.list_group_by_values("llm_tokens", "model", from_parameter=start) ==
      ["claude-3", "gpt-4o", "gpt-4o-mini"], "model values")
check(client.meters.list_group_by_values("llm_tokens", "model", from_parameter=start,
                                         to=start + dt.timedelta(minutes=1)) == ["gpt-4o", "gpt-4o-mini"],
      "to is inclusive: the lab events of minutes 0 and 1")
refused(400, client.meters.list_group_by_values, "llm_tokens", "colour", contains="groupByKey")
check(client.meters.list_subjects("api_requests", from_parameter=start) ==
      ["consumer:acme-1", "consumer:globex-1"], "meter subjects")
check(client.meters.list_subjects("llm_tokens", from_parameter=start, to=start + dt.timedelta(minutes=2)) ==
      ["consumer:acme-1", "consumer:lab-1"], "meter subjects in a range")

step("features and entitlements")
client.features.create({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"})
client.features.create({"key": "gpt4o_prompt", "name": "GPT-4o prompt tokens", "meterSlug": "llm_tokens",
                        "meterGroupByFilters": {"model": "gpt-4o", "type": "request"}})
client.features.create({"key": "sso", "name": "SSO"})
lab_feature = client.features.create({"key": "openai_tokens", "name": "OpenAI tokens", "meterSlug": "llm_tokens",
                                      "advancedMeterGroupByFilters": {"model": {"$like": "gpt%"},
                                                                      "type": {"$eq": "request"}}})
check(lab_feature.advanced_meter_group_by_filters["model"]["$like"] == "gpt%", f"feature {lab_feature}")
refused(400, client.features.create, {"key": "bad_filter", "name": "x", "meterSlug": "llm_tokens",
                                      "advancedMeterGroupByFilters": {"model": {"$regex": "g.*"}}},
        contains="advancedMeterGroupByFilters")
refused(409, client.meters.update, "llm_tokens", {"groupBy": {"model": "$.model"}}, contains="type")
client.customers.create({"name": "Lab", "key": "lab", "usageAttribution": {"subjectKeys": ["consumer:lab-1"]}})
client.customer_entitlements_v2.post("lab", {
    "type": "metered", "featureKey": "openai_tokens", "usagePeriod": {"interval": "MONTH"},
    "measureUsageFrom": iso(start), "issue": {"amount": 1000}})
ent = client.customer_entitlements_v2.post("acme", {
    "type": "metered", "featureKey": "api_calls", "isSoftLimit": False,
    "usagePeriod": {"interval": "MONTH"}, "measureUsageFrom": start.isoformat().replace("+00:00", "Z")})
# The SDK returns the EntitlementV2 union as a plain mapping.
feature_key = ent["featureKey"] if isinstance(ent, dict) else ent.feature_key
check(feature_key == "api_calls", f"entitlement {ent}")
acme_grant = client.customer_entitlement_v2.create_customer_entitlement_grant("acme", "api_calls", {
    "amount": 100, "priority": 1, "effectiveAt": (start - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    "expiration": {"duration": "MONTH", "count": 1}})
client.customer_entitlements_v2.post("acme", {"type": "boolean", "featureKey": "sso"})
second_grant = client.customer_entitlement_v2.create_customer_entitlement_grant("acme", "api_calls", {
    "amount": 5, "priority": 9, "effectiveAt": iso(start - dt.timedelta(hours=1))})

step("v2 grant listing (GET /api/v2/customers/{c}/entitlements/{f}/grants)")
page = client.customer_entitlement_v2.get_grants("acme", "api_calls")
check(page.total_count == 2 and page.page == 1 and page.page_size == 100, f"paginated {page}")
check([g.id for g in page.items_property] == [acme_grant.id, second_grant.id], f"creation order {page.items_property}")
check(page.items_property[0].amount == 100 and page.items_property[0].entitlement_id, f"EntitlementGrantV2 {page.items_property[0]}")
page = client.customer_entitlement_v2.get_grants("acme", "api_calls", page=2, page_size=1, order="ASC",
                                                 order_by="createdAt")
check(page.total_count == 2 and [g.id for g in page.items_property] == [second_grant.id], f"page 2 of 1 {page}")
page = client.customer_entitlement_v2.get_grants("acme", "api_calls", order="DESC")
check([g.id for g in page.items_property] == [second_grant.id, acme_grant.id], f"DESC {page.items_property}")
page = client.customer_entitlement_v2.get_grants("acme", "api_calls", limit=1, offset=1)
check([g.id for g in page.items_property] == [second_grant.id], f"limit/offset {page}")
refused(400, client.customer_entitlement_v2.get_grants, "acme", "api_calls", page_size=5000,
        contains="pageSize")
refused(404, client.customer_entitlement_v2.get_grants, "nobody", "api_calls", contains="nobody")

step("entitlement values")
v = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "api_calls")
check(v.has_access is True, f"has access {v}")
check(v.usage == 21, f"acme usage {v.usage} != 21 (20 batch + 1 single)")
check(v.balance == 84, f"balance {v.balance} != 84 (100 + 5 granted, 21 used)")
check(v.grant_balances == {acme_grant.id: 79, second_grant.id: 5},
      f"grantBalances: the priority-1 grant burns first {v.grant_balances}")
v1 = client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls")
check(v1.balance == 84 and v1.usage == 21, f"v1 customer value {v1}")
check("grantBalances" not in v1, f"v1 values have no grantBalances {v1}")
b = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "sso")
check(b.has_access is True, "boolean entitlement")
g = client.customer_entitlement_v2.get_customer_entitlement_value("globex", "sso")
check(g.has_access is False, "no entitlement: no access")

lab_value = client.customer_entitlement_v2.get_customer_entitlement_value("lab", "openai_tokens")
check(lab_value.usage == 300, f"feature advanced filters: gpt requests 100 + 200, got {lab_value}")
check(lab_value.balance == 700, f"lab balance {lab_value}")

step("every grant (GET /api/v2/grants, /api/v1/grants) and voiding (DELETE /api/v1/grants/{id})")
listed = client.grants_v2.list(customer=["acme"])
check(listed.total_count == 2 and [g.id for g in listed.items_property] == [acme_grant.id, second_grant.id],
      f"v2 grants of acme {listed}")
check(client.grants_v2.list(feature=["sso"]).total_count == 0, "no grants on sso")
check(client.grants_v2.list(feature=["api_calls"], order="DESC").items_property[0].id == second_grant.id, "DESC")
listed = client.grants.list(subject=["consumer:acme-1"])
check(isinstance(listed, list) and [g["id"] for g in listed] == [acme_grant.id, second_grant.id],
      f"v1 grants: a plain list, subject resolved through the customer {listed}")
listed = client.grants.list(page=2, page_size=1)
check(listed["totalCount"] == 2 and [g["id"] for g in listed["items"]] == [second_grant.id],
      f"v1 grants paginated when a page is asked {listed}")
refused(400, client.grants.delete, second_grant.id, at=now + dt.timedelta(hours=1), contains="at")
client.grants.delete(second_grant.id)
v = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "api_calls")
check(v.balance == 79 and v.grant_balances == {acme_grant.id: 79},
      f"a voided grant burns no more and its balance is gone {v}")
voided = client.customer_entitlement_v2.get_grants("acme", "api_calls").items_property[1]
check(voided.voided_at is not None, f"voidedAt shown {voided}")
refused(409, client.grants.delete, second_grant.id, contains="already voided")
refused(404, client.grants.delete, "no-such-grant", contains="no-such-grant")

step("subjects (/api/v1/subjects)")
made = client.subjects.upsert([{"key": "consumer:acme-1", "displayName": "ACME production"},
                               {"key": "consumer:lab-1", "metadata": {"team": "research"}}])
check([m.key for m in made] == ["consumer:acme-1", "consumer:lab-1"] and all(m.id for m in made), f"upsert {made}")
check(made[0].display_name == "ACME production" and made[0].created_at, f"Subject shape {made[0]}")
again = client.subjects.upsert([{"key": "consumer:acme-1", "metadata": {"tier": "gold"}}])
check(again[0].id == made[0].id and again[0].display_name == "ACME production"
      and again[0].metadata == {"tier": "gold"}, f"partial update keeps what it does not name {again}")
cleared = client.subjects.upsert([{"key": "consumer:lab-1", "displayName": None, "metadata": None}])
check(cleared[0].display_name is None and cleared[0].metadata is None, f"null clears {cleared}")
check([s.key for s in client.subjects.list()] == ["consumer:acme-1", "consumer:lab-1"], "list")
check(client.subjects.get("consumer:acme-1").metadata == {"tier": "gold"}, "get by key")
check(client.subjects.get(made[1].id).key == "consumer:lab-1", "get by id")
client.subjects.delete("consumer:lab-1")
refused(404, client.subjects.get, "consumer:lab-1", contains="consumer:lab-1")
check([s.key for s in client.subjects.list()] == ["consumer:acme-1"], "deleted")
csv = client.meters.query_csv("api_requests", group_by=["subject"]).splitlines()
check(csv[0] == "window_start,window_end,subject,subject_display_name,value", f"CSV header {csv[0]}")
check(any(",consumer:acme-1,ACME production,21.000000" in line for line in csv), f"display name in CSV {csv}")
csv = client.meters.query_csv("api_requests", filter_customer_id=[globex.id], group_by=["method"]).splitlines()
check(csv[0] == "window_start,window_end,method,customer_id,value"
      and sorted(line.split(",", 2)[2] for line in csv[1:]) == [f"GET,{globex.id},5.000000", f"POST,{globex.id},5.000000"],
      f"CSV by customer {csv}")
csv = client.meters.query_csv_post("llm_tokens").splitlines()
check(csv[0] == "window_start,window_end,value" and len(csv) == 2, f"CSV of an empty POST query {csv}")
refused(400, client.subjects.upsert, [{"key": "x", "stripeCustomerId": "acct_1"}], contains="stripeCustomerId")
refused(400, client.subjects.upsert, [{"displayName": "no key"}], contains="key")

step("event list filters (customerId, ingestedAtFrom/To)")
listed = client.events.list(customer_id=[globex.id], limit=100)
check(len(listed) == 10 and all(e.event.subject == "consumer:globex-1" and e.customer_id == globex.id
                                for e in listed), f"globex's events {[(e.event.id, e.customer_id) for e in listed]}")
listed = client.events.list(ingested_at_from=before_lab, limit=100)
check(sorted(e.event.id for e in listed) == sorted(e["id"] for e in lab), f"ingested since {[e.event.id for e in listed]}")
check(all(e.customer_id for e in listed), "lab events belong to customer lab")
listed = client.events.list(ingested_at_to=before_lab, limit=100)
check(len(listed) == 61 and not any(e.event.id.startswith("lab-") for e in listed),
      f"ingested before the lab events: 60 + 1 (the retry deduplicated), got {len(listed)}")
listed = client.events.list(ingested_at_to=before_lab, customer_id=[acme.id], limit=100)
check(len(listed) == 51 and all(e.customer_id == acme.id for e in listed), f"acme only: 20 + 30 + 1, got {len(listed)}")
listed = client.events.list(ingested_at_from=before_lab, ingested_at_to=before_lab, limit=100)
check(listed == [], f"an empty ingest window lists nothing {listed}")
refused(400, client.events.list, customer_id=["nobody"], contains="customerId")

print("conformance: all steps passed", flush=True)
