"""The OpenTelemetry Python SDK's OTLP/gRPC log exporter (PyPI `opentelemetry-exporter-otlp-proto-grpc`)
pointed at tollgate-agent's OTLP logs intake.

Usage: python otlp_export.py HOST:PORT PREFIX N
Emits N log records, one per usage event: attributes `subject`, `id` (PREFIX-i; every tenth
record has none, so the agent derives one), `event.type` and `duration_ms`; then one record with
no subject, which the agent must refuse. Flushes, then exports every batch once more through a
new exporter (what an SDK retry after a lost answer sends), checks that every export succeeded,
and prints "otlp: ok".
"""

import logging
import sys

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

endpoint, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Checked(OTLPLogExporter):
    """Remembers every export's result so the script can fail when one did."""

    results = []
    batches = []

    def export(self, batch):
        result = super().export(batch)
        Checked.results.append(result)
        Checked.batches.append(list(batch))
        return result


provider = LoggerProvider(resource=Resource.create({"service.name": "billing-app"}))
provider.add_log_record_processor(SimpleLogRecordProcessor(Checked(endpoint=endpoint, insecure=True)))
logger = provider.get_logger("usage")

for i in range(n):
    attrs = {"subject": "customer-otel", "event.type": "jobs", "duration_ms": 10 + i, "region": "eu"}
    if i % 10 != 0:
        attrs["id"] = f"{prefix}-{i}"
    logger.emit(timestamp=1_764_000_000_000_000_000 + i * 1_000_000, body=f"job {i} done",
                severity_number=SeverityNumber.INFO, attributes=attrs)
logger.emit(timestamp=1_764_000_000_000_000_000, body="no subject",
            attributes={"event.type": "jobs", "id": f"{prefix}-nosubject"})
provider.force_flush()
provider.shutdown()
retry = Checked(endpoint=endpoint, insecure=True)
for batch in list(Checked.batches):
    retry.export(batch)
ok = sum(1 for r in Checked.results if getattr(r, "name", "") == "SUCCESS")
print(f"otlp: exports={len(Checked.results)} succeeded={ok}", flush=True)
if ok != len(Checked.results) or ok != 2 * (n + 1):
    raise SystemExit("FAILED: not every export succeeded")
print("otlp: ok", flush=True)
