//! `[update]`: the Omaha service, the app's id and track there, and the image template.

use url::{Host, Url};

use super::{Check, unknown_placeholder};
use crate::config::ConfigError;
use crate::config::inputs::UpdateInput;
use crate::config::settings::UpdateSettings;
use crate::omaha::ImageReference;

/// What to do instead when updates are on but not set up: a host that only registers.
const UPDATES_OFF_HINT: &str = "or update.enabled = false for registration only";

/// The app's names in the update service, `(app_id, track)`: checked for shape, not required
/// (`slot.group` defaults to them).
pub(super) fn app(check: &Check, update: &UpdateInput) -> Result<(String, String), ConfigError> {
    if update
        .app_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '&' | '"' | '\''))
    {
        return Err(check.fail(
            "update.app_id",
            "must not contain whitespace, quotes or XML markup",
        ));
    }
    let track = check.word("update.track", &update.track)?;
    Ok((update.app_id.clone(), track))
}

/// Validates `[update]`; with updates enabled the server and app id are required.
pub(super) fn validate(check: &Check, update: UpdateInput) -> Result<UpdateSettings, ConfigError> {
    let server = match (update.server.as_str(), update.enabled) {
        ("", true) => {
            return Err(check.fail(
                "update.server",
                format!(
                    "required while update.enabled is true: set update.server (the Omaha \
                     endpoint, e.g. \"https://nebraska.example.com/v1/update/\") and \
                     update.app_id, {UPDATES_OFF_HINT}"
                ),
            ));
        }
        ("", false) => None,
        (server, _) => Some(check.http_url("update.server", server)?),
    };
    if let Some(url) = &server
        && is_insecure(url)
        && !update.allow_insecure
    {
        return Err(check.fail(
            "update.server",
            format!(
                "is plain http:// to {}, not loopback: anyone on the path could read the \
                 instance's requests and answer with an image of their choosing. Use https://, \
                 or set update.allow_insecure = true to accept this (warned at every start)",
                url.host_str().unwrap_or_default()
            ),
        ));
    }
    for entry in &update.allowed_repositories {
        let repository = ImageReference::parse(entry).ok();
        if repository.is_none_or(|r| r.tag().is_some() || r.digest().is_some()) {
            return Err(check.fail(
                "update.allowed_repositories",
                format!(
                    "`{entry}` must be a repository name without tag or digest, e.g. \
                     \"registry.example.com/web\""
                ),
            ));
        }
    }
    if update.enabled && update.app_id.trim().is_empty() {
        return Err(check.fail(
            "update.app_id",
            format!(
                "required while update.enabled is true: set update.app_id (the app's id in \
                 the update service), {UPDATES_OFF_HINT}"
            ),
        ));
    }
    let (app_id, track) = app(check, &update)?;
    if let Some(name) = unknown_placeholder(&update.image, &["codebase", "name", "version"]) {
        return Err(check.fail(
            "update.image",
            format!("unknown placeholder `{name}`: use {{codebase}}, {{name}} or {{version}}"),
        ));
    }
    Ok(UpdateSettings {
        enabled: update.enabled,
        server,
        track,
        arch: check.word("update.arch", &update.arch)?,
        app_id,
        interval: check.duration("update.interval", update.interval)?,
        image: update.image,
        pin_digest: update.pin_digest,
        ca_file: update.ca_file,
        allow_insecure: update.allow_insecure,
        allowed_repositories: update.allowed_repositories,
        verify_digest: update.verify_digest,
        allow_major_jump: update.allow_major_jump,
    })
}

/// Plain `http://` to a host other than loopback (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_insecure(url: &Url) -> bool {
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    url.scheme() == "http" && !loopback
}

/// The warning for `update.server` accepted over plain http, for every start and `check-config`.
pub fn insecure_warning(update: &UpdateSettings) -> Option<String> {
    let url = update.server.as_ref().filter(|url| is_insecure(url))?;
    Some(format!(
        "update.server is plain http:// to {} (update.allow_insecure = true): the update \
         service's answers, and so the image this unit runs, can be changed by anyone on the \
         network path",
        url.host_str().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, ConfigSources, LoadedConfig, insecure_warning, load};

    /// Loads one file of `[update]` keys (plus what every config needs) from a temp root.
    fn load_update(keys: &str) -> Result<LoadedConfig, ConfigError> {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("web.toml");
        let text = format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n\
             [update]\napp_id = \"app\"\n{keys}\n"
        );
        std::fs::write(&file, text).unwrap();
        load(&ConfigSources {
            root: root.path().to_path_buf(),
            files: vec![file],
            unit: None,
        })
    }

    #[test]
    fn plain_http_to_another_host_is_refused_unless_allowed_and_then_warned() {
        let err = load_update("server = \"http://nebraska.example.com/v1/update/\"")
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("key `update.server`")
                && text.contains("nebraska.example.com")
                && text.contains("update.allow_insecure = true"),
            "{text}"
        );
        let loaded =
            load_update("server = \"http://10.0.0.8/v1/update/\"\nallow_insecure = true").unwrap();
        let warning = insecure_warning(&loaded.settings.update).expect("warned");
        assert!(warning.contains("10.0.0.8"), "{warning}");
        assert!(loaded.render().contains("allow_insecure = true"));
    }

    #[test]
    fn a_refused_server_url_is_named_without_its_secrets() {
        for server in [
            "ftp://user:hunter2@updates.example.com/?token=s3cret",
            "http://user:hunter2@exa mple.com/?token=s3cret",
            "http://user:hunter2@nebraska.example.com/?token=s3cret",
        ] {
            let err = load_update(&format!("server = \"{server}\"")).expect_err(server);
            let text = err.to_string();
            assert!(text.contains("update.server"), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("s3cret"),
                "{text}"
            );
        }
    }

    #[test]
    fn https_and_loopback_http_need_no_allowance_and_get_no_warning() {
        for server in [
            "https://nebraska.example.com/v1/update/",
            "http://127.0.0.1:8000/v1/update/",
            "http://127.9.9.9/v1/update/",
            "http://localhost:8000/v1/update/",
            "http://[::1]:8000/v1/update/",
        ] {
            let loaded = load_update(&format!("server = \"{server}\"")).unwrap();
            assert_eq!(insecure_warning(&loaded.settings.update), None, "{server}");
        }
    }

    #[test]
    fn allowed_repositories_are_repository_names_without_tag_or_digest() {
        let loaded = load_update(
            "server = \"https://u.example.com/\"\n\
             allowed_repositories = [\"registry.example.com/web\", \"nginx\"]",
        )
        .unwrap();
        assert_eq!(
            loaded.settings.update.allowed_repositories,
            ["registry.example.com/web", "nginx"]
        );
        for bad in ["registry.example.com/web:2.0.0", "Web", "a b"] {
            let err = load_update(&format!(
                "server = \"https://u.example.com/\"\nallowed_repositories = [\"{bad}\"]"
            ))
            .expect_err("refused");
            let text = err.to_string();
            assert!(
                text.contains("update.allowed_repositories") && text.contains(bad),
                "{text}"
            );
        }
    }
}
