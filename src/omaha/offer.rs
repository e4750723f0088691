//! Validation of an update offer before anything acts on it: the version must be strict semver
//! and newer than the running one, and the image rendered from `update.image` must be a plain
//! Docker image reference (see [`super::image`]). A refused offer is reported with a 3/0 event
//! carrying [`error_code::OFFER_REFUSED`] (34, update_engine's `OmahaResponseInvalid`).

use base64::Engine as _;
use semver::Version;

use super::image::{ImageReference, ImageReferenceError};
use super::protocol::{UpdateOffer, error_code};

/// The default `update.image` template: the codebase is the image reference.
pub const DEFAULT_IMAGE_TEMPLATE: &str = "{codebase}";

/// An offer that passed validation: safe to pull, write into a drop-in and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedUpdate {
    /// The offered version, newer than the current one.
    pub version: Version,
    /// The image to run, pinned to the digest when asked and known.
    pub image: ImageReference,
    /// The package's SHA-256 as lowercase hex, when the offer carried one.
    pub sha256: Option<String>,
    /// The offer as received.
    pub offer: UpdateOffer,
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferRefusal {
    /// The offered version is not strict semver (`2.0`, `v2.0.0`, empty...).
    #[error("offered version {0:?} is not strict semver")]
    InvalidVersion(String),
    /// The offered version is not newer than the current one.
    #[error("offered version {offered} is not newer than the current {current}")]
    NotNewer {
        /// The offered version.
        offered: Version,
        /// The running version.
        current: Version,
    },
    /// The `update.image` template has an unknown or unclosed placeholder.
    #[error("image template {0:?} has an unknown or unclosed placeholder")]
    Template(String),
    /// The rendered image is not an acceptable reference.
    #[error("rendered image is not a valid reference: {0}")]
    Image(#[from] ImageReferenceError),
    /// `hash_sha256` is neither 64 hex characters nor base64 of 32 bytes.
    #[error("package sha256 {0:?} is neither hex nor base64 of 32 bytes")]
    Sha256(String),
    /// `update.pin_digest` or `update.verify_digest` is on and the offer carries no
    /// `hash_sha256` to pin.
    #[error(
        "update.pin_digest (or update.verify_digest) is on and the offer has no package sha256 \
         to pin the image to"
    )]
    Unpinned,
    /// The offered image is in a repository the unit does not run and no
    /// `update.allowed_repositories` entry names.
    #[error(
        "offered image {offered} is not in the repository the unit runs ({running}) nor in \
         update.allowed_repositories"
    )]
    Repository {
        /// The offered image's repository.
        offered: String,
        /// The repository of the image the unit runs.
        running: String,
    },
    /// `update.verify_digest`: the registry resolves the offered tag to another manifest than
    /// the offer's `hash_sha256` (the tag moved, or the service and the registry disagree).
    #[error(
        "the registry resolves {image} to sha256:{registry}, but the offer says sha256:{offered}: \
         the tag moved after publication, or the update service and the registry disagree"
    )]
    DigestMismatch {
        /// The offered image as asked about.
        image: String,
        /// The offer's `hash_sha256`, lowercase hex.
        offered: String,
        /// The digest the registry answered, lowercase hex.
        registry: String,
    },
    /// `update.verify_digest`: the registry could not say which manifest the tag names.
    #[error("update.verify_digest is on and the registry cannot confirm {image}: {detail}")]
    DigestUnverified {
        /// The offered image as asked about.
        image: String,
        /// What the registry answered.
        detail: String,
    },
    /// With the `{codebase}` template, the offered image's tag is not the offered version, so
    /// the version label says nothing about what would run.
    #[error(
        "offered image {image} is labelled {version}, but its tag is not {version}: with \
         update.image = \"{{codebase}}\" the tag must be the version (or the image pinned by digest)"
    )]
    TagNotVersion {
        /// The offered image.
        image: String,
        /// The offered version.
        version: String,
    },
    /// The offer is more than one major version ahead and `update.allow_major_jump` is off.
    #[error(
        "offered version {offered} is more than one major version ahead of the current \
         {current}: set update.allow_major_jump = true to accept such a jump"
    )]
    MajorJump {
        /// The offered version.
        offered: Version,
        /// The running version.
        current: Version,
    },
}

impl OfferRefusal {
    /// A short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidVersion(_) => "invalid-version",
            Self::NotNewer { .. } => "not-newer",
            Self::Template(_) => "invalid-template",
            Self::Image(_) => "invalid-image",
            Self::Sha256(_) => "invalid-sha256",
            Self::Unpinned => "unpinned",
            Self::Repository { .. } => "repository-not-allowed",
            Self::DigestMismatch { .. } => "digest-mismatch",
            Self::DigestUnverified { .. } => "digest-unverified",
            Self::TagNotVersion { .. } => "tag-not-version",
            Self::MajorJump { .. } => "major-jump",
        }
    }

    /// The `errorcode` of the 3/0 event reporting this refusal.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::DigestMismatch { .. } => error_code::DIGEST_MISMATCH,
            _ => error_code::OFFER_REFUSED,
        }
    }
}

/// Validates an offer against the running version, the image template and the digest setting.
pub fn validate_offer(
    offer: &UpdateOffer,
    current: &Version,
    image_template: &str,
    pin_digest: bool,
) -> Result<ValidatedUpdate, OfferRefusal> {
    let version = parse_offered_version(&offer.version, current)?;
    // An unreadable hash only matters when it is about to become the pinned digest; a missing
    // one then refuses the offer too (pinning fails closed).
    let sha256 = match offer.sha256.as_deref().map(sha256_hex) {
        Some(Err(refusal)) if pin_digest => return Err(refusal),
        None if pin_digest => return Err(OfferRefusal::Unpinned),
        Some(Ok(hex)) => Some(hex),
        _ => None,
    };
    let rendered = render_image_template(image_template, offer)?;
    let mut image = ImageReference::parse(&rendered)?;
    if let (true, Some(hex)) = (pin_digest, &sha256) {
        image = image.with_sha256_digest(hex)?;
    }
    Ok(ValidatedUpdate {
        version,
        image,
        sha256,
        offer: offer.clone(),
    })
}

/// Parses the offered version as strict semver and requires it to be newer than `current`.
pub fn parse_offered_version(raw: &str, current: &Version) -> Result<Version, OfferRefusal> {
    let version = Version::parse(raw).map_err(|_| OfferRefusal::InvalidVersion(raw.to_owned()))?;
    if version.cmp_precedence(current) != std::cmp::Ordering::Greater {
        return Err(OfferRefusal::NotNewer {
            offered: version,
            current: current.clone(),
        });
    }
    Ok(version)
}

/// Renders `{codebase}`, `{name}` and `{version}` in one pass, so values are never re-expanded.
pub fn render_image_template(template: &str, offer: &UpdateOffer) -> Result<String, OfferRefusal> {
    let mut out = String::with_capacity(template.len() + offer.codebase.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| OfferRefusal::Template(template.to_owned()))?;
        let value = match &after[..close] {
            "codebase" => &offer.codebase,
            "name" => &offer.name,
            "version" => &offer.version,
            _ => return Err(OfferRefusal::Template(template.to_owned())),
        };
        out.push_str(value);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(OfferRefusal::Template(template.to_owned()));
    }
    out.push_str(rest);
    Ok(out)
}

/// Normalises a package SHA-256 given as 64 hex characters or base64 to lowercase hex.
pub fn sha256_hex(raw: &str) -> Result<String, OfferRefusal> {
    let raw = raw.trim();
    if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(raw.to_ascii_lowercase());
    }
    match base64::engine::general_purpose::STANDARD.decode(raw) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        _ => Err(OfferRefusal::Sha256(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";

    fn offer(version: &str, codebase: &str, name: &str) -> UpdateOffer {
        UpdateOffer {
            version: version.into(),
            codebase: codebase.into(),
            name: name.into(),
            size: None,
            sha1: None,
            sha256: Some(HEX.into()),
        }
    }

    #[test]
    fn accepts_a_newer_version_and_renders_the_template() {
        let v = validate_offer(
            &offer("2.0.0", "registry.example.com/web", "ignored"),
            &Version::new(1, 0, 0),
            "{codebase}:{version}",
            false,
        )
        .unwrap();
        assert_eq!(v.version, Version::new(2, 0, 0));
        assert_eq!(v.image.as_str(), "registry.example.com/web:2.0.0");
        assert_eq!(v.sha256.as_deref(), Some(HEX));
    }

    #[test]
    fn pin_digest_appends_the_hex_sha256() {
        let v = validate_offer(
            &offer("2.0.0", "example/web:2.0.0", ""),
            &Version::new(1, 0, 0),
            DEFAULT_IMAGE_TEMPLATE,
            true,
        )
        .unwrap();
        assert_eq!(v.image.as_str(), format!("example/web:2.0.0@sha256:{HEX}"));
    }

    #[test]
    fn base64_sha256_becomes_hex() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xabu8; 32]);
        assert_eq!(sha256_hex(&b64).unwrap(), "ab".repeat(32));
        assert_eq!(sha256_hex(&HEX.to_uppercase()).unwrap(), HEX);
        assert!(
            sha256_hex("2jmj7l5rSw0yVb/vlWAYkK/YBwk=").is_err(),
            "a SHA-1 is not a SHA-256"
        );
    }

    #[test]
    fn refuses_same_older_and_non_strict_versions() {
        let current = Version::new(2, 0, 0);
        for raw in [
            "2.0.0",
            "1.9.9",
            "2.0.0+build",
            "2.0",
            "v2.0.0",
            "",
            " 2.0.1",
            "02.0.1",
        ] {
            assert!(parse_offered_version(raw, &current).is_err(), "{raw:?}");
        }
        assert!(parse_offered_version("2.0.1-rc.1", &current).is_ok());
    }

    #[test]
    fn template_values_are_not_re_expanded() {
        let o = offer("2.0.0", "{name}", "x");
        assert_eq!(render_image_template("{codebase}", &o).unwrap(), "{name}");
        assert!(render_image_template("{codebase", &o).is_err());
        assert!(render_image_template("{codebase}}", &o).is_err());
        assert!(render_image_template("{other}", &o).is_err());
    }

    #[test]
    fn unreadable_sha256_is_refused_only_when_pinning() {
        let mut o = offer("2.0.0", "example/web", "");
        o.sha256 = Some("not-a-hash".into());
        let current = Version::new(1, 0, 0);
        assert!(validate_offer(&o, &current, "{codebase}", true).is_err());
        let unpinned = validate_offer(&o, &current, "{codebase}", false).unwrap();
        assert_eq!(unpinned.sha256, None);
    }

    #[test]
    fn pin_digest_refuses_an_offer_without_sha256() {
        let mut o = offer("2.0.0", "example/web:2.0.0", "");
        o.sha256 = None;
        let current = Version::new(1, 0, 0);
        let refusal = validate_offer(&o, &current, DEFAULT_IMAGE_TEMPLATE, true).unwrap_err();
        assert_eq!(refusal, OfferRefusal::Unpinned);
        assert_eq!(refusal.kind(), "unpinned");
        assert_eq!(refusal.error_code(), 34);
        assert!(
            refusal.to_string().contains("update.pin_digest"),
            "{refusal}"
        );
        let unpinned = validate_offer(&o, &current, DEFAULT_IMAGE_TEMPLATE, false).unwrap();
        assert_eq!(unpinned.image.as_str(), "example/web:2.0.0");
    }

    #[test]
    fn every_refusal_reports_errorcode_34() {
        let refusal = parse_offered_version("2.0", &Version::new(1, 0, 0)).unwrap_err();
        assert_eq!(refusal.error_code(), 34);
        assert_eq!(refusal.kind(), "invalid-version");
    }
}
