//! The FleetLock group-name rule (`^[a-zA-Z0-9.-]+$`), a leaf that imports nothing: the
//! FleetLock client refuses other names, and `[slot]` validation checks `slot.group` against the
//! same rule and derives its default with it.

/// Whether `group` is a FleetLock group name (`^[a-zA-Z0-9.-]+$`).
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
}

/// `name` with every character a FleetLock group may not contain replaced by `-`.
pub fn sanitise_group(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_ascii_alphanumeric() || c == '.' {
            true => c,
            false => '-',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_protocol_pattern() {
        for good in ["web", "default", "e96281a6-stable", "a.b-c"] {
            assert!(valid_group(good), "{good}");
        }
        for bad in ["", "web/stable", "web stable", "web_1", "wëb"] {
            assert!(!valid_group(bad), "{bad}");
        }
        assert_eq!(sanitise_group("web@1_x/stable"), "web-1-x-stable");
    }
}
