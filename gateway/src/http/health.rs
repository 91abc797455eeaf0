//! `GET /health`: 200 only when every deployment this node knows is served
//! (its engine here is ready, or it is headed by another node); otherwise 503
//! with what is wrong, so load balancers and tests see the truth. An
//! upstream shows its circuit (`closed`, `open`, `half_open`,
//! `rate_limited`) but never makes this node unhealthy: restarting or
//! draining herd cannot mend another server, and its other models still serve.

use super::AppState;
use crate::router::Route;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engines::EngineState;
use serde_json::json;

pub async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let mut all_ready = true;
    let table = state.router.current();
    let models: Vec<_> = table
        .ids()
        .filter_map(|(id, _)| Some((id, table.get(id)?)))
        .map(|(id, route)| match route {
            Route::Local(d) => {
                let stats = d.engine.stats();
                let (status, detail) = match d.engine.state() {
                    EngineState::Ready => ("ready", None),
                    EngineState::Starting => ("starting", None),
                    EngineState::Restarting { last_error, .. } => ("restarting", Some(last_error)),
                };
                all_ready &= status == "ready";
                json!({
                    "id": id,
                    "status": status,
                    "error": detail,
                    "restarts": stats.restarts,
                    "slots_busy": stats.slots_busy,
                    "free_slots": d.admission.free_slots(),
                    "waiting": d.admission.waiting(),
                })
            }
            Route::Upstream(u) => {
                let s = u.status();
                json!({
                    "id": id,
                    "status": if u.is_up() { "ready" } else { "unhealthy" },
                    "upstream": u.base_url,
                    "circuit": s.circuit,
                    "in_flight": s.in_flight,
                    "consecutive_failures": s.consecutive_failures,
                    "last_failure": s.last_failure,
                })
            }
            Route::Remote(r) => json!({ "id": id, "status": "remote", "head": r.head_name }),
            Route::Down(reason) => {
                all_ready = false;
                json!({ "id": id, "status": "unavailable", "error": reason })
            }
        })
        .collect();
    let status = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if all_ready { "ok" } else { "unavailable" }, "models": models });
    (status, Json(body)).into_response()
}
