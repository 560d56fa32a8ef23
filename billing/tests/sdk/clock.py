"""A month of billing in seconds: OpenMeter's Python SDK against tollgate-billing on its simulated
clock (POST/GET /api/tollgate/v1/clock through the SDK client's own pipeline).

Usage: python clock.py BASE_URL TOKEN big|small
  big:   one advance of a month
  small: the same month in steps of a day or less, checking the values on the way
Prints `RESULT <json>` (the values and what happened, times relative to the first period's start)
so the Rust test can check that both ways agree; exits non-zero with the failing step otherwise.
"""

import calendar
import datetime as dt
import json
import sys

from corehttp.rest import HttpRequest
from openmeter import Client

base, token, mode = sys.argv[1], sys.argv[2], sys.argv[3]
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


def clock(body=None):
    if body is None:
        r = client.send_request(HttpRequest("GET", "/api/tollgate/v1/clock"))
    else:
        r = client.send_request(HttpRequest("POST", "/api/tollgate/v1/clock", json=body))
    r.read()
    return r.status_code, r.json()


def value():
    v = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "api_calls")
    return {"usage": v.usage, "balance": v.balance, "hasAccess": v.has_access}


step("the clock is simulated and stands still")
status, c = clock()
check(status == 200 and c["simulated"] is True, f"GET clock {status} {c}")
t0 = parse(c["now"])
status, again = clock()
check(again["now"] == c["now"], f"the simulated clock stands still: {c} then {again}")
base_minute = t0.replace(second=0, microsecond=0)


def rel(s):
    return int((parse(s) - base_minute).total_seconds())


step("a customer with a monthly metered entitlement and a grant that starts and expires later")
client.meters.create({"slug": "api_requests", "eventType": "api_request", "aggregation": "COUNT"})
client.features.create({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"})
client.customers.create({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}})
ent = client.customer_entitlements_v2.post("acme", {
    "type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"},
    "issue": {"amount": 100}})
created = ent["createdAt"] if isinstance(ent, dict) else ent.created_at
check(parse(created if isinstance(created, str) else iso(created)) == t0,
      f"createdAt is the simulated now {created} != {t0}")
grant = client.customer_entitlement_v2.create_customer_entitlement_grant("acme", "api_calls", {
    "amount": 50, "priority": 5, "effectiveAt": iso(t0 + dt.timedelta(days=5)),
    "expiration": {"duration": "DAY", "count": 10}})

step("usage now (no time: stamped with the simulated now) and in the future (day 10)")
client.events.ingest_events([{"id": f"now-{i}", "source": "clock-test", "specversion": "1.0",
                              "type": "api_request", "subject": "acme-app"} for i in range(30)])
client.events.ingest_events([{"id": f"later-{i}", "source": "clock-test", "specversion": "1.0",
                              "type": "api_request", "subject": "acme-app",
                              "time": iso(t0 + dt.timedelta(days=10))} for i in range(12)])
v = value()
check(v == {"usage": 30, "balance": 70, "hasAccess": True}, f"value at the start {v}")

status, c = clock({"to": iso(t0 - dt.timedelta(seconds=1))})
check(status == 409 and "only moves forward" in c["detail"], f"backwards: {status} {c}")

month_end = None
happened = []
checkpoints = {}
if mode == "big":
    step("one advance of a month")
    status, c = clock({"advanceBy": "P1M"})
    check(status == 200, f"advance {status} {c}")
    check(rel(c["previous"]) == rel(iso(t0)), f"previous {c}")
    month_end = c["now"]
    happened += c["happened"]
else:
    step("the same month in steps of a day or less")
    # Where P1M lands, without moving the clock: the entitlement's current period ends there.
    page = client.send_request(HttpRequest("GET", "/api/v2/customers/acme/entitlements"))
    page.read()
    period_end = parse(page.json()["items"][0]["currentUsagePeriod"]["to"])
    year, month = t0.year + (t0.month == 12), t0.month % 12 + 1
    target = t0.replace(year=year, month=month, day=min(t0.day, calendar.monthrange(year, month)[1]))
    now = t0
    for delta, expect in [
        (dt.timedelta(days=5, minutes=1), {"usage": 30, "balance": 120, "hasAccess": True}),
        (dt.timedelta(days=10, minutes=1), {"usage": 42, "balance": 108, "hasAccess": True}),
        (dt.timedelta(days=15, minutes=1), {"usage": 42, "balance": 58, "hasAccess": True}),
    ]:
        while now + dt.timedelta(hours=7) < t0 + delta:
            status, c = clock({"advanceBy": "PT7H"})
            check(status == 200, f"step {status} {c}")
            happened += c["happened"]
            now = parse(c["now"])
        status, c = clock({"to": iso(t0 + delta)})
        happened += c["happened"]
        now = parse(c["now"])
        v = value()
        check(v == expect, f"value at day {delta} {v} != {expect}")
        checkpoints[str(delta)] = v
    while now + dt.timedelta(days=1) < target:
        status, c = clock({"advanceBy": "P1D"})
        happened += c["happened"]
        now = parse(c["now"])
    v = value()
    check(v == {"usage": 42, "balance": 58, "hasAccess": True}, f"value just before the period ends {v}")
    check(period_end > now, f"the period ends at {period_end}, after {now}")
    status, c = clock({"to": iso(target)})
    check(status == 200, f"last step {status} {c}")
    happened += c["happened"]
    month_end = c["now"]
    status, c = clock({"to": month_end})
    check(status == 200 and c["happenedCount"] == 0, f"advancing to where it stands is a no-op {c}")

step("the period ended: usage reset, balance restored")
status, c = clock()
check(c["now"] == month_end, f"GET clock after the advance {c}")
v = value()
check(v == {"usage": 0, "balance": 100, "hasAccess": True}, f"value after the month {v}")
kinds = [(h["type"], rel(h["at"])) for h in happened]
check([k for k, _ in kinds] == ["grant.effective", "grant.expired", "entitlement.reset"],
      f"what happened {happened}")
reset = happened[-1]
check(reset["entitlementId"] == (ent["id"] if isinstance(ent, dict) else ent.id) and reset["customerKey"] == "acme",
      f"reset names the entitlement {reset}")
check(rel(reset["endedPeriod"]["from"]) == 0 and reset["endedPeriod"]["to"] == reset["at"], f"ended period {reset}")
check(happened[0]["grantId"] == grant.id, f"grant events name it {happened[0]}")

step("usage in the new period")
client.events.ingest_events([{"id": f"next-{i}", "source": "clock-test", "specversion": "1.0",
                              "type": "api_request", "subject": "acme-app"} for i in range(5)])
v = value()
check(v == {"usage": 5, "balance": 95, "hasAccess": True}, f"value in the second period {v}")

month = (parse(month_end) - t0).total_seconds()
print("RESULT " + json.dumps({"happened": kinds, "month": month, "final": v}, sort_keys=True))
print("clock: all steps passed", flush=True)
