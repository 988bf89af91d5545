//! Label selectors: `jurisdiction=EU,site in (eu-west-1,eu-central-1),!gpu`.
//!
//! The syntax follows Kubernetes' set-based selectors. A selector is a list of
//! requirements separated by commas (commas inside parentheses belong to the
//! value set); a host matches when it meets every requirement:
//!
//! | requirement | meaning |
//! | --- | --- |
//! | `key=value` (or `==`) | the label is present and equal |
//! | `key!=value` | the label is absent or different |
//! | `key in (a,b)` | the label is present and one of the values |
//! | `key notin (a,b)` | the label is absent or none of the values |
//! | `key` | the label is present |
//! | `!key` | the label is absent |

use std::fmt;

/// Labels of a host: key → value (one definition, in `roam-proto`).
pub use roam_proto::Labels;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`
    Equals(String, String),
    /// `key!=value`
    NotEquals(String, String),
    /// `key in (values)`
    In(String, Vec<String>),
    /// `key notin (values)`
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    NotExists(String),
}

impl Requirement {
    /// Whether `labels` meet this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }

    /// The label key this requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// A parsed selector: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// The requirements, in the order written.
    pub requirements: Vec<Requirement>,
}

/// A selector that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector `{input}`: {reason}")]
pub struct SelectorError {
    /// The whole selector text.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

/// Longest selector accepted; selectors come from API bodies.
pub const MAX_SELECTOR_LEN: usize = 4096;

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    /// Parse selector text. The empty string selects every host.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |reason: String| SelectorError {
            input: input.to_string(),
            reason,
        };
        if input.len() > MAX_SELECTOR_LEN {
            return Err(err(format!("longer than {MAX_SELECTOR_LEN} bytes")));
        }
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in input.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(err("unbalanced `)`".into()));
                    }
                }
                ',' if depth == 0 => {
                    parts.push(&input[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(err("unbalanced `(`".into()));
        }
        parts.push(&input[start..]);
        let mut requirements = Vec::new();
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".into()));
            }
            requirements.push(parse_requirement(part).map_err(err)?);
        }
        Ok(Selector { requirements })
    }

    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The first requirement `labels` fail, if any.
    pub fn first_failure(&self, labels: &Labels) -> Option<&Requirement> {
        self.requirements.iter().find(|r| !r.matches(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_set(key: &str, rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("the values of `{key}` must be in parentheses: `{key} in (a,b)`"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_token(v)) {
        return Err(format!("`{bad}` is not a valid label value"));
    }
    Ok(values)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let check_key = |k: &str| {
        if valid_token(k) {
            Ok(k.to_string())
        } else {
            Err(format!("`{k}` is not a valid label key"))
        }
    };
    let check_value = |v: &str| {
        if valid_token(v) {
            Ok(v.to_string())
        } else {
            Err(format!("`{v}` is not a valid label value"))
        }
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        return Ok(Requirement::Exists(check_key(key)?));
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Requirement::NotIn(check_key(key)?, parse_set(key, set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Requirement::In(check_key(key)?, parse_set(key, set)?));
    }
    Err(format!(
        "cannot parse `{part}`; use `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` or `!k`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator_and_matches() {
        let s = Selector::parse("jurisdiction=EU, site in (eu-west-1,eu-central-1), tier!=spot, gpu, !draining, provider notin (acme)").unwrap();
        assert_eq!(s.requirements.len(), 6);
        let good = labels(&[
            ("jurisdiction", "EU"),
            ("site", "eu-west-1"),
            ("gpu", "yes"),
            ("provider", "ovh"),
        ]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("site".into(), "us-east-1".into());
        assert_eq!(
            s.first_failure(&bad).unwrap().to_string(),
            "site in (eu-west-1,eu-central-1)"
        );
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::parse("").unwrap().matches(&Labels::new()));
    }

    #[test]
    fn bad_selectors_say_why() {
        for (input, reason) in [
            ("site in eu-west-1", "must be in parentheses"),
            ("site in (a", "unbalanced `(`"),
            ("a=b,,c=d", "empty requirement"),
            ("a b c", "cannot parse"),
            ("bad key=v", "`bad key` is not a valid label key"),
            ("k=v v", "not a valid label value"),
        ] {
            let e = Selector::parse(input).unwrap_err();
            assert!(e.to_string().contains(reason), "{input}: {e}");
        }
    }
}
