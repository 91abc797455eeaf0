//! What the layers before a generation handler learnt about its request —
//! the key's name, the key's token meter, the caller, the usage marker and
//! (when usage accounting is on) the end-user headers — and the request's
//! [`RequestTimer`] built from them, the same way for every endpoint.

use super::AppState;
use crate::auth::KeyName;
use crate::caller::Caller;
use crate::keys::limits::TokenMeter;
use crate::metrics::{RequestTimer, ANONYMOUS_KEY};
use crate::usage::refusals::UsageSeen;
use crate::usage::{self, UsageTag};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use std::convert::Infallible;

pub struct RequestContext {
    key: Option<KeyName>,
    meter: Option<TokenMeter>,
    caller: Option<Caller>,
    seen: Option<UsageSeen>,
    /// Only kept when usage accounting is on (they may name the end user).
    headers: Option<HeaderMap>,
}

impl FromRequestParts<AppState> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let ext = &parts.extensions;
        Ok(Self {
            key: ext.get::<KeyName>().cloned(),
            meter: ext.get::<TokenMeter>().cloned(),
            caller: ext.get::<Caller>().cloned(),
            seen: ext.get::<UsageSeen>().cloned(),
            headers: state.usage.as_ref().map(|_| parts.headers.clone()),
        })
    }
}

impl RequestContext {
    /// The request's timer: metrics under `model` and the key's name, tokens
    /// charged to the key's tpm, and (when usage accounting is on) its usage
    /// row tagged with the key, the end user (`user`, else Open WebUI's
    /// headers) and `endpoint`.
    pub fn timer(
        self,
        state: &AppState,
        model: &str,
        user: Option<&str>,
        endpoint: &'static str,
    ) -> RequestTimer {
        let key = self.key.as_ref().map_or(ANONYMOUS_KEY, |k| &k.0);
        let mut timer = state.metrics.request(model, key);
        if let Some(m) = self.meter {
            timer.charge_to(m);
        }
        let (Some(recorder), Some(headers)) = (&state.usage, &self.headers) else {
            return timer;
        };
        if let Some(seen) = &self.seen {
            seen.raise();
        }
        timer.tag_usage(UsageTag::new(
            recorder.recorder.clone(),
            self.caller.and_then(|c| c.key_name),
            usage::end_user(user, headers),
            model,
            endpoint,
        ));
        timer
    }
}
