"""Subscriptions through OpenMeter's own Python SDK (PyPI `openmeter`), unchanged, against a running
tollgate-billing on its simulated clock: create (plan, custom, scheduled), the expanded view at a
time, the customer's list, change (usage counts afresh, the period grid stays), a trial phase
ending into a paid one when the clock crosses it, add-ons (quantity, merge, limits), edits (and
their refusal with add-ons), cancel (every timing), unschedule, restore, migrate, delete — and
every refused transition leaves the subscription as it was.

Usage: python subscriptions.py BASE_URL TOKEN
Exits non-zero with the failing step on any mismatch; prints one line per step.
"""

import datetime as dt
import json
import sys
from collections.abc import Mapping

from corehttp.exceptions import HttpResponseError
from corehttp.rest import HttpRequest
from openmeter import Client

base, token = sys.argv[1], sys.argv[2]
client = Client(endpoint=base, token=token)


def step(name):
    print(f"step: {name}", flush=True)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def iso(t):
    return t.isoformat().replace("+00:00", "Z")


def parse(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def raw(method, path, body=None):
    r = client.send_request(HttpRequest(method, path, json=body) if body is not None
                            else HttpRequest(method, path))
    r.read()
    return r.status_code, (r.json() if r.content else None)


def now():
    return parse(raw("GET", "/api/tollgate/v1/clock")[1]["now"])


def advance(**kw):
    status, body = raw("POST", "/api/tollgate/v1/clock", {"to": iso(now() + dt.timedelta(**kw))})
    check(status == 200, f"advance {status} {body}")
    return body


def refused(status, fn, *args, code=None, **kwargs):
    """The call fails with `status` and problem+json whose validationErrors carry `code`."""
    try:
        fn(*args, **kwargs)
    except HttpResponseError as e:
        body = e.response.json() if e.response is not None else {}
        check(e.status_code == status, f"{fn.__name__}: status {e.status_code} != {status}: {body}")
        check(e.response.headers.get("content-type", "").startswith("application/problem+json"),
              f"{fn.__name__}: not problem+json")
        if code:
            codes = [x["code"] for x in body.get("extensions", {}).get("validationErrors", [])]
            check(code in codes, f"{fn.__name__}: {code} not in {codes}: {body}")
        return body
    raise SystemExit(f"FAILED: {fn.__name__}{args} was accepted, expected {status}")


def value(customer, feature="api_calls"):
    v = client.customer_entitlement_v2.get_customer_entitlement_value(customer, feature)
    return {"usage": v.usage, "balance": v.balance, "hasAccess": v.has_access}


def entitlements(customer):
    return raw("GET", f"/api/v2/customers/{customer}/entitlements")[1]["items"]


def expanded(sid, at=None):
    return client.subscriptions.get_expanded(sid, at=at)


def plain(x):
    """A model (a mapping of wire names) as JSON text."""
    return json.dumps(x, sort_keys=True, default=lambda o: dict(o) if isinstance(o, Mapping) else str(o))


def unchanged(sid, before, what):
    after = expanded(sid)
    for k in ("activeFrom", "activeTo", "status", "annotations", "plan"):
        check(before.get(k) == after.get(k), f"{what} changed {k}: {before.get(k)} -> {after.get(k)}")
    check(plain(before["phases"]) == plain(after["phases"]),
          f"{what} changed the phases")


def calls(customer, n, tag):
    client.events.ingest_events([{"id": f"{tag}-{i}", "source": "sdk-subscriptions", "specversion": "1.0",
                                  "type": "api_request", "subject": customer} for i in range(n)])


step("catalog: a free plan (100 calls a month), a pro plan (trial, then paid), an add-on")
client.meters.create({"slug": "api_requests", "eventType": "api_request", "aggregation": "COUNT"})
client.features.create({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"})
client.features.create({"key": "sso", "name": "Single sign-on"})


def calls_card(n, amount=None):
    return {"type": "flat_fee", "key": "api_calls", "name": "API calls", "featureKey": "api_calls",
            "billingCadence": "P1M",
            "price": None if amount is None else {"type": "flat", "amount": amount, "paymentTerm": "in_advance"},
            "entitlementTemplate": {"type": "metered", "issueAfterReset": n, "usagePeriod": "P1M"}}


sso_card = {"type": "flat_fee", "key": "sso", "name": "SSO", "featureKey": "sso", "billingCadence": "P1M",
            "price": None, "entitlementTemplate": {"type": "boolean"}}
free = client.plans.publish(client.plans.create({
    "key": "free", "name": "Free", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "free", "name": "Free", "duration": None, "rateCards": [calls_card(100)]}]}).id)


def pro_body(paid_calls):
    return {"key": "pro", "name": "Pro", "currency": "USD", "billingCadence": "P1M",
            "phases": [
                {"key": "trial", "name": "Trial", "duration": "P14D", "rateCards": [calls_card(1000), sso_card]},
                {"key": "paid", "name": "Paid", "duration": None,
                 "rateCards": [calls_card(paid_calls, "29"), sso_card]}]}


pro = client.plans.publish(client.plans.create(pro_body(10000)).id)
check(free.status == "active" and pro.status == "active", f"plans published {free.status} {pro.status}")
extra = client.addons.publish(client.addons.create({
    "key": "extra_calls", "name": "Extra calls", "currency": "USD", "instanceType": "multiple",
    "rateCards": [calls_card(1000, "5")]}).id)
client.plan_addons.create(pro.id, {"addonId": extra.id, "fromPlanPhase": "paid", "maxQuantity": 5})
for key in ["acme", "globex", "initech", "umbrella"]:
    client.customers.create({"name": key.title(), "key": key})
t0 = now()

step("create on the free plan: active at once, with its entitlement")
sub = client.subscriptions.create({"plan": {"key": "free"}, "customerKey": "acme"})
check(sub.status == "active" and sub["plan"]["key"] == "free" and sub["plan"]["version"] == 1, f"created {sub}")
check(parse(sub["activeFrom"]) == t0 and parse(sub["billingAnchor"]) == t0 and sub["currency"] == "USD",
      f"starts now, anchored now {sub}")
ents = entitlements("acme")
check(len(ents) == 1 and ents[0]["featureKey"] == "api_calls"
      and ents[0]["annotations"]["subscription.id"] == sub.id and ents[0]["issueAfterReset"] == 100,
      f"provisioned {ents}")
check(value("acme") == {"usage": 0, "balance": 100, "hasAccess": True}, f"value {value('acme')}")
e = expanded(sub.id)
check([p["key"] for p in e["phases"]] == ["free"] and e["phases"][0]["items"][0]["key"] == "api_calls",
      f"expanded {e}")
check(e["phases"][0]["items"][0]["included"]["entitlement"]["id"] == ents[0]["id"], "item names its entitlement")
period = e["alignment"]["currentAlignedBillingPeriod"]
check(parse(period["from"]) == t0, f"the billing period starts at the anchor {period}")

step("one subscription per customer at a time; bad plans, customers and timings are refused")
refused(409, client.subscriptions.create, {"plan": {"key": "pro"}, "customerKey": "acme"},
        code="only_single_subscription_allowed_per_customer_at_a_time")
refused(400, client.subscriptions.create, {"plan": {"key": "nope"}, "customerKey": "globex"}, code="plan_not_found")
refused(400, client.subscriptions.create, {"plan": {"key": "free"}, "customerKey": "nobody"},
        code="customer_not_found")
refused(400, client.subscriptions.create, {"plan": {"key": "free"}, "customerKey": "globex",
                                           "timing": iso(t0 - dt.timedelta(minutes=3))},
        code="subscription_timing_in_the_past")
refused(400, client.subscriptions.create, {"plan": {"key": "free"}, "customerKey": "globex", "timing": "soon"})
check(list(client.customers.list_customer_subscriptions("globex")["items"]) == [], "nothing was created")

step("the 100 calls are used up")
calls("acme", 100, "free")
check(value("acme") == {"usage": 100, "balance": 0, "hasAccess": False}, f"used up {value('acme')}")

step("change to pro immediately: a new subscription from now, usage counts afresh, same period grid")
advance(minutes=2)
t1 = now()
changed = client.subscriptions.change(sub.id, {"timing": "immediate", "plan": {"key": "pro"}})
cur, nxt = changed["current"], changed["next"]
check(parse(cur["activeTo"]) == t1 and cur["status"] == "inactive"
      and cur["annotations"]["subscription.superseding.id"] == nxt["id"], f"current {cur}")
check(parse(nxt["activeFrom"]) == t1 and nxt["status"] == "active" and nxt["plan"]["key"] == "pro"
      and nxt["annotations"]["subscription.previous.id"] == sub.id
      and parse(nxt["billingAnchor"]) == t0, f"next {nxt}")
check([p["key"] for p in nxt["phases"]] == ["trial", "paid"], f"phases {nxt['phases']}")
check(parse(nxt["phases"][1]["activeFrom"]) == t1 + dt.timedelta(days=14), "the trial lasts 14 days")
check(value("acme") == {"usage": 0, "balance": 1000, "hasAccess": True}, f"trial value {value('acme')}")
ents = {e["featureKey"]: e for e in entitlements("acme")}
check(sorted(ents) == ["api_calls", "sso"], f"trial entitlements {ents}")
check(parse(ents["api_calls"]["usagePeriod"]["anchor"]) == t0.replace(second=0, microsecond=0),
      f"usage periods stay on the subscription's anchor {ents['api_calls']['usagePeriod']}")
pro_sub = nxt["id"]
listed = client.customers.list_customer_subscriptions("acme")
check(listed.total_count == 2, f"two subscriptions {listed}")
check([s.id for s in client.customers.list_customer_subscriptions("acme", status=["active"])["items"]] == [pro_sub],
      "status filter")

step("invalid transitions change nothing")
before = expanded(sub.id)
refused(409, client.subscriptions.change, sub.id, {"timing": "immediate", "plan": {"key": "free"}},
        code="subscription_invalid_status")
refused(409, client.subscriptions.cancel, sub.id, {"timing": "immediate"}, code="subscription_invalid_status")
refused(409, client.subscriptions.unschedule_cancelation, sub.id, code="subscription_invalid_status")
refused(409, client.subscriptions.delete, sub.id, code="subscription_invalid_status")
unchanged(sub.id, before, "refusals on an inactive subscription")
before = expanded(pro_sub)
refused(400, client.subscriptions.change, pro_sub, {"plan": {"key": "free"}}, code="timing_required")
refused(400, client.subscriptions.migrate, pro_sub, {"targetVersion": 1},
        code="subscription_migration_target_not_newer")
refused(400, client.subscriptions.cancel, pro_sub, {"timing": iso(t1 + dt.timedelta(days=3))},
        code="subscription_timing_misaligned")
unchanged(pro_sub, before, "refused change, migrate and cancel")

step("the expanded view at a time: the trial now, the paid phase later")
later = expanded(pro_sub, at=t1 + dt.timedelta(days=20))
check(later["alignment"]["currentAlignedBillingPeriod"]["from"] is not None, "period at `at`")
paid_items = {i["key"]: i for i in later["phases"][1]["items"]}
check(paid_items["api_calls"]["price"]["amount"] in ("29", 29), f"paid items {paid_items}")

step("the clock crosses the trial's end: the paid phase's entitlements replace the trial's")
report = advance(days=15)
kinds = [h["type"] for h in report["happened"] if h["type"].startswith("subscription.")]
check("subscription.entitlement.ended" in kinds and "subscription.entitlement.provisioned" in kinds,
      f"the advance reports the phase change {kinds}")
check(value("acme") == {"usage": 0, "balance": 10000, "hasAccess": True}, f"paid value {value('acme')}")
check(len(entitlements("acme")) == 2, "one entitlement per feature, not two")
calls("acme", 40, "paid")
check(value("acme")["usage"] == 40, "paid usage counts")

step("add-ons: bought on the paid phase, allowances add up and usage carries")
bought = client.subscription_addons.create(pro_sub, {"name": "Extra", "quantity": 2, "timing": "immediate",
                                                     "addon": {"id": extra.id}})
check(bought["quantity"] == 2 and bought["addon"]["key"] == "extra_calls", f"bought {bought}")
check(value("acme") == {"usage": 40, "balance": 11960, "hasAccess": True}, f"with 2 add-ons {value('acme')}")
refused(409, client.subscription_addons.create, pro_sub,
        {"name": "Extra", "quantity": 1, "timing": "immediate", "addon": {"id": extra.id}},
        code="subscription_addon_exists")
refused(400, client.subscription_addons.update, pro_sub, bought["id"], {"quantity": 9, "timing": "immediate"},
        code="addon_max_quantity_exceeded")
advance(hours=1)
client.subscription_addons.update(pro_sub, bought["id"], {"quantity": 1, "timing": "immediate"})
check(value("acme")["balance"] == 10960, f"one add-on {value('acme')}")
listed = client.subscription_addons.list(pro_sub)
check(len(listed) == 1 and listed[0]["quantity"] == 1 and len(listed[0]["timeline"]) == 2, f"listed {listed}")
got = client.subscription_addons.get(pro_sub, bought["id"])
check(got["id"] == bought["id"], "get")
e = expanded(pro_sub)
paid = {i["key"]: i for i in e["phases"][1]["items"]}
check(paid["api_calls"]["price"]["amount"] in ("34", 34), f"flat prices add up {paid['api_calls']['price']}")

step("a subscription with add-ons cannot be edited")
before = expanded(pro_sub)
refused(409, client.subscriptions.edit, pro_sub,
        {"customizations": [{"op": "remove_item", "phaseKey": "paid", "itemKey": "sso"}]},
        code="subscription_has_addons")
unchanged(pro_sub, before, "a refused edit")

step("cancel: misaligned refused, end of period, unschedule, then immediately")
c = client.subscriptions.cancel(pro_sub, {"timing": "next_billing_cycle"})
check(c.status == "canceled" and parse(c["activeTo"]) > now(), f"canceled at the period end {c}")
refused(409, client.subscriptions.change, pro_sub, {"timing": "immediate", "plan": {"key": "free"}},
        code="subscription_invalid_status")
u = client.subscriptions.unschedule_cancelation(pro_sub)
check(u.status == "active" and u.get("activeTo") is None, f"unscheduled {u}")
aligned = parse(expanded(pro_sub)["alignment"]["currentAlignedBillingPeriod"]["to"])
c = client.subscriptions.cancel(pro_sub, {"timing": iso(aligned)})
check(parse(c["activeTo"]) == aligned, f"canceled at a custom aligned time {c}")
r = client.subscriptions.restore(pro_sub)
check(r.status == "active", f"restored {r}")
c = client.subscriptions.cancel(pro_sub, {})
check(c.status == "inactive", f"canceled immediately {c}")
check(entitlements("acme") == [], "the entitlements ended")
check(value("acme")["hasAccess"] is False, "no access")

step("a custom subscription, edited: add an item now, remove it, unschedule an edit")
custom = client.subscriptions.create({"customerKey": "globex", "customPlan": {
    "name": "Globex deal", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "deal", "name": "Deal", "duration": None, "rateCards": [calls_card(5000, "99")]}]}})
check(custom.status == "active" and custom.get("plan") is None, f"custom {custom}")
refused(400, client.subscriptions.create, {"customerKey": "initech", "customPlan": {
    "name": "Bad", "currency": "USD", "billingCadence": "P5D",
    "phases": [{"key": "x", "name": "X", "duration": None, "rateCards": []}]}}, code="plan_billing_cadence_invalid")
e = client.subscriptions.edit(custom.id, {"customizations": [{"op": "add_item", "phaseKey": "deal", "rateCard": sso_card}]})
check(sorted(i["key"] for i in e["phases"][0]["items"]) == ["api_calls", "sso"], f"added {e['phases'][0]['items']}")
check(value("globex", "sso")["hasAccess"] is True, "the new item's entitlement")
e = client.subscriptions.edit(custom.id, {"customizations": [{"op": "remove_item", "phaseKey": "deal", "itemKey": "sso"}]})
check([i["key"] for i in e["phases"][0]["items"]] == ["api_calls"], "removed")
check(value("globex", "sso")["hasAccess"] is False, "its entitlement ended")
before = expanded(custom.id)
refused(400, client.subscriptions.edit, custom.id,
        {"customizations": [{"op": "remove_item", "phaseKey": "deal", "itemKey": "nope"}]},
        code="subscription_item_not_found")
refused(400, client.subscriptions.edit, custom.id,
        {"customizations": [{"op": "add_item", "phaseKey": "deal", "rateCard": sso_card},
                            {"op": "add_item", "phaseKey": "nope", "rateCard": sso_card}]},
        code="subscription_phase_not_found")
unchanged(custom.id, before, "refused edits (the valid first op of a refused batch included)")
e = client.subscriptions.edit(custom.id, {"timing": "next_billing_cycle",
                                          "customizations": [{"op": "add_item", "phaseKey": "deal", "rateCard": sso_card}]})
check(value("globex", "sso")["hasAccess"] is False, "an edit at the next cycle is not in force yet")
client.subscriptions.edit(custom.id, {"customizations": [{"op": "unschedule_edit"}]})
unchanged(custom.id, before, "unschedule_edit")

step("migrate to a newer version of the plan")
old = client.subscriptions.create({"plan": {"key": "pro"}, "customerKey": "initech", "startingPhase": "paid"})
check(expanded(old.id)["phases"][0]["key"] == "paid", "started in the paid phase")
client.plans.publish(client.plans.create(pro_body(20000)).id)
check(value("initech")["balance"] == 10000, "grandfathered until migrated")
m = client.subscriptions.migrate(old.id, {"startingPhase": "paid"})
check(m["next"]["plan"]["version"] == 2 and m["current"]["status"] == "inactive", f"migrated {m}")
check(value("initech")["balance"] == 20000, f"the new version's allowance {value('initech')}")
refused(409, client.subscriptions.migrate, old.id, {}, code="subscription_invalid_status")

step("scheduled subscriptions: created for later, deleted; an active one is not deleted")
later = client.subscriptions.create({"plan": {"key": "free"}, "customerKey": "umbrella",
                                     "timing": iso(now() + dt.timedelta(days=3))})
check(later.status == "scheduled", f"scheduled {later}")
check(entitlements("umbrella") == [], "nothing provisioned before the start")
client.subscriptions.delete(later.id)
check(expanded(later.id).status == "inactive", "deleted")
check(list(client.customers.list_customer_subscriptions("umbrella")["items"]) == [], "not listed")
refused(409, client.subscriptions.delete, m["next"]["id"], code="subscription_invalid_status")
nb = client.subscriptions.create({"plan": {"key": "free"}, "customerKey": "umbrella", "timing": "next_billing_cycle",
                                  "billingAnchor": iso(now() - dt.timedelta(days=1))})
check(nb.status == "scheduled" and parse(nb["activeFrom"]) > now(), f"next billing cycle {nb}")
advance(days=31)
check(client.subscriptions.get_expanded(nb.id).status == "active", "it started")
check(value("umbrella")["balance"] == 100, f"its entitlement came with the clock {value('umbrella')}")

print("subscriptions: all steps passed", flush=True)
