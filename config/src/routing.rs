//! How model names reach deployments: `[[aliases]]` (one name, several
//! weighted deployments, a policy to pick one) and each `[[models]]`
//! entry's `fallbacks`. This is the gateway's own policy: every node
//! applies the one in its own config.

use crate::model::check_name;
use crate::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[[aliases]] name = "chat", targets = [{ model = "a", weight = 3 }, { model = "b" }]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// The name clients use in `"model"`.
    pub name: String,
    /// `"least_inflight"` (the default) or `"weighted_round_robin"`.
    pub policy: Option<String>,
    pub targets: Vec<AliasTargetConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AliasTargetConfig {
    /// A `[[models]]` id.
    pub model: String,
    /// Share of the traffic (default 1).
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The target with the fewest requests in flight per unit of weight.
    #[default]
    LeastInflight,
    /// Targets in turn, each `weight` times per round.
    WeightedRoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: String,
    pub policy: Policy,
    /// Deployment id and weight (≥ 1).
    pub targets: Vec<(String, u32)>,
}

/// The validated routing policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub aliases: Vec<Alias>,
    /// Deployment id → the deployments tried after it, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

/// `ids` are every `[[models]]` id of the file, in order, each with its fallbacks.
pub(crate) fn validate(
    aliases: Vec<AliasConfig>,
    ids: &[(String, Vec<String>)],
) -> Result<Routing, ConfigError> {
    let known = |id: &str| ids.iter().any(|(i, _)| i == id);
    let mut fallbacks = BTreeMap::new();
    for (i, (id, list)) in ids.iter().enumerate() {
        let field = format!("models[{i}].fallbacks");
        for (j, f) in list.iter().enumerate() {
            if f == id {
                return Err(ConfigError::invalid(
                    field,
                    format!("names the model itself ({id:?})"),
                ));
            }
            if !known(f) {
                return Err(ConfigError::invalid(
                    field,
                    format!("names {f:?}, which no [[models]] entry defines"),
                ));
            }
            if list[..j].contains(f) {
                return Err(ConfigError::invalid(field, format!("names {f:?} twice")));
            }
        }
        if !list.is_empty() {
            fallbacks.insert(id.clone(), list.clone());
        }
    }
    let mut out = Vec::with_capacity(aliases.len());
    for (i, a) in aliases.into_iter().enumerate() {
        let field = |name: &str| format!("aliases[{i}].{name}");
        check_name(&field("name"), &a.name)?;
        if known(&a.name) || out.iter().any(|o: &Alias| o.name == a.name) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("{:?} is already a model id or alias", a.name),
            ));
        }
        let policy = match a.policy.as_deref() {
            None | Some("least_inflight") => Policy::LeastInflight,
            Some("weighted_round_robin") => Policy::WeightedRoundRobin,
            Some(other) => {
                return Err(ConfigError::invalid(
                    field("policy"),
                    format!(
                        "must be \"least_inflight\" or \"weighted_round_robin\", got {other:?}"
                    ),
                ))
            }
        };
        if a.targets.is_empty() {
            return Err(ConfigError::invalid(
                field("targets"),
                "must name at least one model",
            ));
        }
        let mut targets: Vec<(String, u32)> = Vec::with_capacity(a.targets.len());
        for (j, t) in a.targets.into_iter().enumerate() {
            let f = format!("aliases[{i}].targets[{j}]");
            if !known(&t.model) {
                return Err(ConfigError::invalid(
                    f,
                    format!("names {:?}, which no [[models]] entry defines", t.model),
                ));
            }
            if targets.iter().any(|(m, _)| *m == t.model) {
                return Err(ConfigError::invalid(
                    f,
                    format!("names {:?} twice", t.model),
                ));
            }
            let weight = t.weight.unwrap_or(1);
            if !(1..=1000).contains(&weight) {
                return Err(ConfigError::invalid(
                    format!("{f}.weight"),
                    format!("must be between 1 and 1000, got {weight}"),
                ));
            }
            targets.push((t.model, weight));
        }
        out.push(Alias {
            name: a.name,
            policy,
            targets,
        });
    }
    Ok(Routing {
        aliases: out,
        fallbacks,
    })
}
