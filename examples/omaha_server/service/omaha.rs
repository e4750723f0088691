//! The Omaha endpoint: decodes a request, applies the store's rules in Nebraska's order (§5.1) and
//! writes the answer byte for byte as Nebraska's Go encoder would (§4.2).

use std::fmt::Write as _;

use serde::Deserialize;

use super::model::{EventRecord, Package, Store, app_key, request_arch};

/// What echo's `XMLBlob` writes before every body, including an empty one (§5.10).
pub const XML_HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

#[derive(Debug, Deserialize)]
struct RequestDoc {
    os: Option<OsDoc>,
    #[serde(rename = "app", default)]
    apps: Vec<AppRequestDoc>,
}

#[derive(Debug, Deserialize)]
struct OsDoc {
    #[serde(rename = "@arch", default)]
    arch: String,
}

#[derive(Debug, Deserialize)]
struct AppRequestDoc {
    #[serde(rename = "@appid", default)]
    appid: String,
    #[serde(rename = "@version", default)]
    version: String,
    #[serde(rename = "@track", default)]
    track: String,
    #[serde(rename = "@machineid", default)]
    machineid: String,
    /// The sidekick's instance name (its own attribute; Nebraska does not read it).
    #[serde(rename = "@instancename", default)]
    instancename: String,
    #[serde(rename = "@board", default)]
    board: String,
    ping: Option<MarkerDoc>,
    updatecheck: Option<MarkerDoc>,
    #[serde(rename = "event", default)]
    events: Vec<EventDoc>,
}

/// `<ping>` and `<updatecheck>`: only their presence matters here.
#[derive(Debug, Deserialize)]
struct MarkerDoc {
    #[serde(rename = "@active", default)]
    _active: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct EventDoc {
    #[serde(rename = "@eventtype", default)]
    eventtype: i64,
    #[serde(rename = "@eventresult", default)]
    eventresult: i64,
    #[serde(rename = "@errorcode", default)]
    errorcode: Option<i64>,
    #[serde(rename = "@previousversion", default)]
    previousversion: Option<String>,
}

/// Answers one Omaha request body; an undecodable one gets the bare XML header (§4.2 g).
pub fn answer(store: &mut Store, body: &str, now_ms: u64) -> String {
    let is_request = body
        .trim_start()
        .strip_prefix("<?xml")
        .map_or(body, |rest| {
            rest.split_once("?>").map_or("", |(_, tail)| tail)
        })
        .trim_start()
        .starts_with("<request");
    let request: RequestDoc = match quick_xml::de::from_str(body) {
        Ok(request) if is_request => request,
        _ => return XML_HEADER.to_owned(),
    };
    let os_arch = request.os.as_ref().map_or("", |os| os.arch.as_str());
    let mut out = format!(
        "{XML_HEADER}<response protocol=\"3.0\" server=\"nebraska\"><daystart elapsed_seconds=\"0\"></daystart>"
    );
    for app in &request.apps {
        if !answer_app(store, app, os_arch, now_ms, &mut out) {
            break;
        }
    }
    out.push_str("</response>");
    out
}

/// Appends one `<app>`; false when Nebraska stops processing the request here.
fn answer_app(
    store: &mut Store,
    req: &AppRequestDoc,
    os_arch: &str,
    now: u64,
    out: &mut String,
) -> bool {
    let appid = go_escape(&req.appid);
    let lookup = store.apps.get_mut(&app_key(&req.appid)).and_then(|app| {
        let group = app.group_for(&req.track, request_arch(&req.board, os_arch))?;
        Some((app, group))
    });
    let Some((app, group)) = lookup else {
        let _ = write!(
            out,
            "<app appid=\"{appid}\" status=\"error-failedToRetrieveUpdatePackageInfo\">{}</app>",
            updatecheck_error()
        );
        return false;
    };
    let mut status = "ok";
    let mut body = String::new();
    for event in &req.events {
        let record = EventRecord {
            event_type: event.eventtype,
            event_result: event.eventresult,
            error_code: event.errorcode,
            previous_version: event.previousversion.clone(),
            at_ms: now,
        };
        if !app.record_event(&req.machineid, record) {
            tracing::debug!(machine_id = %req.machineid, ?event, "event ignored");
        }
    }
    if req.ping.is_some() {
        // Nebraska acks the ping even when the registration fails.
        let _ = app.register(&req.machineid, &req.version, &group, now);
        app.name_instance(&req.machineid, &req.instancename);
        body.push_str("<ping status=\"ok\"></ping>");
    }
    if req.updatecheck.is_some() {
        match app.update_package(&req.machineid, &req.version, &group, now) {
            Ok(Some(package)) => body.push_str(&updatecheck_ok(&package)),
            Ok(None) => {
                body.push_str("<updatecheck status=\"noupdate\"><urls></urls></updatecheck>")
            }
            Err(refusal) => {
                status = refusal.status();
                body.push_str(&updatecheck_error());
            }
        }
    }
    for _ in &req.events {
        body.push_str("<event status=\"ok\"></event>");
    }
    let _ = write!(
        out,
        "<app appid=\"{appid}\" status=\"{status}\">{body}</app>"
    );
    true
}

fn updatecheck_error() -> String {
    "<updatecheck status=\"error-internal\"><urls></urls></updatecheck>".to_owned()
}

/// A granted update as in §4.2 (b): `hash` and `hash_sha256` only when set, `<actions>` empty.
fn updatecheck_ok(package: &Package) -> String {
    let mut attrs = format!("name=\"{}\"", go_escape(&package.filename));
    if !package.hash.is_empty() {
        let _ = write!(attrs, " hash=\"{}\"", go_escape(&package.hash));
    }
    if !package.hash_sha256.is_empty() {
        let _ = write!(
            attrs,
            " hash_sha256=\"{}\"",
            go_escape(&package.hash_sha256)
        );
    }
    format!(
        "<updatecheck status=\"ok\"><urls><url codebase=\"{}\"></url></urls><manifest version=\"{}\">\
         <packages><package {attrs} size=\"{}\" required=\"true\"></package></packages>\
         <actions></actions></manifest></updatecheck>",
        go_escape(&package.url),
        go_escape(&package.version),
        package.size,
    )
}

/// Escapes an attribute value as Go's `encoding/xml` `EscapeText` does.
fn go_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}
