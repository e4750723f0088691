//! What an offer's version label must hold beyond "newer than the running one", so a label cannot
//! freeze the instance or carry an image it does not name: with an image template that does not
//! put `{version}` into the reference (the default `{codebase}`), the offered image's tag must be
//! the offered version (an untagged image must be pinned by digest); and a jump of more than one
//! major version needs `update.allow_major_jump`.

use semver::Version;

use crate::omaha::{ImageReference, OfferRefusal};

/// The template placeholder that puts the offered version into the reference by construction.
const VERSION_PLACEHOLDER: &str = "{version}";

/// Refuses an image whose tag is not `version` (or `v` + `version`) when `template` does not
/// render the version itself; an image with no tag passes only when pinned by digest.
pub fn check_tag_carries_version(
    template: &str,
    image: &ImageReference,
    version: &Version,
) -> Result<(), OfferRefusal> {
    if template.contains(VERSION_PLACEHOLDER) {
        return Ok(());
    }
    let label = version.to_string();
    let carries = match (image.tag(), image.digest()) {
        (Some(tag), _) => tag == label || tag.strip_prefix('v') == Some(label.as_str()),
        (None, Some(_)) => true,
        (None, None) => false,
    };
    match carries {
        true => Ok(()),
        false => Err(OfferRefusal::TagNotVersion {
            image: image.as_str().to_string(),
            version: label,
        }),
    }
}

/// Refuses `offered` more than one major version ahead of `current` unless `allow_major_jump`.
pub fn check_major_jump(
    offered: &Version,
    current: &Version,
    allow_major_jump: bool,
) -> Result<(), OfferRefusal> {
    if allow_major_jump || offered.major <= current.major.saturating_add(1) {
        return Ok(());
    }
    Err(OfferRefusal::MajorJump {
        offered: offered.clone(),
        current: current.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";

    fn image(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn with_the_codebase_template_the_tag_must_be_the_version() {
        let two = v("2.0.0");
        for ok in [
            "reg.example.com/web:2.0.0",
            "reg.example.com/web:v2.0.0",
            &format!("reg.example.com/web@sha256:{HEX}"),
            &format!("reg.example.com/web:2.0.0@sha256:{HEX}"),
        ] {
            assert_eq!(
                check_tag_carries_version("{codebase}", &image(ok), &two),
                Ok(()),
                "{ok}"
            );
        }
        // The freeze: an old image labelled 99999.0.0, then every genuine update "not newer".
        for bad in [
            "reg.example.com/web:1.0.0",
            "reg.example.com/web",
            "reg.example.com/web:latest",
            &format!("reg.example.com/web:1.0.0@sha256:{HEX}"),
        ] {
            let refusal =
                check_tag_carries_version("{codebase}", &image(bad), &v("99999.0.0")).unwrap_err();
            assert_eq!(refusal.kind(), "tag-not-version", "{bad}");
            assert_eq!(refusal.error_code(), 34);
            assert!(refusal.to_string().contains("99999.0.0"), "{refusal}");
        }
    }

    #[test]
    fn a_template_that_renders_the_version_needs_no_tag_check() {
        assert_eq!(
            check_tag_carries_version(
                "{codebase}:{version}",
                &image("reg.example.com/web:2.0.0"),
                &v("2.0.0")
            ),
            Ok(())
        );
    }

    #[test]
    fn more_than_one_major_version_ahead_needs_allow_major_jump() {
        let current = v("1.4.2");
        assert_eq!(check_major_jump(&v("2.9.0"), &current, false), Ok(()));
        assert_eq!(check_major_jump(&v("1.5.0"), &current, false), Ok(()));
        let refusal = check_major_jump(&v("3.0.0"), &current, false).unwrap_err();
        assert_eq!(refusal.kind(), "major-jump");
        assert!(
            refusal.to_string().contains("update.allow_major_jump"),
            "{refusal}"
        );
        assert!(check_major_jump(&v("99999.0.0"), &current, false).is_err());
        assert_eq!(check_major_jump(&v("3.0.0"), &current, true), Ok(()));
    }
}
