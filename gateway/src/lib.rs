//! herd's gateway: `http → router → scheduler → Engine`. See docs/architecture.md.

pub mod access_log;
pub mod auth;
pub mod bench;
pub mod caller;
pub mod chat;
pub mod cli;
pub mod deploy;
pub mod embed;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod generate;
pub mod grammar;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod openai;
pub mod router;
pub mod routing;
pub mod scheduler;
pub mod upstream;
pub mod usage;
pub mod validate;
