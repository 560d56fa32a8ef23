"""Invoicing through OpenMeter's Python SDK (1.0.0b236), unchanged, against tollgate-billing on its
simulated clock: billing profiles, customer overrides, pending lines, simulation, listing and
getting invoices, invoicing pending lines now, approving a draft, apps, the marketplace and the
custom invoicing callbacks. The Rust test has created meter `api_calls`, feature `api` and
customers `acme` and `globex`.

Usage: python invoices.py BASE_URL TOKEN
Prints `invoices: all steps passed`; exits non-zero with the failing step otherwise.
"""

import datetime as dt
import sys

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


def clock(body=None):
    if body is None:
        r = client.send_request(HttpRequest("GET", "/api/tollgate/v1/clock"))
    else:
        r = client.send_request(HttpRequest("POST", "/api/tollgate/v1/clock", json=body))
    r.read()
    return r.json()


def expect_error(status, fn, what):
    try:
        fn()
    except HttpResponseError as e:
        check(e.status_code == status, f"{what}: expected {status}, got {e.status_code}")
        return e
    raise SystemExit(f"FAILED: {what}: no error")


now = dt.datetime.fromisoformat(clock()["now"].replace("Z", "+00:00"))
end = now + dt.timedelta(days=30)

step("apps: the sandbox is installed")
apps = client.apps.list()
check(apps["totalCount"] == 1 and apps["items"][0]["type"] == "sandbox", f"apps: {apps}")
sandbox_id = apps["items"][0]["id"]
check(client.apps.get(sandbox_id)["type"] == "sandbox", "get sandbox")

step("billing profiles: the default, with OpenMeter's defaults")
profiles = client.billing_profiles.list(expand=["apps"])
check(profiles["totalCount"] == 1, f"profiles: {profiles}")
default = profiles["items"][0]
check(default["default"] is True, "default flag")
check(default["workflow"]["collection"]["interval"] == "PT1H", "collection interval")
check(default["apps"]["invoicing"]["type"] == "sandbox", "expanded apps")

step("billing profiles: create, get, update, refuse a bad one")
manual = client.billing_profiles.create({
    "name": "Manual approval",
    "supplier": {"name": "Tollgate Inc.", "addresses": [{"country": "DE", "city": "Berlin"}]},
    "default": False,
    "workflow": {"invoicing": {"autoAdvance": False, "draftPeriod": "P1D"}},
    "apps": {"tax": sandbox_id, "invoicing": sandbox_id, "payment": sandbox_id},
})
check(manual["workflow"]["invoicing"]["autoAdvance"] is False, "autoAdvance kept")
check(manual["workflow"]["invoicing"]["dueAfter"] == "P30D", "dueAfter defaulted")
got = client.billing_profiles.get(manual["id"])
check(got["name"] == "Manual approval", "get profile")
updated = client.billing_profiles.update(manual["id"], {
    "name": "Manual approval (EU)",
    "supplier": {"name": "Tollgate GmbH", "addresses": [{"country": "DE"}]},
    "default": False,
    "workflow": {"invoicing": {"autoAdvance": False, "draftPeriod": "P1D"}},
})
check(updated["name"] == "Manual approval (EU)", "update profile")
e = expect_error(400, lambda: client.billing_profiles.create({
    "name": "bad", "supplier": {"name": "x"}, "apps": {"tax": "nope", "invoicing": "nope", "payment": "nope"},
}), "bad profile")

step("customer overrides: pin globex to the manual profile")
o = client.customer_overrides.upsert("globex", {"billingProfileId": manual["id"]})
check(o["customerOverride"]["billingProfileId"] == manual["id"], f"override: {o}")
o = client.customer_overrides.get("acme")
check(o["baseBillingProfileId"] == default["id"] and "customerOverride" not in o, f"acme merged: {o}")
listed = client.customer_overrides.list()
check(listed["totalCount"] == 3, f"overrides list: {listed}")

step("pending lines by hand")
r = client.customer_invoice.create_pending_invoice_line("acme", {
    "currency": "USD",
    "lines": [{
        "name": "API calls",
        "period": {"from": iso(now), "to": iso(end)},
        "invoiceAt": iso(end),
        "rateCard": {"featureKey": "api", "price": {"type": "unit", "amount": "0.02"}},
    }],
})
check(r["isInvoiceNew"] is True and len(r["lines"]) == 1, f"pending: {r}")
gathering_id = r["invoice"]["id"]
check(r["invoice"]["status"] == "gathering", "gathering invoice")
r2 = client.customer_invoice.create_pending_invoice_line("acme", {
    "currency": "USD",
    "lines": [{"name": "Setup fee", "period": {"from": iso(now), "to": iso(end)}, "invoiceAt": iso(end),
               "rateCard": {"price": {"type": "flat", "amount": "100", "paymentTerm": "in_arrears"}}}],
})
check(r2["isInvoiceNew"] is False and r2["invoice"]["id"] == gathering_id, "same gathering invoice")

step("usage shows live on the gathering invoice")
r = client.send_request(HttpRequest("POST", "/api/v1/events", json=[{
    "specversion": "1.0", "id": "sdk-1", "source": "sdk", "type": "request", "subject": "acme",
    "time": iso(now + dt.timedelta(minutes=2)), "data": {"n": 250}}],
    headers={"content-type": "application/cloudevents-batch+json"}))
check(r.status_code < 300, f"ingest {r.status_code}")
clock({"advanceBy": "PT10M"})
inv = client.invoice.get_invoice(gathering_id)
api_line = [l for l in inv["lines"] if l["name"] == "API calls"][0]
check(api_line["quantity"] == "250" and api_line["totals"]["total"] == "5", f"live line: {api_line}")

step("list invoices with filters")
lst = client.invoices.list(customers=["acme"], statuses=["gathering"], expand=["lines"])
check(lst["totalCount"] == 1 and len(lst["items"][0]["lines"]) == 2, f"list: {lst}")
check(client.invoices.list(statuses=["paid"])["totalCount"] == 0, "no paid yet")

step("invoice pending lines now (progressive)")
made = client.invoices.invoice_pending_lines_action({"customerId": "acme"})
check(len(made) == 1, f"invoice now: {made}")
draft = made[0]
check(draft["status"] == "draft", f"draft: {draft['status']}")
names = sorted(l["name"] for l in draft["lines"])
check(names == ["API calls"], f"only the usage so far is billable: {names}")
draft = client.invoice.snapshot_quantities_action(draft["id"])
check(draft["status"] == "paid" and draft["totals"]["total"] == "5", f"issued and paid: {draft['status']} {draft['totals']}")
check(draft["number"].startswith("OM-SANDBOX-"), f"number {draft['number']}")

step("simulate")
sim = client.customer_invoice.simulate_invoice("acme", {
    "currency": "USD",
    "lines": [{"name": "Sim", "period": {"from": iso(now), "to": iso(end)}, "invoiceAt": iso(end),
               "rateCard": {"featureKey": "api", "price": {"type": "package", "amount": "3", "quantityPerPackage": "100"}},
               "quantity": "250"}],
})
check(sim["totals"]["total"] == "9", f"simulate: {sim['totals']}")

step("manual approval: a draft waits, approve issues it")
client.customer_invoice.create_pending_invoice_line("globex", {
    "currency": "EUR",
    "lines": [{"name": "Consulting", "period": {"from": iso(now), "to": iso(now + dt.timedelta(hours=1))},
               "invoiceAt": iso(now), "rateCard": {"price": {"type": "flat", "amount": "250.50", "paymentTerm": "in_advance"}}}],
})
made = client.invoices.invoice_pending_lines_action({"customerId": "globex"})
g = made[0]
check(g["statusDetails"]["extendedStatus"] == "draft.manual_approval_needed", f"globex: {g['statusDetails']}")
check(g["supplier"]["name"] == "Tollgate GmbH", "supplier from the pinned profile")
check(g["statusDetails"]["availableActions"].get("approve") is not None, "approve offered")
expect_error(409, lambda: client.invoice.void_invoice_action(g["id"], {"action": {"percentage": 100, "action": {"type": "discard"}}, "reason": "x"}), "void a draft")
g = client.invoice.approve_action(g["id"])
check(g["status"] == "paid" and g["totals"]["total"] == "250.5", f"approved: {g['status']} {g['totals']}")
expect_error(409, lambda: client.invoice.delete_invoice(g["id"]), "delete an issued invoice")

step("marketplace: install custom invoicing, drive its callbacks")
inst = client.marketplace.install("custom_invoicing", {"name": "ERP", "createBillingProfile": True})
app_id = inst["app"]["id"]
check(inst["app"]["type"] == "custom_invoicing", f"install: {inst}")
ci = [p for p in client.billing_profiles.list()["items"] if p["apps"]["invoicing"]["id"] == app_id][0]
client.customer_overrides.upsert("acme", {"billingProfileId": ci["id"]})
client.customer_invoice.create_pending_invoice_line("acme", {
    "currency": "GBP",
    "lines": [{"name": "Support", "period": {"from": iso(now), "to": iso(end)}, "invoiceAt": iso(now),
               "rateCard": {"price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}}],
})
made = client.invoices.invoice_pending_lines_action({"customerId": "acme"})
c = [m for m in made if m["currency"] == "GBP"][0]
check(c["statusDetails"]["extendedStatus"] == "draft.syncing", f"custom: {c['statusDetails']}")
client.app_custom_invoicing.draft_syncronized(c["id"], {"invoicing": {"externalId": "erp-9"}})
client.app_custom_invoicing.finalized(c["id"], {"invoicing": {"invoiceNumber": "ERP-9"}})
c = client.invoice.get_invoice(c["id"])
check(c["statusDetails"]["extendedStatus"] == "payment_processing.pending" and c["number"] == "ERP-9", f"finalized: {c['statusDetails']}")
client.app_custom_invoicing.payment_status(c["id"], {"trigger": "paid"})
check(client.invoice.get_invoice(c["id"])["status"] == "paid", "paid via callback")
expect_error(409, lambda: client.apps.uninstall(app_id), "uninstall an app in use")

step("the printable page")
r = client.send_request(HttpRequest("GET", f"/api/tollgate/v1/invoices/{c['id']}/html"))
r.read()
check(r.status_code == 200 and "ERP-9" in r.text(), "html page")

step("a monthly subscription across a month of the simulated clock (issue #22)")
sub = client.subscriptions.create({"customerKey": "initech", "customPlan": {
    "name": "Pro", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "default", "name": "Default", "duration": None, "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"}},
        {"type": "usage_based", "key": "api", "name": "API calls", "featureKey": "api", "billingCadence": "P1M",
         "price": {"type": "unit", "amount": "0.01"}}]}]}})
start = sub["activeFrom"]
r = client.send_request(HttpRequest("POST", "/api/v1/events", json=[{
    "specversion": "1.0", "id": "sdk-sub-1", "source": "sdk", "type": "request", "subject": "initech",
    "time": start, "data": {"n": 1234}}], headers={"content-type": "application/cloudevents-batch+json"}))
check(r.status_code < 300, f"ingest {r.status_code}")
adv = clock({"advanceBy": "P1M"})
clock({"advanceBy": "PT2H"})
kinds = sorted({h["type"] for h in adv["happened"]})
check("invoice.created" in kinds and "invoice.issued" in kinds, f"advance reports invoices: {kinds}")
paid = client.invoices.list(customers=["initech"], statuses=["paid"], expand=["lines"])
totals = sorted(i["totals"]["total"] for i in paid["items"])
# 49 at the start; at the month's end 1,234 × 0.01 = 12.34 plus the next month's 49 = 61.34.
check(totals == ["49", "61.34"], f"subscription invoices: {totals}")
gathering = client.invoices.list(customers=["initech"], statuses=["gathering"], expand=["lines"])
check(gathering["totalCount"] == 1 and gathering["items"][0]["lines"][0]["name"] == "API calls",
      "next period's gathering invoice")

print("invoices: all steps passed")
