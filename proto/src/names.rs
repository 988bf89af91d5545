//! Names that travel between processes and end up in URLs, certificates,
//! log lines and file names: hosts, workloads, sites. One rule for all, a
//! DNS label (RFC 1123, lower case): 1-63 characters of `a-z`, `0-9` and
//! `-`, neither first nor last a `-`. A host name is also the first label
//! of the DNS name its certificate carries (`NAME.host.roam`).

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} name `{shown}` is not valid: {why} (names are 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`)"
)]
pub struct BadName {
    /// What kind of name (`host`, `workload`, `site`).
    pub what: &'static str,
    /// The name, cut to 64 characters and with control characters escaped.
    pub shown: String,
    /// What is wrong.
    pub why: &'static str,
}

/// Longest name.
pub const MAX_NAME: usize = 63;

/// Check `name`, a name of kind `what`.
pub fn check(what: &'static str, name: &str) -> Result<(), BadName> {
    let bad = |why| BadName {
        what,
        shown: name.chars().take(64).flat_map(char::escape_debug).collect(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("it is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("it has a character other than a-z, 0-9 and `-`"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(bad("it starts or ends with `-`"));
    }
    Ok(())
}

/// Check a host name.
pub fn host(name: &str) -> Result<(), BadName> {
    check("host", name)
}

/// Check a workload name.
pub fn workload(name: &str) -> Result<(), BadName> {
    check("workload", name)
}

/// Most labels a host may report.
pub const MAX_LABELS: usize = 64;

/// Check a label: its key is 1-63 characters of `a-z`, `0-9`, `-`, `_`,
/// `.`; its value 1-63 of those and `A-Z` (`jurisdiction=EU`). A `site`
/// label's value is a name ([`check`]).
pub fn label(key: &str, value: &str) -> Result<(), BadName> {
    let shown = |s: &str| s.chars().take(64).flat_map(char::escape_debug).collect();
    let fits = |s: &str, upper: bool| {
        !s.is_empty()
            && s.len() <= MAX_NAME
            && s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || (upper && b.is_ascii_uppercase())
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.')
            })
    };
    if !fits(key, false) {
        return Err(BadName {
            what: "label",
            shown: shown(key),
            why: "a label key is 1-63 characters of a-z, 0-9, `-`, `_` and `.`",
        });
    }
    if key == "site" {
        return check("site", value);
    }
    if !fits(value, true) {
        return Err(BadName {
            what: "label value",
            shown: shown(value),
            why: "a label value is 1-63 characters of letters, digits, `-`, `_` and `.`",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_a_site_is_a_name() {
        assert_eq!(label("jurisdiction", "EU"), Ok(()));
        assert_eq!(label("site", "eu-west-1"), Ok(()));
        assert!(label("site", "EU West").is_err());
        assert!(label("Jurisdiction", "EU").is_err());
        assert!(label("k", "").is_err());
        assert!(label("k", &"v".repeat(64)).is_err());
        assert!(label("k", "a/b").is_err());
    }

    #[test]
    fn dns_labels_pass_and_everything_else_is_refused() {
        for ok in ["a", "eu-1", "host-0042", &"x".repeat(63)] {
            assert_eq!(check("host", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "..",
            "a b",
            "é",
            "a\n",
            &"x".repeat(64),
        ] {
            let e = check("host", bad).unwrap_err();
            assert!(e.to_string().contains("host name"), "{e}");
        }
    }
}
