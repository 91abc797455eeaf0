//! The Responses API (`/v1/responses`): request translation into a chat
//! completion, the Response object, its stream events, and the store that
//! `previous_response_id` and `GET /v1/responses/{id}` read.

pub mod events;
pub mod object;
pub mod request;
pub mod store;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests;
