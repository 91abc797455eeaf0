//! `GET /health`: 200 only when every deployment this node knows is served
//! (its engine here is ready, or it is headed by another node); otherwise 503
//! with what is wrong, so load balancers and tests see the truth. An
//! upstream shows its circuit (`closed`, `open`, `half_open`,
//! `rate_limited`) but never makes this node unhealthy: restarting or
//! draining herd cannot mend another server, and its other models still serve.
//!
//! It answers without a key, so when API keys are on, a caller without a
//! valid one sees each model's id and status only: the engine's last error
//! (file paths, process details), slot counts, head names and upstream
//! addresses are for key holders.

use super::AppState;
use crate::router::Route;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engines::EngineState;
use serde_json::{json, Value};

pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let detailed = {
        let keys = state.keys.table();
        !keys.required()
            || crate::auth::bearer(&headers)
                .and_then(|k| keys.lookup(k.as_bytes(), crate::keys::now_ms()))
                .is_some()
    };
    let mut all_ready = true;
    let table = state.router.current();
    let models: Vec<_> = table
        .ids()
        .filter_map(|(id, _)| Some((id, table.get(id)?)))
        .map(|(id, route)| {
            let (status, detail) = model_health(route);
            all_ready &=
                matches!(status, "ready" | "remote") || matches!(route, Route::Upstream(_));
            let mut entry = json!({ "id": id, "status": status });
            if let (true, Value::Object(entry), Value::Object(detail)) =
                (detailed, &mut entry, detail)
            {
                entry.extend(detail);
            }
            entry
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

/// A deployment's status, and the details only key holders see.
fn model_health(route: &Route) -> (&'static str, Value) {
    match route {
        Route::Local(d) => {
            let stats = d.engine.stats();
            let (status, error) = match d.engine.state() {
                EngineState::Ready => ("ready", None),
                EngineState::Starting => ("starting", None),
                EngineState::Restarting { last_error, .. } => ("restarting", Some(last_error)),
            };
            let detail = json!({
                "error": error,
                "restarts": stats.restarts,
                "slots_busy": stats.slots_busy,
                "free_slots": d.admission.free_slots(),
                "waiting": d.admission.waiting(),
            });
            (status, detail)
        }
        Route::Upstream(u) => {
            let s = u.status();
            let status = if u.is_up() { "ready" } else { "unhealthy" };
            let detail = json!({
                "upstream": u.base_url,
                "circuit": s.circuit,
                "in_flight": s.in_flight,
                "consecutive_failures": s.consecutive_failures,
                "last_failure": s.last_failure,
            });
            (status, detail)
        }
        Route::Remote(r) => ("remote", json!({ "head": r.head_name })),
        Route::Down(reason) => ("unavailable", json!({ "error": reason })),
    }
}
