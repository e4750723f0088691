//! Docker image references as sidekick accepts them from an update offer:
//! `[registry[:port]/]path[:tag][@sha256:<64 hex>]`, following the grammar of
//! <https://github.com/distribution/reference/blob/main/regexp.go>, but stricter: only sha256
//! digests, and a fixed set of characters refused outright so nothing can escape into a unit file
//! or an argv.

use std::fmt;

/// Longest accepted reference, registry and digest included.
const MAX_REFERENCE_LEN: usize = 512;
/// Longest repository name (registry + path), as in distribution/reference.
const MAX_NAME_LEN: usize = 255;
/// Longest tag, as in distribution/reference.
const MAX_TAG_LEN: usize = 128;

/// A validated image reference; its text is safe to put in an `Environment=` line or an argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    text: String,
    registry: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an acceptable image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    /// The string is empty.
    #[error("image reference is empty")]
    Empty,
    /// The string is longer than any real reference.
    #[error("image reference is longer than {MAX_REFERENCE_LEN} bytes")]
    TooLong,
    /// Whitespace, a control character, a quote, `$`, `;`, a backslash or another character outside the grammar.
    #[error("image reference contains a forbidden character {0:?}")]
    ForbiddenCharacter(char),
    /// The registry part is not `host[:port]`.
    #[error("invalid registry {0:?}")]
    Registry(String),
    /// A path component is not lowercase `[a-z0-9]` with single separators.
    #[error("invalid path component {0:?}")]
    PathComponent(String),
    /// The repository name is longer than 255 bytes.
    #[error("repository name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag {0:?}")]
    Tag(String),
    /// The digest is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {0:?}")]
    Digest(String),
}

impl ImageReference {
    /// Parses and validates a reference.
    pub fn parse(text: &str) -> Result<Self, ImageReferenceError> {
        if text.is_empty() {
            return Err(ImageReferenceError::Empty);
        }
        if text.len() > MAX_REFERENCE_LEN {
            return Err(ImageReferenceError::TooLong);
        }
        if let Some(bad) = text.chars().find(|c| !is_reference_char(*c)) {
            return Err(ImageReferenceError::ForbiddenCharacter(bad));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(colon) => {
                let at = last_slash + colon;
                (&rest[..at], Some(parse_tag(&rest[at + 1..])?))
            }
            None => (rest, None),
        };
        if name.len() > MAX_NAME_LEN {
            return Err(ImageReferenceError::NameTooLong);
        }
        let (registry, path) = split_registry(name)?;
        for component in path.split('/') {
            if !is_path_component(component) {
                return Err(ImageReferenceError::PathComponent(component.to_owned()));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            registry: registry.map(str::to_owned),
            path: path.to_owned(),
            tag,
            digest,
        })
    }

    /// The reference with `@sha256:<hex>` set; refuses a different digest already present.
    pub fn with_sha256_digest(&self, hex: &str) -> Result<Self, ImageReferenceError> {
        let digest = parse_digest(&format!("sha256:{hex}"))?;
        match &self.digest {
            Some(existing) if *existing == digest => Ok(self.clone()),
            Some(existing) => Err(ImageReferenceError::Digest(format!(
                "{existing} already pinned, offer says {digest}"
            ))),
            None => Self::parse(&format!("{}@{digest}", self.text)),
        }
    }

    /// The full reference text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The registry host and port, when the reference names one.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The repository path, e.g. `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, when present.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest `sha256:<hex>`, when present.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Characters that may appear anywhere in a reference; everything else is refused up front.
fn is_reference_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')
}

/// Docker's rule: the first component is a registry if it has a '.' or ':' or is `localhost`.
fn split_registry(name: &str) -> Result<(Option<&str>, &str), ImageReferenceError> {
    match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !is_registry(first) {
                return Err(ImageReferenceError::Registry(first.to_owned()));
            }
            Ok((Some(first), path))
        }
        _ => Ok((None, name)),
    }
}

fn is_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && host_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let run_end = bytes[i..]
            .iter()
            .position(|&c| alnum(c))
            .map_or(bytes.len(), |p| i + p);
        let separator = &component[i..run_end];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|c| c == b'-');
        if !valid {
            return false;
        }
        i = run_end;
    }
    true
}

fn parse_tag(tag: &str) -> Result<String, ImageReferenceError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(tag.to_owned())
    } else {
        Err(ImageReferenceError::Tag(tag.to_owned()))
    }
}

fn parse_digest(digest: &str) -> Result<String, ImageReferenceError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(digest.to_owned())
    } else {
        Err(ImageReferenceError::Digest(digest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b602d630f0a081840d0ca8fc4d35810e42806642b3127bb702d65c3df227d0f5";

    #[test]
    fn accepts_common_references() {
        for ok in [
            "nginx",
            "coreos/example-apache:2.0.0",
            "index.example.com/webapp:1.2.1",
            "localhost:5000/team/app_name__x:v1.0-rc.1",
            "registry.example.com:443/a/b/c",
            &format!("quay.io/app@sha256:{HEX}"),
            &format!("quay.io/app:1.0.0@sha256:{HEX}"),
        ] {
            assert!(ImageReference::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn splits_registry_path_tag_and_digest() {
        let r =
            ImageReference::parse(&format!("localhost:5000/team/app:1.0.0@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry(), Some("localhost:5000"));
        assert_eq!(r.path(), "team/app");
        assert_eq!(r.tag(), Some("1.0.0"));
        assert_eq!(r.digest(), Some(format!("sha256:{HEX}").as_str()));
    }

    #[test]
    fn refuses_dangerous_characters_and_bad_grammar() {
        for bad in [
            "",
            "app name",
            "app\n:1",
            "app;rm",
            "app$(id)",
            "app\"",
            "app'",
            "a\\b",
            "a\tb",
            "App/Upper",
            "app:",
            "app:-tag",
            "app@sha256:abc",
            "app@md5:0123",
            "a//b",
            "a..b",
            "-a",
            "http://registry/app",
            "bad_host.example.com:x/app",
            "ex-.com/app",
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn pins_a_digest_once() {
        let r = ImageReference::parse("registry.example.com/app:2.0.0").unwrap();
        let pinned = r.with_sha256_digest(HEX).unwrap();
        assert_eq!(
            pinned.as_str(),
            format!("registry.example.com/app:2.0.0@sha256:{HEX}")
        );
        assert_eq!(pinned.with_sha256_digest(HEX).unwrap(), pinned);
        assert!(pinned.with_sha256_digest(&"0".repeat(64)).is_err());
    }

    #[test]
    fn refuses_overlong_names_and_tags() {
        assert!(ImageReference::parse(&"a".repeat(300)).is_err());
        assert!(ImageReference::parse(&format!("app:{}", "t".repeat(129))).is_err());
    }
}
