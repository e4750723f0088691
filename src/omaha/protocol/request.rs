//! Request documents: an update check (ping + updatecheck) or a single event.

use std::fmt::Write as _;

use quick_xml::escape::escape;
use semver::Version;

use super::{AppInstance, Event, InstallSource, UPDATER_VERSION};

/// The XML declaration every request starts with.
const XML_DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// Builds an update check: `<ping active="1">` and `<updatecheck>`, never a piggy-backed event.
pub fn update_check_request(
    app: &AppInstance,
    current: &Version,
    install_source: InstallSource,
) -> String {
    let body = "<ping active=\"1\"></ping><updatecheck></updatecheck>";
    document(app, current, install_source, body)
}

/// Builds an event-only request: one `<event>`, no ping, no updatecheck.
pub fn event_request(app: &AppInstance, current: &Version, event: Event) -> String {
    let mut body = format!(
        "<event eventtype=\"{}\" eventresult=\"{}\"",
        event.event_type(),
        event.event_result()
    );
    if let Some(code) = event.error_code() {
        let _ = write!(body, " errorcode=\"{code}\"");
    }
    body.push_str("></event>");
    document(app, current, InstallSource::Scheduler, &body)
}

fn document(
    app: &AppInstance,
    current: &Version,
    install_source: InstallSource,
    app_body: &str,
) -> String {
    format!(
        "{XML_DECLARATION}<request protocol=\"3.0\" version=\"{updater}\" updaterversion=\"{updater}\" \
         installsource=\"{source}\" ismachine=\"1\"><os platform=\"linux\" arch=\"{arch}\"></os>\
         <app appid=\"{appid}\" version=\"{version}\" track=\"{track}\" bootid=\"{bootid}\" \
         machineid=\"{machineid}\" instancename=\"{name}\">{app_body}</app></request>\n",
        updater = UPDATER_VERSION,
        source = install_source.as_str(),
        arch = escape(app.arch.as_str()),
        appid = escape(app.app_id.as_str()),
        version = escape(current.to_string()),
        track = escape(app.track.as_str()),
        bootid = escape(app.boot_id.as_str()),
        machineid = escape(app.machine_id.as_str()),
        name = escape(app.name.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppInstance {
        AppInstance {
            app_id: "6a6e5b4c-0000-4000-8000-00000000beef".into(),
            track: "stable".into(),
            arch: "x64".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
            name: "web-1".into(),
        }
    }

    #[test]
    fn update_check_has_ping_and_updatecheck_and_no_event() {
        let xml = update_check_request(&app(), &Version::new(1, 2, 3), InstallSource::Scheduler);
        assert!(xml.starts_with(XML_DECLARATION));
        assert!(xml.contains("<ping active=\"1\"></ping><updatecheck></updatecheck>"));
        assert!(!xml.contains("<event"));
        assert!(xml.contains("installsource=\"scheduler\""));
    }

    #[test]
    fn interactive_check_says_ondemandupdate() {
        let xml = update_check_request(&app(), &Version::new(1, 2, 3), InstallSource::OnDemand);
        assert!(xml.contains("installsource=\"ondemandupdate\""));
    }

    #[test]
    fn success_event_has_no_errorcode_and_failure_has_one() {
        let ok = event_request(&app(), &Version::new(1, 0, 0), Event::UpdateComplete);
        assert!(ok.contains("<event eventtype=\"3\" eventresult=\"1\"></event>"));
        assert!(!ok.contains("errorcode") && !ok.contains("<ping") && !ok.contains("updatecheck"));
        let failed = event_request(
            &app(),
            &Version::new(1, 0, 0),
            Event::Failed { error_code: 34 },
        );
        assert!(
            failed.contains("<event eventtype=\"3\" eventresult=\"0\" errorcode=\"34\"></event>")
        );
    }

    #[test]
    fn attribute_values_are_escaped() {
        let mut odd = app();
        odd.track = "a\"<b>&".into();
        let xml = update_check_request(&odd, &Version::new(1, 0, 0), InstallSource::Scheduler);
        assert!(xml.contains("track=\"a&quot;&lt;b&gt;&amp;\""));
    }
}
