"""The product catalog through OpenMeter's own Python SDK (PyPI `openmeter`), unchanged, against a
running tollgate-billing: plans (create, version, publish, archive, delete, filters), validation
errors, add-ons and plan add-ons — each through the SDK's own methods and models.

Usage: python catalog.py BASE_URL TOKEN
Exits non-zero with the failing step on any mismatch; prints one line per step.
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


def refused(status, fn, *args, field=None, code=None, contains="", **kwargs):
    """The call fails with `status`; with `field`/`code`, its validationErrors name them."""
    try:
        fn(*args, **kwargs)
    except HttpResponseError as e:
        body = e.response.json() if e.response is not None else {}
        check(e.status_code == status, f"{fn.__name__}: status {e.status_code} != {status}: {body}")
        check(contains in str(body), f"{fn.__name__}: {contains!r} not in {body}")
        if field or code:
            errors = body.get("extensions", {}).get("validationErrors", [])
            check(any((field is None or x["field"] == field) and (code is None or x["code"] == code)
                      for x in errors), f"{fn.__name__}: no {field} {code} in {errors}")
        return
    raise SystemExit(f"FAILED: {fn.__name__}{args} was accepted, expected {status}")


step("features to price")
client.meters.create({"slug": "llm_tokens", "eventType": "kong.llm_request", "aggregation": "SUM",
                      "valueProperty": "$.tokens"})
client.features.create({"key": "llm_tokens", "name": "LLM tokens", "meterSlug": "llm_tokens"})
client.features.create({"key": "sso", "name": "Single sign-on"})
client.features.create({"key": "support", "name": "Priority support"})


def plan_body(name, amount="0.002"):
    return {
        "key": "team", "name": name, "currency": "USD", "billingCadence": "P1M",
        "phases": [
            {"key": "trial", "name": "Trial", "duration": "P7D", "rateCards": [
                {"type": "flat_fee", "key": "sso", "name": "SSO", "featureKey": "sso",
                 "billingCadence": None, "price": None, "entitlementTemplate": {"type": "boolean"}}]},
            {"key": "paid", "name": "Paid", "duration": None, "rateCards": [
                {"type": "flat_fee", "key": "platform", "name": "Platform fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "29", "paymentTerm": "in_advance"}},
                {"type": "usage_based", "key": "llm_tokens", "name": "Tokens", "featureKey": "llm_tokens",
                 "billingCadence": "P1M",
                 "price": {"type": "tiered", "mode": "volume", "tiers": [
                     {"upToAmount": "1000000", "unitPrice": {"type": "unit", "amount": amount}},
                     {"unitPrice": {"type": "unit", "amount": "0.001"}}],
                     "minimumAmount": "10"},
                 "discounts": {"usage": {"quantity": "10000"}, "percentage": {"percentage": 5}},
                 "entitlementTemplate": {"type": "metered", "isSoftLimit": True, "issueAfterReset": 0}},
                {"type": "usage_based", "key": "sso", "name": "SSO", "featureKey": "sso",
                 "billingCadence": "P1M", "price": None,
                 "entitlementTemplate": {"type": "static", "config": "{\"seats\": 5}"}},
            ]},
        ],
    }


step("create a draft plan")
v1 = client.plans.create(plan_body("Team"))
check(v1.version == 1 and v1.status == "draft" and v1.id, f"created {v1}")
# The SDK leaves union-typed values (rate cards, prices) as plain dicts.
tokens = v1.phases[1].rate_cards[1]
check(tokens["price"]["mode"] == "volume", f"the tiered price came back: {tokens}")
check(tokens["price"]["tiers"][0]["upToAmount"] == "1000000", "tier bounds are decimal strings")
check(tokens["discounts"]["percentage"]["percentage"] == 5, "percentage discount")
check(v1.pro_rating_config.enabled is True, "pro-rating defaults on")

step("one draft per key")
refused(400, client.plans.create, plan_body("Team again"), contains="single draft")

step("update the draft")
v1 = client.plans.update(v1.id, {"name": "Team (2026)", "billingCadence": "P1M",
                                 "phases": plan_body("x")["phases"]})
check(v1.name == "Team (2026)", f"updated name {v1.name}")

step("validation errors name the field")
bad = plan_body("Bad")
bad["phases"][1]["rateCards"][1]["featureKey"] = "sso"
refused(400, client.plans.create, bad, code="rate_card_key_feature_key_mismatch",
        field="$.phases[?(@.key=='paid')].rateCards[?(@.key=='llm_tokens')].featureKey")
bad = plan_body("Bad", amount="-1")
refused(400, client.plans.create, bad, code="price_amount_negative")
bad = plan_body("Bad")
bad["currency"] = "XYZ"
refused(400, client.plans.create, bad, field="$.currency", code="currency_not_found")

step("publish")
p1 = client.plans.publish(v1.id)
check(p1.status == "active" and p1.effective_from is not None, f"published {p1}")
check(client.plans.get("team").id == v1.id, "the key resolves to the active version")

step("a new version")
v2 = client.plans.create(plan_body("Team v2", amount="0.0015"))
check(v2.version == 2 and v2.status == "draft", f"v2 {v2}")
check(client.plans.get("team").id == v1.id, "still v1 by key")
check(client.plans.get("team", include_latest=True).id == v2.id, "includeLatest finds the draft")
client.plans.publish(v2.id)
check(client.plans.get(v1.id).status == "archived", "publishing v2 archived v1")

step("list with filters")
check([p.version for p in client.plans.list(status=["active"])] == [2], "active only")
check(len(list(client.plans.list(key=["team"]))) == 2, "by key")
check([p.version for p in client.plans.list(key_version={"team": [1]})] == [1], "by key and version")
check(list(client.plans.list(currency=["EUR"])) == [], "by currency")

step("add-ons")


def addon_body(key, feature, amount):
    return {"key": key, "name": key.replace("_", " "), "currency": "USD", "instanceType": "single",
            "rateCards": [{"type": "flat_fee", "key": feature, "name": feature, "featureKey": feature,
                           "billingCadence": "P1M",
                           "price": {"type": "flat", "amount": amount, "paymentTerm": "in_advance"},
                           "entitlementTemplate": {"type": "boolean"}}]}


sso_plus = client.addons.publish(client.addons.create(addon_body("sso_plus", "sso", "15")).id)
addon = client.addons.create(addon_body("priority_support", "support", "99"))
check(addon.status == "draft" and addon.instance_type == "single", f"add-on {addon}")
addon = client.addons.publish(addon.id)
check(addon.status == "active", "add-on published")
check(client.addons.get("priority_support").id == addon.id, "add-on by key")
check({a.key for a in client.addons.list(status=["active"])} == {"sso_plus", "priority_support"}, "listed")

step("plan add-ons")
v3 = client.plans.create(plan_body("Team v3"))
refused(400, client.plan_addons.create, v3.id, {"addonId": addon.id, "fromPlanPhase": "nope"},
        code="plan_addon_unknown_plan_phase_key")
# The plan's paid phase prices `sso` too, with a static entitlement: the two cannot stack.
refused(400, client.plan_addons.create, v3.id, {"addonId": sso_plus.id, "fromPlanPhase": "paid"},
        code="rate_card_static_entitlement_not_allowed")
pa = client.plan_addons.create(v3.id, {"addonId": addon.id, "fromPlanPhase": "paid"})
check(pa.addon.key == "priority_support" and pa.from_plan_phase == "paid", f"plan add-on {pa}")
listed = client.plan_addons.list(v3.id)
# `items` is shadowed by the model's Mapping.items(): read it as a key.
check(listed.total_count == 1 and listed["items"][0]["addon"]["id"] == addon.id, f"plan add-ons {listed}")
check(client.plan_addons.get(v3.id, addon.id).from_plan_phase == "paid", "plan add-on by add-on id")
client.plan_addons.delete(v3.id, addon.id)
check(client.plan_addons.list(v3.id).total_count == 0, "plan add-on removed")

step("archive and delete")
client.plans.delete(v3.id)
archived = client.plans.archive(v2.id)
check(archived.status == "archived" and archived.effective_to is not None, f"archived {archived}")
client.plans.delete(v1.id)
check(len(list(client.plans.list(include_deleted=True))) == 3, "deleted plans listed on request")
check(len(list(client.plans.list())) == 1, "deleted plans hidden")

step("next (deprecated): a new draft cloned from the newest version")
v4 = client.plans.next("team")
check(v4.version == 4 and v4.status == "draft" and v4.name == "Team v2", f"next {v4}")

print("catalog: all steps passed")
