//! One log line per request: method, path, status, and time to response
//! headers (for a stream, its time to first byte). Never a header value or a
//! body, so no secret can reach the log.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

pub async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if path == "/health" || path == "/metrics" {
        tracing::debug!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms = format!("{ms:.1}"), "request");
    }
    response
}
