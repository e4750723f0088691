//! Windows against zincati's documented semantics: plain, past midnight, past the end of the week,
//! overlapping and touching, zincati's own Panama example, both daylight-saving changes of
//! America/New_York, a window inside the skipped hour, the whole week, the fit of a swap and the
//! start jitter.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

use super::*;
use crate::rollout::policy::{Window, parse_day};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn window(days: &[&str], start: &str, length: u32) -> Window {
    Window {
        days: days.iter().map(|d| parse_day(d).expect("a day")).collect(),
        start: crate::rollout::policy::parse_start_time(start).expect("a time"),
        length,
    }
}

fn utc(windows: &[Window]) -> Schedule {
    Schedule::new(windows, TimeZone::UTC)
}

fn zone(name: &str, windows: &[Window]) -> Schedule {
    Schedule::new(windows, jiff::tz::db().get(name).expect("zone in the tzdb"))
}

fn open(opened: &str, closes: &str) -> WindowState {
    WindowState::Open {
        opened: Some(at(opened)),
        closes: Some(at(closes)),
    }
}

fn closed(opens: &str) -> WindowState {
    WindowState::Closed {
        opens: Some(at(opens)),
    }
}

const MIN: Duration = Duration::from_secs(60);

#[test]
fn the_reference_dates_fall_on_the_days_the_tests_say() {
    let day = |t: &str| at(t).to_zoned(TimeZone::UTC).weekday();
    assert_eq!(day("2025-01-06T00:00:00Z"), Weekday::Monday);
    assert_eq!(day("2025-03-09T12:00:00Z"), Weekday::Sunday);
    assert_eq!(day("2025-11-02T12:00:00Z"), Weekday::Sunday);
}

#[test]
fn with_no_window_every_instant_is_unrestricted_and_every_swap_fits() {
    let s = utc(&[]);
    let t = at("2025-01-06T03:00:00Z");
    assert!(s.contains(t));
    assert_eq!(s.state_at(t), WindowState::Unrestricted);
    assert_eq!(s.fits(t, Duration::from_secs(86_400)), Fit::Fits);
}

#[test]
fn a_window_is_open_from_its_start_up_to_but_not_at_its_end() {
    let s = utc(&[window(&["Mon"], "02:00", 120)]);
    assert!(!s.contains(at("2025-01-06T01:59:59Z")));
    assert!(s.contains(at("2025-01-06T02:00:00Z")));
    assert!(s.contains(at("2025-01-06T03:59:59Z")));
    assert!(!s.contains(at("2025-01-06T04:00:00Z")));
    // Only on Mondays.
    assert!(!s.contains(at("2025-01-07T02:30:00Z")));
    assert!(!s.contains(at("2025-01-05T02:30:00Z")));
    assert!(s.contains(at("2025-01-13T02:30:00Z")));
}

#[test]
fn before_during_and_after_a_window_name_the_next_open_and_the_close() {
    let s = utc(&[window(&["Mon"], "02:00", 120)]);
    assert_eq!(
        s.state_at(at("2025-01-06T01:00:00Z")),
        closed("2025-01-06T02:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-06T02:00:00Z")),
        open("2025-01-06T02:00:00Z", "2025-01-06T04:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-06T03:10:42Z")),
        open("2025-01-06T02:00:00Z", "2025-01-06T04:00:00Z")
    );
    // Right after the close the next is a week less two hours away, within the horizon.
    assert_eq!(
        s.state_at(at("2025-01-06T04:00:00Z")),
        closed("2025-01-13T02:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-06T03:59:59Z")),
        open("2025-01-06T02:00:00Z", "2025-01-06T04:00:00Z")
    );
}

#[test]
fn a_close_between_whole_minutes_is_the_next_whole_minute() {
    let s = utc(&[window(&["Tue"], "01:00", 60)]);
    assert_eq!(
        s.state_at(at("2025-01-07T01:59:30Z")),
        open("2025-01-07T01:00:00Z", "2025-01-07T02:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-07T00:59:30.5Z")),
        closed("2025-01-07T01:00:00Z")
    );
}

#[test]
fn a_window_crossing_midnight_runs_into_the_next_day() {
    let s = utc(&[window(&["Sat"], "23:30", 60)]);
    assert!(s.contains(at("2025-01-11T23:45:00Z")));
    assert!(s.contains(at("2025-01-12T00:15:00Z")));
    assert!(!s.contains(at("2025-01-12T00:30:00Z")));
    assert!(
        !s.contains(at("2025-01-11T00:15:00Z")),
        "not Saturday's early hours"
    );
    assert_eq!(
        s.state_at(at("2025-01-12T00:15:00Z")),
        open("2025-01-11T23:30:00Z", "2025-01-12T00:30:00Z")
    );
}

#[test]
fn a_window_crossing_the_end_of_the_week_runs_into_monday() {
    let s = utc(&[window(&["Sun"], "23:30", 60)]);
    assert!(s.contains(at("2025-01-13T00:10:00Z")));
    assert!(!s.contains(at("2025-01-13T00:30:00Z")));
    assert!(!s.contains(at("2025-01-06T23:45:00Z")), "not Monday night");
    assert_eq!(
        s.state_at(at("2025-01-13T00:10:00Z")),
        open("2025-01-12T23:30:00Z", "2025-01-13T00:30:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-13T00:30:00Z")),
        closed("2025-01-19T23:30:00Z")
    );
}

#[test]
fn overlapping_and_touching_windows_are_one_opening() {
    let s = utc(&[
        window(&["Wed"], "01:00", 60),
        window(&["Wed"], "01:30", 60),
        window(&["Wed"], "03:00", 30),
        window(&["Wed"], "03:30", 30),
    ]);
    assert_eq!(
        s.state_at(at("2025-01-08T01:10:00Z")),
        open("2025-01-08T01:00:00Z", "2025-01-08T02:30:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-08T02:30:00Z")),
        closed("2025-01-08T03:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-08T03:29:00Z")),
        open("2025-01-08T03:00:00Z", "2025-01-08T04:00:00Z")
    );
}

#[test]
fn one_window_on_several_days_opens_on_each_of_them() {
    let s = utc(&[window(&["Mon", "Thursday", "sun"], "12:00", 30)]);
    assert_eq!(
        s.state_at(at("2025-01-06T13:00:00Z")),
        closed("2025-01-09T12:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-09T13:00:00Z")),
        closed("2025-01-12T12:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-12T13:00:00Z")),
        closed("2025-01-13T12:00:00Z")
    );
}

#[test]
fn zincatis_panama_example_merges_sunday_night_with_monday_morning() {
    // zincati docs: Sat+Sun 23:30 for 60 min and Mon 00:00 for 60 min in America/Panama (UTC-5,
    // no DST) is 60 min on Saturday night and 90 min from Sunday 23:30 to Monday 01:00.
    let s = zone(
        "America/Panama",
        &[
            window(&["Sat", "Sun"], "23:30", 60),
            window(&["Mon"], "00:00", 60),
        ],
    );
    assert_eq!(
        s.state_at(at("2025-01-12T05:00:00Z")),
        open("2025-01-12T04:30:00Z", "2025-01-12T05:30:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-01-13T05:00:00Z")),
        open("2025-01-13T04:30:00Z", "2025-01-13T06:00:00Z")
    );
}

#[test]
fn spring_forward_shortens_a_window_by_the_skipped_wall_clock_time() {
    // 2025-03-09, America/New_York: 02:00 EST becomes 03:00 EDT (07:00Z). The window 01:30-02:30
    // keeps only 01:30-02:00 EST (06:30Z-07:00Z), as zincati documents.
    let s = zone("America/New_York", &[window(&["Sun"], "01:30", 60)]);
    assert_eq!(
        s.state_at(at("2025-03-09T06:00:00Z")),
        closed("2025-03-09T06:30:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-03-09T06:45:00Z")),
        open("2025-03-09T06:30:00Z", "2025-03-09T07:00:00Z")
    );
    // A week later it is an hour long again, in EDT.
    assert_eq!(
        s.state_at(at("2025-03-16T05:45:00Z")),
        open("2025-03-16T05:30:00Z", "2025-03-16T06:30:00Z")
    );
}

#[test]
fn fall_back_lengthens_a_window_by_the_repeated_wall_clock_time() {
    // 2025-11-02, America/New_York: 02:00 EDT (06:00Z) becomes 01:00 EST. The wall clock runs
    // 01:30-02:00 EDT (in), 01:00-01:30 EST (out), 01:30-02:30 EST (in): 90 minutes in two parts.
    let s = zone("America/New_York", &[window(&["Sun"], "01:30", 60)]);
    assert_eq!(
        s.state_at(at("2025-11-02T05:40:00Z")),
        open("2025-11-02T05:30:00Z", "2025-11-02T06:00:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-11-02T06:10:00Z")),
        closed("2025-11-02T06:30:00Z")
    );
    assert_eq!(
        s.state_at(at("2025-11-02T07:00:00Z")),
        open("2025-11-02T06:30:00Z", "2025-11-02T07:30:00Z")
    );
}

#[test]
fn a_window_inside_the_skipped_hour_is_skipped_that_week() {
    let s = zone("America/New_York", &[window(&["Sun"], "02:00", 30)]);
    assert_eq!(
        s.state_at(at("2025-03-09T05:00:00Z")),
        closed("2025-03-16T06:00:00Z")
    );
}

#[test]
fn windows_covering_the_whole_week_never_close_and_every_swap_fits() {
    let s = utc(&[window(&["Mon"], "00:00", 7 * 24 * 60)]);
    let t = at("2025-01-08T12:00:00Z");
    assert_eq!(
        s.state_at(t),
        WindowState::Open {
            opened: None,
            closes: None
        }
    );
    assert_eq!(s.fits(t, Duration::from_secs(86_400 * 30)), Fit::Fits);
}

#[test]
fn a_swap_fits_when_it_ends_by_the_close_and_not_a_second_later() {
    let s = utc(&[window(&["Fri"], "10:00", 60)]);
    let t = at("2025-01-10T10:30:00Z");
    assert_eq!(s.fits(t, 30 * MIN), Fit::Fits);
    assert_eq!(
        s.fits(t, 30 * MIN + Duration::from_secs(1)),
        Fit::TooShort {
            closes: at("2025-01-10T11:00:00Z"),
            needs: 30 * MIN + Duration::from_secs(1)
        }
    );
    assert_eq!(
        s.fits(at("2025-01-10T09:00:00Z"), MIN),
        Fit::Closed {
            opens: Some(at("2025-01-10T10:00:00Z"))
        }
    );
    // A duration too large for any clock never fits a closing window.
    assert!(matches!(s.fits(t, Duration::MAX), Fit::TooShort { .. }));
}

#[test]
fn the_jitter_bound_is_a_quarter_of_the_opening_at_most_ten_minutes() {
    let t = at("2025-01-06T02:00:00Z");
    let after = |minutes: i64| plus_minutes(t, minutes);
    assert_eq!(jitter_bound(Some(t), after(20)), 5 * MIN);
    assert_eq!(jitter_bound(Some(t), after(40)), 10 * MIN);
    assert_eq!(jitter_bound(Some(t), after(41)), 10 * MIN);
    assert_eq!(jitter_bound(Some(t), after(120)), 10 * MIN);
    assert_eq!(jitter_bound(Some(t), after(1)), Duration::from_secs(15));
    assert_eq!(jitter_bound(Some(t), Some(t)), Duration::ZERO);
    assert_eq!(jitter_bound(None, after(20)), MAX_START_JITTER);
    assert_eq!(jitter_bound(Some(t), None), MAX_START_JITTER);
    assert_eq!(MAX_START_JITTER, 10 * MIN);
}

#[test]
fn the_jitter_is_the_draw_share_of_its_bound() {
    assert_eq!(start_jitter(8 * MIN, 0.0), Duration::ZERO);
    assert_eq!(start_jitter(8 * MIN, 0.25), 2 * MIN);
    assert_eq!(start_jitter(8 * MIN, 0.999), (8 * MIN).mul_f64(0.999));
    assert_eq!(start_jitter(8 * MIN, 7.0), 8 * MIN, "clamped to the bound");
    assert_eq!(start_jitter(8 * MIN, -1.0), Duration::ZERO);
}

#[test]
fn the_horizon_is_a_week_and_a_day() {
    assert_eq!(HORIZON_MINUTES, 8 * 24 * 60);
}
