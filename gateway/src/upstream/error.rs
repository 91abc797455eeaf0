//! What can go wrong talking to an upstream. Each variant has a bounded
//! reason label (metrics), says whether another deployment may still take
//! the request, and maps to a status in `openai::error`'s one match.

use bytes::Bytes;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    FirstByte,
    Idle,
    Total,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream of `{id}` cannot be reached: {why}")]
    Connect { id: String, why: String },
    #[error("the upstream of `{id}` did not answer in time ({})", phase_text(*.phase))]
    Timeout { id: String, phase: Phase },
    /// The upstream's own error answer. `body` is passed to the client as
    /// is when it is OpenAI-shaped.
    #[error("the upstream of `{id}` answered {status}: {message}")]
    Answered {
        id: String,
        status: u16,
        message: String,
        body: Option<Bytes>,
        retry_after: Option<u64>,
    },
    #[error("the upstream of `{id}` sent an answer herd cannot read: {why}")]
    BadAnswer { id: String, why: String },
    #[error("the upstream of `{id}` broke off the answer: {why}")]
    BrokeOff { id: String, why: String },
    #[error("the upstream of `{id}` is resting after failures (circuit open); retry after {retry_after} s")]
    CircuitOpen { id: String, retry_after: u64 },
}

fn phase_text(p: Phase) -> &'static str {
    match p {
        Phase::FirstByte => "no first byte within first_byte_timeout_ms",
        Phase::Idle => "no event within idle_timeout_ms",
        Phase::Total => "not finished within total_timeout_ms",
    }
}

impl UpstreamError {
    /// The `reason` label of `herd_backend_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { phase, .. } => match phase {
                Phase::FirstByte => "first_byte_timeout",
                Phase::Idle => "idle_timeout",
                Phase::Total => "total_timeout",
            },
            Self::Answered { status: 429, .. } => "status_429",
            Self::Answered { status, .. } if *status >= 500 => "status_5xx",
            Self::Answered { .. } => "status_4xx",
            Self::BadAnswer { .. } => "bad_answer",
            Self::BrokeOff { .. } => "broken_stream",
            Self::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Before the first byte reached the client: may another deployment (or
    /// a later attempt) take the request? Connect errors, 429, 5xx,
    /// timeouts and unreadable answers: yes; the upstream's 4xx: no, the
    /// request itself is at fault.
    pub fn allows_fallback(&self) -> bool {
        match self {
            Self::Answered { status, .. } => *status == 429 || *status >= 500,
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::BadAnswer { .. }
            | Self::BrokeOff { .. }
            | Self::CircuitOpen { .. } => true,
        }
    }

    /// Whether this says the upstream is unwell (moves the circuit breaker):
    /// its answer to a bad request does not.
    pub fn is_unhealthy(&self) -> bool {
        match self {
            Self::Answered { status, .. } => *status >= 500,
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::BadAnswer { .. }
            | Self::BrokeOff { .. } => true,
            Self::CircuitOpen { .. } => false,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Answered { retry_after, .. } => *retry_after,
            Self::CircuitOpen { retry_after, .. } => Some(*retry_after),
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::BadAnswer { .. }
            | Self::BrokeOff { .. } => None,
        }
    }
}
