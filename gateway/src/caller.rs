//! The authenticated caller of a request, attached by the auth middleware as a
//! request extension for later layers (limits, usage accounting, admin routes).

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

/// Who is calling: the key's name (`None` when API keys are off) and its role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_name: Option<String>,
    pub role: Role,
}
