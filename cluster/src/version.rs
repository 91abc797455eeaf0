//! Which herd versions can share a cluster: the same major version, and for
//! 0.x the same minor (the wire format may change between 0.x releases).

/// `Err` carries a message that names both versions and what to do.
pub fn check_compatible(ours: &str, theirs: &str) -> Result<(), String> {
    match (series(ours), series(theirs)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(a), _) => Err(format!(
            "incompatible herd versions: this node runs herd {ours}, the peer runs herd {theirs}; \
             run herd {}.x on every node of the cluster",
            a.label()
        )),
        (None, _) => Err(format!(
            "incompatible herd versions: this node runs herd {ours}, the peer runs herd {theirs}"
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Series {
    major: u64,
    minor: Option<u64>,
}

impl Series {
    fn label(&self) -> String {
        match self.minor {
            Some(minor) => format!("{}.{}", self.major, minor),
            None => self.major.to_string(),
        }
    }
}

fn series(version: &str) -> Option<Series> {
    let core = version.trim().split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    Some(Series {
        major,
        minor: (major == 0).then_some(minor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_series_is_compatible() {
        assert!(check_compatible("0.1.0", "0.1.7").is_ok());
        assert!(check_compatible("1.2.0", "1.9.3-beta.1").is_ok());
    }

    #[test]
    fn refusals_name_both_versions() {
        let err = check_compatible("0.1.0", "0.2.0").err().unwrap_or_default();
        assert!(
            err.contains("herd 0.1.0") && err.contains("herd 0.2.0") && err.contains("0.1.x"),
            "{err}"
        );
        let err = check_compatible("1.0.0", "2.0.0").err().unwrap_or_default();
        assert!(
            err.contains("herd 1.0.0") && err.contains("herd 2.0.0") && err.contains("herd 1.x"),
            "{err}"
        );
        assert!(check_compatible("0.1.0", "garbage").is_err());
    }
}
