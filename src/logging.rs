//! Log output: the systemd journal with structured fields when stderr is the journal (or when
//! asked), human-readable lines on stderr otherwise.

use std::io::IsTerminal as _;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use url::Url;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// The journal when stderr is connected to it, else stderr.
    Auto,
    /// The systemd journal, with fields such as UNIT= and VERSION=.
    Journald,
    /// Plain lines on stderr.
    Stderr,
}

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count; `RUST_LOG`, when
/// set, takes precedence over both.
pub fn init(target: LogTarget, verbosity: i8) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level_for(verbosity)));
    let use_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if use_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                // syslog's meaning of the levels (INFO 6, DEBUG 7), as `journalctl -p` expects;
                // the crate's default puts INFO at 5 (notice) and DEBUG at 6.
                let priorities = tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                };
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("sidekick".into())
                    .with_priority_mappings(priorities);
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(err) => eprintln!("sidekick: journal not reachable ({err}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

/// `url` as it may appear in a log line or an error: userinfo and query string (where tokens
/// and passwords are put) dropped, the fragment too. Every URL the sidekick logs passes here.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Both fail only for URLs that cannot have userinfo (`cannot-be-a-base`), which have none.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

/// [`redact_url`] for text that may not parse as a URL (a typo in a configured value):
/// everything from `?` or `#` on is dropped, and so is whatever comes before the authority's
/// last `@` (before the text's last `@` when there is no `://`).
pub fn redact_url_text(text: &str) -> String {
    if let Ok(url) = Url::parse(text) {
        return redact_url(&url);
    }
    let end = text.find(['?', '#']).unwrap_or(text.len());
    let text = &text[..end];
    let Some((scheme, rest)) = text.split_once("://") else {
        return text
            .rfind('@')
            .map_or(text, |at| &text[at + 1..])
            .to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// The level shown by default: info, one step per `-v` or `-q`.
fn level_for(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// True when `JOURNAL_STREAM` names the device and inode of our stderr, as systemd documents.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_scheme_host_and_path_only() {
        let url = Url::parse(
            "https://user:hunter2@updates.example.com:8443/v1/update/?token=s3cret#frag",
        )
        .unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://updates.example.com:8443/v1/update/");
        for secret in ["user", "hunter2", "s3cret", "token", "frag"] {
            assert!(!shown.contains(secret), "{shown} shows {secret}");
        }
        let plain = Url::parse("http://127.0.0.1:2379/").unwrap();
        assert_eq!(redact_url(&plain), "http://127.0.0.1:2379/");
    }

    #[test]
    fn unparsable_url_text_loses_userinfo_and_query_too() {
        for (text, shown) in [
            ("htp//user:hunter2@host/x?token=s3cret", "host/x"),
            (
                "http://user:hunter2@exa mple.com/v1/?token=s3cret",
                "http://exa mple.com/v1/",
            ),
            ("://:hunter2@host:99999/#s3cret", "://host:99999/"),
            (
                "https://u:hunter2@example.com/?token=s3cret",
                "https://example.com/",
            ),
        ] {
            assert_eq!(redact_url_text(text), shown, "{text}");
        }
    }

    #[test]
    fn each_v_or_q_moves_the_level_one_step() {
        let levels: Vec<&str> = (-3..=3).map(level_for).collect();
        assert_eq!(
            levels,
            ["error", "error", "warn", "info", "debug", "trace", "trace"]
        );
    }
}
