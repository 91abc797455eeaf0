//! Who is calling: what the API-key middleware found, attached to every
//! authenticated request as an extension for later layers (limits, usage,
//! admin routes). It never holds the secret.

/// What a key may do beyond calling the OpenAI API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Calls the OpenAI API.
    #[default]
    User,
    /// Also manages keys and reads usage (`/admin/...`).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller. `key_name` is `None` when the server has no
/// keys at all (an open server), whose callers are users, never admins.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_name: Option<String>,
    pub role: Role,
}
