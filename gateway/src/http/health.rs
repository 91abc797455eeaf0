//! `GET /health`: 200 only when every deployment this node knows is served
//! (its engine here is ready, or it is headed by another node); otherwise 503
//! with what is wrong, so load balancers and tests see the truth.
//!
//! It answers without a key, so when API keys are on, a caller without a
//! valid one sees each model's id and status only: the engine's last error
//! (file paths, process details), slot counts and head names are for key
//! holders.

use super::AppState;
use crate::router::Route;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engines::EngineState;
use serde_json::{json, Value};

pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let detailed = !state.keys.is_enabled() || state.keys.caller(&headers).is_some();
    let mut all_ready = true;
    let table = state.router.current();
    let models: Vec<_> = table
        .ids()
        .filter_map(|(id, _)| Some((id, table.get(id)?)))
        .map(|(id, route)| {
            let (status, detail) = model_health(route);
            all_ready &= matches!(status, "ready" | "remote");
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
        Route::Remote(r) => ("remote", json!({ "head": r.head_name })),
        Route::Down(reason) => ("unavailable", json!({ "error": reason })),
    }
}
