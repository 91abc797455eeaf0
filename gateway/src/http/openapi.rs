//! `GET /openapi.json`: an OpenAPI 3.0 description of herd's public HTTP API,
//! so clients and schema-driven fuzzers know every route, what each body may
//! hold and how each error looks.
//!
//! It is a checked-in document rather than one derived from the request
//! types: the types are deliberately loose (serde accepts what OpenAI clients
//! send, and validation narrows it), so derives would describe serde's view,
//! not what herd accepts; the document states the validated bounds instead.
//! Its tests keep it honest: every route in the router is documented and
//! every documented route answers, the examples pass herd's own validation,
//! and each bound in the schemas is the bound validation enforces.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests;
