//! Which repositories an offer may move the unit to: by default only the one the unit runs now
//! (from its `SIDEKICK_IMAGE`), so an update service, or anyone on its path, can change the tag
//! or digest but not the registry or the image; `update.allowed_repositories` widens that
//! explicitly. Repositories are compared as Docker names them: `nginx`, `library/nginx` and
//! `docker.io/library/nginx` are one repository.

use super::image::ImageReference;
use super::offer::OfferRefusal;

/// The registry Docker assumes when a reference names none.
const DEFAULT_REGISTRY: &str = "docker.io";
/// Other spellings of [`DEFAULT_REGISTRY`].
const DEFAULT_REGISTRY_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];

/// `registry/path` of `image` in Docker's canonical form (`docker.io/library/nginx`).
pub fn canonical_repository(image: &ImageReference) -> String {
    let registry = match image.registry() {
        None => DEFAULT_REGISTRY,
        Some(r) if DEFAULT_REGISTRY_ALIASES.contains(&r) => DEFAULT_REGISTRY,
        Some(r) => r,
    };
    if registry == DEFAULT_REGISTRY && !image.path().contains('/') {
        format!("{registry}/library/{}", image.path())
    } else {
        format!("{registry}/{}", image.path())
    }
}

/// Accepts `offered` when its repository is the running image's or one of `allowed`
/// (repository names without tag or digest, as `update.allowed_repositories` lists them).
/// A running image that does not parse allows only what `allowed` lists.
pub fn check_repository(
    offered: &ImageReference,
    running_image: &str,
    allowed: &[String],
) -> Result<(), OfferRefusal> {
    let wanted = canonical_repository(offered);
    let running = ImageReference::parse(running_image)
        .map(|image| canonical_repository(&image))
        .ok();
    let listed = allowed.iter().any(|entry| {
        ImageReference::parse(entry).is_ok_and(|image| canonical_repository(&image) == wanted)
    });
    if running.as_deref() == Some(wanted.as_str()) || listed {
        return Ok(());
    }
    Err(OfferRefusal::Repository {
        offered: wanted,
        running: running.unwrap_or_else(|| format!("unreadable {running_image:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    #[test]
    fn docker_hub_spellings_are_one_repository() {
        for text in [
            "nginx",
            "nginx:1.27",
            "library/nginx",
            "docker.io/library/nginx@sha256:3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
            "index.docker.io/library/nginx:latest",
        ] {
            assert_eq!(
                canonical_repository(&image(text)),
                "docker.io/library/nginx",
                "{text}"
            );
        }
        assert_eq!(
            canonical_repository(&image("localhost:5000/web:2")),
            "localhost:5000/web"
        );
    }

    #[test]
    fn a_new_tag_or_digest_of_the_running_repository_is_accepted() {
        let running = "registry.example.com/web:1.0.0";
        for offered in [
            "registry.example.com/web:2.0.0",
            "registry.example.com/web@sha256:3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
            "registry.example.com/web",
        ] {
            assert_eq!(
                check_repository(&image(offered), running, &[]),
                Ok(()),
                "{offered}"
            );
        }
    }

    #[test]
    fn another_registry_or_image_is_refused_with_its_own_kind() {
        let running = "registry.example.com/web:1.0.0";
        for offered in [
            "evil.example.net/web:2.0.0",
            "registry.example.com/other:2.0.0",
            "registry.example.com:5000/web:2.0.0",
            "web:2.0.0",
        ] {
            let refusal = check_repository(&image(offered), running, &[]).unwrap_err();
            assert_eq!(refusal.kind(), "repository-not-allowed", "{offered}");
            assert_eq!(refusal.error_code(), 34);
            let text = refusal.to_string();
            assert!(
                text.contains("registry.example.com/web") && text.contains("allowed_repositories"),
                "{text}"
            );
        }
    }

    #[test]
    fn allowed_repositories_widen_the_choice_explicitly() {
        let running = "registry.example.com/web:1.0.0";
        let allowed = vec!["mirror.example.com/team/web".to_string()];
        assert_eq!(
            check_repository(
                &image("mirror.example.com/team/web:2.0.0"),
                running,
                &allowed
            ),
            Ok(())
        );
        assert!(
            check_repository(&image("mirror.example.com/team/db:2"), running, &allowed).is_err()
        );
    }

    #[test]
    fn an_unreadable_running_image_allows_only_the_listed_repositories() {
        let refusal = check_repository(&image("web:2"), "not an image", &[]).unwrap_err();
        assert!(refusal.to_string().contains("unreadable"), "{refusal}");
        assert_eq!(
            check_repository(&image("web:2"), "not an image", &["web".to_string()]),
            Ok(())
        );
    }
}
