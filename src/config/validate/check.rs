//! [`Check`]: the typed checks of single values, each failing with the key and where its value
//! came from.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::config::ConfigError;
use crate::config::bounds::duration_bounds;
use crate::config::origin::Origins;
use crate::config::settings::MAX_SOCKET_PATH;

/// Builds validation errors that point at the key's origin.
pub(super) struct Check<'a> {
    pub(super) origins: &'a Origins,
}

impl Check<'_> {
    pub(super) fn fail(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: self.origins.get(key).cloned(),
            message: message.into(),
        }
    }

    /// A duration within the bounds [`crate::config::bounds`] lists for `key`.
    pub(super) fn duration(&self, key: &str, value: Duration) -> Result<Duration, ConfigError> {
        let Some(bounds) = duration_bounds(key) else {
            return Err(self.fail(key, "has no documented bounds (a bug: add it to bounds.rs)"));
        };
        match bounds.refusal(value) {
            Some(why) => Err(self.fail(key, why)),
            None => Ok(value),
        }
    }

    pub(super) fn non_zero(&self, key: &str, value: u32) -> Result<NonZeroU32, ConfigError> {
        NonZeroU32::new(value).ok_or_else(|| self.fail(key, "must be at least 1"))
    }

    pub(super) fn http_url(&self, key: &str, value: &str) -> Result<Url, ConfigError> {
        // The error is logged: a token or password in the value must not be.
        let shown = crate::logging::redact_url_text(value);
        let url = Url::parse(value).map_err(|err| {
            self.fail(
                key,
                format!("`{shown}` must be an http:// or https:// URL ({err})"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.fail(key, format!("`{shown}` must be an http:// or https:// URL")));
        }
        Ok(url)
    }

    pub(super) fn absolute(&self, key: &str, value: PathBuf) -> Result<PathBuf, ConfigError> {
        if !value.is_absolute() {
            return Err(self.fail(
                key,
                format!("`{}` must be an absolute path", value.display()),
            ));
        }
        Ok(value)
    }

    /// An absolute path short enough to bind a Unix socket at.
    pub(super) fn socket_path(&self, key: &str, value: PathBuf) -> Result<PathBuf, ConfigError> {
        let value = self.absolute(key, value)?;
        let len = value.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(self.fail(
                key,
                format!(
                    "`{}` is {len} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}",
                    value.display()
                ),
            ));
        }
        Ok(value)
    }

    /// Two keys that make sense only together: both set, or neither.
    pub(super) fn both<A, B>(
        &self,
        (a_key, a): (&str, Option<A>),
        (b_key, b): (&str, Option<B>),
    ) -> Result<Option<(A, B)>, ConfigError> {
        match (a, b) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(self.fail(a_key, format!("needs {b_key} as well"))),
            (None, Some(_)) => Err(self.fail(b_key, format!("needs {a_key} as well"))),
        }
    }

    pub(super) fn word(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let ok = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(self.fail(
                key,
                format!(
                    "`{value}` must be non-empty and use only letters, digits, `-`, `_` and `.`"
                ),
            ));
        }
        Ok(value.to_string())
    }
}
