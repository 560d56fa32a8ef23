//! `[sources.otlp_logs]`: an OTLP/gRPC logs receiver (`opentelemetry.proto.collector.logs.v1.
//! LogsService/Export`, what OpenMeter's `otel_log` collector input serves), so an application
//! already exporting OpenTelemetry logs meters by emitting one log record per usage event.
//!
//! Each log record becomes one event:
//! * `type` = the record attribute `type_attribute` when set and present, else `event_type`;
//! * `subject` = the attribute `subject_attribute`;
//! * `id` = the attribute `id_attribute`, or when absent a UUIDv5 of the record's protobuf
//!   encoding with its resource and scope (leaving out `observed_time_unix_nano` when the record
//!   has a time of its own): the same record exported again — an SDK retry, or a collector
//!   relaying it again with a new observed time — gets the same id and dedupes;
//! * `time` = the record's `time_unix_nano`, else `observed_time_unix_nano`, else now;
//! * `data` = every other record attribute, as JSON (bytes as base64, as OTLP/JSON writes them).
//!
//! The answer comes once the export's events are durable. A record without a type or subject
//! is rejected through OTLP's `partial_success` (count and the first record named) and the rest
//! are stored; a full buffer answers `UNAVAILABLE`, which OTLP exporters retry with backoff.

use base64::Engine;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::{Intake, Refusal};
use crate::buffer::StoredEvent;
use crate::config::OtlpLogsSource;

/// The namespace of derived ids (a fixed, random UUID: ids derived here never collide with
/// another namespace's).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d0c_9a4e_2f7b_4c61_9e3a_8b1f_0d6e_7a25);

/// The LogsService.
pub struct OtlpLogs {
    intake: Intake,
    config: OtlpLogsSource,
}

impl OtlpLogs {
    /// A receiver storing through `intake`.
    pub fn new(intake: Intake, config: OtlpLogsSource) -> Self {
        OtlpLogs { intake, config }
    }
}

/// The events of one export, and the records refused.
#[derive(Debug, Default)]
pub struct Converted {
    /// One per accepted record.
    pub events: Vec<StoredEvent>,
    /// Records refused.
    pub rejected: i64,
    /// What was wrong with the first refused record.
    pub first_error: Option<String>,
}

/// Turns an export request into events.
pub fn convert(
    req: &ExportLogsServiceRequest,
    config: &OtlpLogsSource,
    received_ms: i64,
) -> Converted {
    let mut out = Converted::default();
    for (r, resource_logs) in req.resource_logs.iter().enumerate() {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default();
        for (s, scope_logs) in resource_logs.scope_logs.iter().enumerate() {
            let scope = scope_logs
                .scope
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default();
            for (l, record) in scope_logs.log_records.iter().enumerate() {
                match event(record, config, &resource, &scope, received_ms) {
                    Ok(e) => out.events.push(e),
                    Err(why) => {
                        out.rejected += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!(
                                "resource_logs[{r}].scope_logs[{s}].log_records[{l}]: {why}"
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn event(
    record: &LogRecord,
    config: &OtlpLogsSource,
    resource: &[u8],
    scope: &[u8],
    received_ms: i64,
) -> Result<StoredEvent, String> {
    let find = |name: &str| {
        record
            .attributes
            .iter()
            .find(|kv| kv.key == name)
            .and_then(|kv| kv.value.as_ref())
            .and_then(scalar_text)
            .filter(|v| !v.is_empty())
    };
    let ty = config
        .type_attribute
        .as_deref()
        .filter(|a| !a.is_empty())
        .and_then(find)
        .or_else(|| config.event_type.clone().filter(|t| !t.is_empty()))
        .ok_or_else(|| match &config.type_attribute {
            Some(a) => format!("no {a:?} attribute (type_attribute) and no event_type configured"),
            None => "no event_type configured".to_owned(),
        })?;
    let subject = find(&config.subject_attribute).ok_or_else(|| {
        format!(
            "no {:?} attribute (subject_attribute): every event needs a subject",
            config.subject_attribute
        )
    })?;
    let id = find(&config.id_attribute).unwrap_or_else(|| {
        let mut bytes = Vec::with_capacity(resource.len() + scope.len() + 256);
        for part in [resource, scope] {
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        if record.time_unix_nano > 0 && record.observed_time_unix_nano > 0 {
            // When the event time is known, the time an SDK or collector saw the record is not
            // part of what it measures: a record relayed again, stamped anew, is the same event.
            let mut measured = record.clone();
            measured.observed_time_unix_nano = 0;
            measured.encode(&mut bytes).unwrap_or_default();
        } else {
            record.encode(&mut bytes).unwrap_or_default();
        }
        uuid::Uuid::new_v5(&ID_NAMESPACE, &bytes).to_string()
    });
    let nanos = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|n| *n > 0);
    let time = match nanos {
        Some(n) => chrono::DateTime::from_timestamp_nanos(n.min(i64::MAX as u64) as i64),
        None => chrono::DateTime::from_timestamp_millis(received_ms).unwrap_or_default(),
    }
    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let taken = [
        Some(config.subject_attribute.as_str()),
        Some(config.id_attribute.as_str()),
        config.type_attribute.as_deref(),
    ];
    let data: serde_json::Map<String, Value> = record
        .attributes
        .iter()
        .filter(|kv| !taken.contains(&Some(kv.key.as_str())))
        .map(|kv| (kv.key.clone(), json(kv.value.as_ref())))
        .collect();
    Ok(StoredEvent {
        id,
        source: config.source.clone(),
        ty,
        subject,
        time,
        data: if data.is_empty() {
            String::new()
        } else {
            Value::Object(data).to_string()
        },
        received_ms,
    })
}

/// A string, integer or boolean attribute as text (ids and subjects may be numbers).
fn scalar_text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An attribute value as JSON.
fn json(v: Option<&AnyValue>) -> Value {
    let Some(v) = v.and_then(|v| v.value.as_ref()) else {
        return Value::Null;
    };
    match v {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::DoubleValue(d) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        any_value::Value::ArrayValue(a) => {
            Value::Array(a.values.iter().map(|v| json(Some(v))).collect())
        }
        any_value::Value::KvlistValue(kv) => Value::Object(
            kv.values
                .iter()
                .map(|KeyValue { key, value, .. }| (key.clone(), json(value.as_ref())))
                .collect(),
        ),
        any_value::Value::BytesValue(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        any_value::Value::StringValueStrindex(_) => Value::Null,
    }
}

#[tonic::async_trait]
impl LogsService for OtlpLogs {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let received_ms = chrono::Utc::now().timestamp_millis();
        let converted = convert(request.get_ref(), &self.config, received_ms);
        if converted.rejected > 0 {
            self.intake
                .metrics
                .rejected
                .inc_by(converted.rejected as u64);
            tracing::warn!(
                rejected = converted.rejected,
                first = converted.first_error.as_deref().unwrap_or(""),
                "OTLP log records without a type or subject were refused"
            );
        }
        match self.intake.store(&converted.events).await {
            Ok(()) => Ok(Response::new(ExportLogsServiceResponse {
                partial_success: (converted.rejected > 0).then(|| ExportLogsPartialSuccess {
                    rejected_log_records: converted.rejected,
                    error_message: converted.first_error.unwrap_or_default(),
                }),
            })),
            Err(Refusal::Full) => Err(Status::unavailable(
                "agent disk buffer is full (is the destination down?); nothing was stored",
            )),
            Err(Refusal::Unavailable(e)) => Err(Status::unavailable(format!(
                "agent buffer unavailable: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn attributes_map_to_an_event_and_ids_are_stable_without_an_id_attribute() {
        let config = OtlpLogsSource {
            event_type: Some("api-calls".into()),
            ..Default::default()
        };
        let record = LogRecord {
            time_unix_nano: 1_764_000_000_123_000_000,
            attributes: vec![
                kv("subject", any_value::Value::StringValue("cust-1".into())),
                kv("duration_ms", any_value::Value::IntValue(12)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv("blob", any_value::Value::BytesValue(vec![1, 2])),
            ],
            ..Default::default()
        };
        let a = convert(&request(vec![record.clone()]), &config, 0);
        let b = convert(&request(vec![record.clone()]), &config, 99);
        assert_eq!(a.rejected, 0);
        let e = &a.events[0];
        assert_eq!((e.ty.as_str(), e.subject.as_str()), ("api-calls", "cust-1"));
        assert_eq!(e.time, "2025-11-24T16:00:00.123Z");
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"duration_ms": 12, "ratio": 0.5, "blob": "AQI="})
        );
        assert_eq!(e.id, b.events[0].id, "a re-export gets the same id");
        let mut other = record;
        other.time_unix_nano += 1;
        assert_ne!(
            convert(&request(vec![other]), &config, 0).events[0].id,
            e.id
        );
    }

    #[test]
    fn records_without_subject_or_type_are_rejected_and_named() {
        let config = OtlpLogsSource {
            type_attribute: Some("event.type".into()),
            ..Default::default()
        };
        let good = LogRecord {
            attributes: vec![
                kv("subject", any_value::Value::StringValue("c".into())),
                kv("event.type", any_value::Value::StringValue("jobs".into())),
                kv("id", any_value::Value::IntValue(7)),
            ],
            ..Default::default()
        };
        let no_subject = LogRecord {
            attributes: vec![kv(
                "event.type",
                any_value::Value::StringValue("jobs".into()),
            )],
            ..Default::default()
        };
        let out = convert(&request(vec![good, no_subject]), &config, 0);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].id, "7");
        assert_eq!(out.events[0].data, "", "consumed attributes are not data");
        assert_eq!(out.rejected, 1);
        let msg = out.first_error.unwrap();
        assert!(
            msg.contains("log_records[1]") && msg.contains("subject"),
            "{msg}"
        );
    }
}
