//! `rollout status --wait` on a terminal (a pseudo-terminal here): one live line redrawn in
//! place with a progress bar as etcd's watch reports changes, ended by a newline on exit; and the
//! ETA from measured swaps on the line.

use std::io::Read as _;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use sidekick::rollout::state::{SwapRecord, VersionState};

use super::{command, config, put_instance, put_state, start};
use crate::support::{poll_until, temp_dir};

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors it opened; the null pointers ask for no name,
    // attributes or window size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are open and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[tokio::test]
async fn on_a_terminal_the_wait_redraws_one_live_bar_and_shows_the_eta() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-live");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    let t0 = Timestamp::now();
    let mut state = VersionState::new("2.0.0", t0);
    // One measured swap of 40 s: the ETA of the one instance left is 40 s away.
    state.add_swap(SwapRecord {
        instance: "web-1".into(),
        took_slot: t0 - jiff::SignedDuration::from_secs(40),
        released: Some(t0),
        steps_ms: Default::default(),
    });
    put_state(&mut client, &state).await;
    put_instance(&mut client, "web-1", "2.0.0").await;
    put_instance(&mut client, "web-2", "1.0.0").await;

    let (master, slave) = openpty();
    let mut child = command(dir.path(), &cfg, &["status", "--wait", "--timeout", "30s"])
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(slave);
    let mut reader = std::fs::File::from(master);
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = output.clone();
    let read = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child closed the terminal.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let seen = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    poll_until(Duration::from_secs(20), "the first live line", || async {
        match seen().contains("1/2") {
            true => Ok(()),
            false => Err(seen()),
        }
    })
    .await
    .expect("first draw");
    let started = Instant::now();
    put_instance(&mut client, "web-2", "2.0.0").await;
    let status = child.wait().expect("ends");
    read.join().expect("reader");
    let text = seen();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");
    let first = "\r\x1b[2K[##########----------] 1/2 ";
    let second = "\r\x1b[2K[####################] 2/2 ";
    let (a, b) = (text.find(first), text.find(second));
    assert!(a.is_some() && b.is_some() && a < b, "{text:?}");
    // Redrawn in place: no new line between the draws, one at the end.
    let between = &text[a.unwrap()..b.unwrap()];
    assert!(!between.contains('\n'), "{text:?}");
    assert!(text.trim_end_matches('\n').len() < text.len(), "{text:?}");
    assert!(
        between.contains("ETA ") && between.contains("1 left × p95 swap 40s"),
        "{text:?}"
    );
}
