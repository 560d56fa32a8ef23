//! Billing's clock: `GET /api/tollgate/v1/clock` (`{"now", "simulated"}`, always available) and
//! `POST /api/tollgate/v1/clock` with `{"advanceBy": "P1M"}` or `{"to": RFC 3339}` to move the
//! simulated clock forward ([`crate::clock`]).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;

use super::{Api, Problem, R, bad, conflict, json_body, parse_time};
use crate::clock::{AdvanceError, Target};
use crate::duration::IsoDuration;

/// The clock's path.
pub const PATH: &str = "/api/tollgate/v1/clock";

/// Clock routes.
pub fn routes() -> Router<Api> {
    Router::new().route(PATH, get(show).post(advance))
}

async fn show(State(api): State<Api>) -> R {
    Ok(axum::Json(api.clock.view().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdvanceInput {
    advance_by: Option<String>,
    to: Option<String>,
}

async fn advance(State(api): State<Api>, body: Bytes) -> R {
    if !api.clock.is_simulated() {
        return Err(Problem(
            StatusCode::FORBIDDEN,
            AdvanceError::NotSimulated.to_string(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(
            "a body is required: {\"advanceBy\": \"P1M\"} or {\"to\": \"<RFC 3339 time>\"}",
        ));
    }
    let input: AdvanceInput = json_body(&body)?;
    let target = match (input.advance_by, input.to) {
        (Some(d), None) => {
            Target::By(IsoDuration::parse(&d).map_err(|e| bad(format!("advanceBy: {e}")))?)
        }
        (None, Some(t)) => Target::To(parse_time("to", &t)?),
        (Some(_), Some(_)) => return Err(bad("give advanceBy or to, not both")),
        (None, None) => {
            return Err(bad(
                "advanceBy (an ISO 8601 duration) or to (an RFC 3339 time) is required",
            ));
        }
    };
    // In its own task: a client that hangs up does not stop an advance half way.
    let clock = api.clock.clone();
    let outcome = tokio::spawn(async move { clock.advance(target).await })
        .await
        .map_err(|e| Problem(StatusCode::INTERNAL_SERVER_ERROR, format!("advance: {e}")))?;
    // Time moved (grants started or expired, periods reset): thresholds are evaluated anew.
    api.notifications.everything_changed();
    match outcome {
        Ok(done) => Ok(axum::Json(done).into_response()),
        Err(e @ AdvanceError::Backwards { .. }) => Err(conflict(e.to_string())),
        Err(e @ AdvanceError::OutOfRange(..)) => Err(bad(e.to_string())),
        Err(AdvanceError::NotSimulated) => Err(Problem(
            StatusCode::FORBIDDEN,
            AdvanceError::NotSimulated.to_string(),
        )),
        Err(AdvanceError::Store(e)) => Err(e.into()),
    }
}
