//! The control socket's wire format: newline-delimited JSON, one request and one answer per
//! connection.
//!
//! Requests: `{"check":"now"}` (run the update pass now; the answer is a [`CheckReport`], the object
//! `sidekick update-check` prints) and `{"state":null}` (the answer is a [`DaemonState`]). A
//! request is at most [`MAX_REQUEST_BYTES`]; anything else is answered with a [`CheckReport`] of
//! status `error` and kind `bad-request`. Pure: no I/O here.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest request line accepted, without its newline.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// The longest answer line a client reads, without its newline.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run the update pass now and answer with its result.
    CheckNow,
    /// Answer with the daemon's view of its instance.
    State,
}

impl Request {
    /// The request as sent: one JSON object and a newline.
    pub fn line(self) -> &'static str {
        match self {
            Request::CheckNow => "{\"check\":\"now\"}\n",
            Request::State => "{\"state\":null}\n",
        }
    }
}

/// Why a request line is not one the daemon answers.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request is longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("the request is not JSON: {0}")]
    NotJson(String),
    #[error(
        "the request must be one JSON object with one key: {{\"check\":\"now\"}} or {{\"state\":null}}"
    )]
    Shape,
    #[error("unknown request `{0}`: the daemon answers `check` and `state`")]
    Unknown(String),
    #[error("`{key}` takes {expected}, not {found}")]
    Value {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl RequestError {
    /// A stable short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::TooLong => "too-long",
            RequestError::NotJson(_) => "not-json",
            RequestError::Shape => "shape",
            RequestError::Unknown(_) => "unknown",
            RequestError::Value { .. } => "value",
        }
    }
}

/// Parses one request line (its newline, if any, already removed).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|err| RequestError::NotJson(err.to_string()))?;
    let serde_json::Value::Object(object) = value else {
        return Err(RequestError::Shape);
    };
    let mut entries = object.into_iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(RequestError::Shape);
    };
    match (key.as_str(), value) {
        ("check", serde_json::Value::String(when)) if when == "now" => Ok(Request::CheckNow),
        ("check", other) => Err(RequestError::Value {
            key: "check",
            expected: "\"now\"",
            found: shorten(&other.to_string()),
        }),
        ("state", serde_json::Value::Null) => Ok(Request::State),
        ("state", other) => Err(RequestError::Value {
            key: "state",
            expected: "null",
            found: shorten(&other.to_string()),
        }),
        (other, _) => Err(RequestError::Unknown(shorten(other))),
    }
}

/// At most 64 characters of a client's text, for an error message.
fn shorten(text: &str) -> String {
    const KEEP: usize = 64;
    match text.char_indices().nth(KEEP) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The result of one update check, as `update-check` prints it and the daemon answers
/// `{"check":"now"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CheckReport {
    Update {
        version: String,
        image: String,
        sha256: Option<String>,
    },
    NoUpdate,
    OnHold {
        reason: String,
    },
    /// A version that failed on this instance and was rolled back; skipped until a newer one.
    Denylisted {
        version: String,
    },
    /// The group's rollout is halted (by `version`, for `reason`): no check was sent.
    Halted {
        version: String,
        reason: String,
    },
    Error {
        kind: String,
        detail: String,
    },
}

impl CheckReport {
    /// An error report of `kind`.
    pub fn error(kind: &str, detail: impl ToString) -> Self {
        CheckReport::Error {
            kind: kind.to_string(),
            detail: detail.to_string(),
        }
    }

    /// True when the check itself completed (update, no update, on hold or denylisted).
    pub fn completed(&self) -> bool {
        !matches!(self, CheckReport::Error { .. })
    }
}

/// The daemon's view of its instance, the answer to `{"state":null}`. Fields may be added; a
/// reader ignores the ones it does not know.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DaemonState {
    /// The instance name (`instance.name`).
    pub instance: String,
    /// The bound unit.
    pub unit: String,
    /// The unit's `ActiveState` (`unknown` until systemd answered).
    pub active_state: String,
    /// The unit's `LoadState`: `loaded`, `not-found`, `masked`, …
    pub load_state: String,
    /// `serving`, `updating` or `stopping`.
    pub phase: String,
    /// The sd_notify STATUS line.
    pub status: String,
    /// Whether etcd holds the instance's registration.
    pub registered: bool,
    /// The version the unit runs, as the last update pass read it.
    pub version: Option<String>,
    /// When the last update check ran (RFC 3339).
    pub last_check: Option<String>,
    /// Its result: `update`, `no-update`, `on-hold`, `error`, …
    pub last_result: Option<String>,
    /// The daemon's process id.
    pub pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_requests_parse_and_their_own_lines_round_trip() {
        assert_eq!(parse_request(br#"{"check":"now"}"#), Ok(Request::CheckNow));
        assert_eq!(
            parse_request(br#" { "state" : null } "#),
            Ok(Request::State)
        );
        for request in [Request::CheckNow, Request::State] {
            let line = request.line().strip_suffix('\n').unwrap();
            assert_eq!(parse_request(line.as_bytes()), Ok(request));
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_was_wrong() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "not-json"),
            (b"check now", "not-json"),
            (b"\xff\xfe", "not-json"),
            (b"[\"check\"]", "shape"),
            (b"{}", "shape"),
            (br#"{"check":"now","state":null}"#, "shape"),
            (br#"{"reboot":true}"#, "unknown"),
            (br#"{"check":"later"}"#, "value"),
            (br#"{"state":{"x":1}}"#, "value"),
        ];
        for (line, kind) in cases {
            let err = parse_request(line).unwrap_err();
            assert_eq!(
                err.kind(),
                kind,
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
        let err = parse_request(br#"{"check":"later"}"#).unwrap_err();
        assert_eq!(err.to_string(), "`check` takes \"now\", not \"later\"");
    }

    #[test]
    fn a_request_over_the_bound_is_too_long_before_it_is_parsed() {
        let mut line = br#"{"state":null}"#.to_vec();
        line.resize(MAX_REQUEST_BYTES, b' ');
        assert_eq!(parse_request(&line), Ok(Request::State));
        line.push(b' ');
        assert_eq!(parse_request(&line), Err(RequestError::TooLong));
    }

    #[test]
    fn a_clients_long_text_is_shortened_in_the_error() {
        let key = "k".repeat(10_000);
        let err = parse_request(format!("{{\"{key}\":1}}").as_bytes());
        // Over the bound: refused before parsing.
        assert_eq!(err, Err(RequestError::TooLong));
        let key = "k".repeat(1_000);
        let err = parse_request(format!("{{\"{key}\":1}}").as_bytes()).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn check_reports_are_the_objects_update_check_prints() {
        let update = CheckReport::Update {
            version: "2.0.0".into(),
            image: "reg/web:2.0.0".into(),
            sha256: None,
        };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            serde_json::json!({"status":"update","version":"2.0.0","image":"reg/web:2.0.0","sha256":null})
        );
        let held: CheckReport =
            serde_json::from_str(r#"{"status":"on-hold","reason":"error-x"}"#).unwrap();
        assert_eq!(
            held,
            CheckReport::OnHold {
                reason: "error-x".into()
            }
        );
        assert!(held.completed());
        assert!(!CheckReport::error("busy", "x").completed());
    }

    #[test]
    fn a_state_from_a_newer_daemon_with_more_fields_still_reads() {
        let state: DaemonState = serde_json::from_str(
            r#"{"instance":"web-1","unit":"web@1.service","load_state":"not-found","new":1}"#,
        )
        .unwrap();
        assert_eq!(state.load_state, "not-found");
        assert_eq!(state.phase, "");
    }
}
