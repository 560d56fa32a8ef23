"""OpenMeter's own Python SDK (PyPI `openmeter`) pointed at tollgate-agent's HTTP intake.

Usage: python openmeter_ingest.py AGENT_URL PREFIX
Ingests a batch of 20 events and one single event with ids PREFIX-0..PREFIX-20, then checks that
an invalid event is refused with an error (the SDK raises on 400). Prints "sdk: ok" at the end.
"""

import sys

from openmeter import Client

base, prefix = sys.argv[1], sys.argv[2]
client = Client(endpoint=base, token="unused-by-a-loopback-agent")

batch = [{"id": f"{prefix}-{i}", "source": "sdk-app", "specversion": "1.0", "type": "jobs",
          "subject": "customer-sdk", "time": "2026-11-24T10:00:00Z",
          "data": {"seconds": i}} for i in range(20)]
client.events.ingest_events(batch)
print("sdk: batch ingested", flush=True)
client.events.ingest_event({"id": f"{prefix}-20", "source": "sdk-app", "specversion": "1.0",
                            "type": "jobs", "subject": "customer-sdk", "data": {"seconds": 20}})
print("sdk: single ingested", flush=True)
try:
    client.events.ingest_event({"id": f"{prefix}-bad", "source": "sdk-app", "specversion": "1.0",
                                "type": "jobs", "subject": "customer-sdk", "time": "not a time"})
except Exception as e:  # the SDK raises HttpResponseError on a 400
    print(f"sdk: invalid event refused: {type(e).__name__}", flush=True)
else:
    raise SystemExit("FAILED: an invalid time was accepted")
print("sdk: ok", flush=True)
