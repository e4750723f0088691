//! `sidekick run --dry-run` with no configuration and no server: the daemon's whole pass on the
//! embedded defaults, printed as `dry-run: would …` lines, writing nothing and listening only on
//! its control socket (under the config root's `run/sidekick`, removed when it stops), which
//! answers within bounds whatever a client sends. With a configuration, the line saying how a
//! granted update would reach the unit: the drop-in of its unit file or of its Quadlet
//! `.container` file (the kind from systemd's `SourcePath`, or with no system bus from
//! `swap.quadlet_dir`), or the environment-file hand-off.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod support;

use support::prerequisites_met;
use support::systemd::{self, Systemd};

/// The registration the embedded defaults make: the seed layout for `web@1.service` on port 8080.
const EMBEDDED_KEY: &str = "/services/web/web-1";
const EMBEDDED_VALUE: &str = r#"{"host":"127.0.0.1","port":8080}"#;

/// A scratch world for one run: an empty config root, working directory and TMPDIR.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["root", "cwd", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Scratch { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sidekick"));
        command
            .args(args)
            .current_dir(self.dir.path().join("cwd"))
            .env("SIDEKICK_CONFIG_ROOT", self.dir.path().join("root"))
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("HOME", self.dir.path().join("cwd"))
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("sidekick runs")
    }

    /// The control socket of the embedded instance `web@1.service`.
    fn socket(&self) -> PathBuf {
        self.dir.path().join("root/run/sidekick/web@1/control.sock")
    }

    /// `run --dry-run` (no `--once`) with its stdout lines sent to the receiver.
    fn start_daemon(&self) -> (Running, mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
        let mut command = self.command(&["run", "--dry-run"]);
        // Dies with this test process even when it is SIGKILLed. The death signal follows the
        // spawning thread, this test's, which outlives the child: `Running` kills it first.
        // SAFETY: prctl(2) is async-signal-safe.
        unsafe {
            command.pre_exec(
                || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                },
            );
        }
        let mut child = Running(
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("sidekick starts"),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, lines, reader)
    }

    /// Every file under the scratch dirs: the run must leave none.
    fn files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(self.dir.path(), &mut found);
        found
    }
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, found);
        } else {
            found.push(path);
        }
    }
}

/// Names in the places a real run writes to (state dir, drop-in dir), to compare before and after.
fn system_places() -> Vec<String> {
    let mut names = Vec::new();
    for dir in ["/var/lib/sidekick", "/etc/systemd/system/web@1.service.d"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries {
                names.push(entry.unwrap().path().display().to_string());
            }
        }
    }
    names.sort();
    names
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn once_on_embedded_defaults_prints_each_step_writes_nothing_and_exits_0() {
    let scratch = Scratch::new();
    let before = system_places();
    let out = scratch.run(&["run", "--dry-run", "--once"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().all(|l| l.starts_with("dry-run: would ")),
        "every line starts with `dry-run: would`:\n{stdout}"
    );
    let register = format!("dry-run: would register {EMBEDDED_KEY} = {EMBEDDED_VALUE} ");
    // Every step of the swap, in order, each printed by the seam that would make it.
    let steps = [
        register.as_str(),
        // Registered and healthy: what an earlier run may have left is given back first.
        "would release any update slot of group 6a6e5b4c-0000-4000-8000-00000000beef/stable that an earlier run of web-1 left on this host",
        "would check for updates at the in-memory release list: 2.0.0 offered (running 1.0.0), image registry.example.com/web:2.0.0",
        "would send event 13/1",
        "would run `docker pull registry.example.com/web:2.0.0` as a transient unit",
        "would send event 14/1",
        "would take an update slot of group 6a6e5b4c-0000-4000-8000-00000000beef/stable (at most 1 updating at once) to update to 2.0.0",
        "would send event 800/1",
        "would deregister: revoke the registration lease",
        "would wait 5s (swap.drain) for the load balancer to stop routing here",
        "would write /etc/systemd/system/web@1.service.d/50-sidekick.conf setting SIDEKICK_IMAGE=registry.example.com/web:2.0.0 SIDEKICK_VERSION=2.0.0",
        "would reload systemd",
        "would restart web@1.service",
        "would verify web@1.service: active, and no health check configured, within 1m",
        // Registered again and confirmed before the success is reported and the slot released.
        register.as_str(),
        "would send event 3/1",
        "would release the update slot",
        "would deregister: revoke the registration lease",
    ];
    let mut from = 0;
    for step in steps {
        from += lines[from..]
            .iter()
            .position(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no `{step}` after line {from}:\n{stdout}"))
            + 1;
    }
    assert!(stderr.contains("no configuration found"), "{stderr}");

    assert_eq!(
        scratch.files(),
        Vec::<PathBuf>::new(),
        "the dry run wrote files"
    );
    assert_eq!(
        system_places(),
        before,
        "the dry run wrote into the state or drop-in dir"
    );
}

#[test]
fn a_given_release_list_is_offered_and_a_bad_one_is_refused_with_exit_2() {
    let scratch = Scratch::new();
    let list = scratch.dir.path().join("releases.toml");
    // One `run --dry-run --once` against `releases` as the release list.
    let offer = |releases: &str| {
        std::fs::write(&list, releases).unwrap();
        scratch.run(&[
            "run",
            "--dry-run",
            "--once",
            "--releases",
            list.to_str().unwrap(),
        ])
    };
    // 2.1.0, not 3.1.0: the unit runs 1.0.0 and a jump of two majors needs update.allow_major_jump.
    let out = offer(
        "[[release]]\nversion = \"2.1.0\"\ncodebase = \"registry.example.com/web\"\n\
         [[release]]\nversion = \"1.5.0\"\ncodebase = \"registry.example.com/web\"\n",
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("2.1.0 offered (running 1.0.0), image registry.example.com/web:2.1.0"),
        "{stdout}"
    );

    // The in-memory unit runs registry.example.com/web: a release naming another repository is
    // refused (update.allowed_repositories is empty), and nothing is written for it.
    let out = offer("[[release]]\nversion = \"2.1.0\"\ncodebase = \"localhost:5000/web\"\n");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("refused the offer: offered image localhost:5000/web is not in the repository the unit runs (registry.example.com/web)"),
        "{stdout}"
    );
    assert!(!stdout.contains("would restart"), "{stdout}");

    let out = offer("[[release]]\nversion = \"latest\"\ncodebase = \"x\"\n");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("releases.toml") && stderr.contains("`latest`"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).is_empty(),
        "nothing happens after a bad release list"
    );
}

#[test]
fn a_found_configuration_replaces_the_embedded_defaults() {
    let scratch = Scratch::new();
    // --unit is configuration: the embedded defaults no longer apply, so [update] must be set.
    let out = scratch.run(&["run", "--dry-run", "--once", "--unit", "api@2.service"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    assert!(!stderr.contains("embedded defaults"), "{stderr}");
}

/// Inodes of the listening sockets in this network namespace (TCP, UDP bound, Unix listeners).
fn listening_socket_inodes() -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.get(3) == Some(&"0A") {
                inodes.extend(cols.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    for table in ["udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            inodes.extend(cols.get(9).and_then(|i| i.parse::<u64>().ok()));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/unix") {
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // Flags 00010000 is __SO_ACCEPTCON: a listening socket.
            let listening = cols.get(3).is_some_and(|f| *f == "00010000");
            if listening {
                inodes.extend(cols.get(6).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    inodes
}

/// The path a listening Unix socket was bound at.
fn unix_socket_path(inode: u64) -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    text.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        (cols.get(6)?.parse::<u64>().ok()? == inode).then(|| cols.get(7).map(|p| p.to_string()))?
    })
}

/// Inodes of the sockets `pid` holds open.
fn socket_inodes_of(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_once_the_dry_run_keeps_running_listens_only_on_its_control_socket_and_stops_on_sigterm()
{
    let scratch = Scratch::new();
    let (mut child, lines, reader) = scratch.start_daemon();
    let wait_for = |needle: &str| loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(err) => panic!("no line with `{needle}`: {err}"),
        }
    };
    wait_for("would release the update slot");
    // The check sees a listener: this test process's own.
    let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(
        !socket_inodes_of(std::process::id()).is_disjoint(&listening_socket_inodes()),
        "the listening-socket check must see this test's own listener"
    );
    drop(own);
    // Still running after its first pass, listening on nothing but its control socket.
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "exited after one pass without --once"
    );
    let held = socket_inodes_of(child.0.id());
    let listening = listening_socket_inodes();
    let paths: Vec<Option<String>> = held
        .intersection(&listening)
        .map(|inode| unix_socket_path(*inode))
        .collect();
    let socket = scratch.socket().display().to_string();
    assert_eq!(paths, vec![Some(socket)], "listening sockets held");
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    wait_for("would deregister: revoke the registration lease");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    assert!(!scratch.socket().exists(), "the socket is removed on exit");
    assert_eq!(
        scratch.files(),
        Vec::<PathBuf>::new(),
        "the dry run wrote files"
    );
}

/// How long a client waits for any answer in these tests: well past the daemon's 2 s bound.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Sends `request` (nothing when empty) on a fresh connection to `socket` and reads until the
/// daemon closes it; the answer and how long it took.
fn exchange(socket: &Path, request: &[u8]) -> (String, Duration) {
    try_exchange(socket, request).unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
}

/// [`exchange`], failing when nothing listens yet.
fn try_exchange(socket: &Path, request: &[u8]) -> std::io::Result<(String, Duration)> {
    use std::io::{Read as _, Write as _};
    let started = std::time::Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_WAIT))?;
    if !request.is_empty() {
        stream.write_all(request)?;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Ok((answer, started.elapsed()))
}

/// The daemon's state, once its line satisfies `want`.
fn state_when(socket: &Path, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer =
            try_exchange(socket, b"{\"state\":null}\n").map_or_else(|e| e.to_string(), |a| a.0);
        let state: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if want(&state) {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "last state: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_control_socket_answers_state_and_check_now_and_bounds_silent_and_garbage_clients() {
    let scratch = Scratch::new();
    let (child, lines, _reader) = scratch.start_daemon();
    let socket = scratch.socket();
    // The first pass was offered 2.0.0 and the dry-run swap to it is over.
    let state = state_when(&socket, |s| {
        s["last_result"] == "update" && s["phase"] == "serving" && s["registered"] == true
    });
    assert_eq!(state["instance"], "web-1");
    assert_eq!(state["unit"], "web@1.service");
    assert_eq!(state["active_state"], "active");
    assert_eq!(state["status"], "registered");
    assert_eq!(state["version"], "1.0.0", "as the first pass read it");
    assert_eq!(state["pid"], child.0.id());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root only");

    // Check now: the daemon runs its pass (printing its check) and answers as update-check
    // prints. The lines so far are read first.
    while lines.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let (answer, _) = exchange(&socket, b"{\"check\":\"now\"}\n");
    assert_eq!(answer, "{\"status\":\"no-update\"}\n");
    let printed = lines
        .recv_timeout(ANSWER_WAIT)
        .expect("the asked pass prints its check");
    assert!(
        printed.contains("would check for updates at the in-memory release list: no update"),
        "{printed}"
    );

    // A client that sends nothing gets an error when the request bound runs out.
    let (answer, took) = exchange(&socket, b"");
    assert!(answer.contains("no request within 2s"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Garbage and an unknown request are refused.
    let (answer, _) = exchange(&socket, b"\x1b[2J hello\n");
    assert!(answer.contains("\"kind\":\"bad-request\""), "{answer}");
    let (answer, _) = exchange(&socket, b"{\"reboot\":true}\n");
    assert!(answer.contains("unknown request `reboot`"), "{answer}");

    // 10 MB with no newline: the daemon reads 4 KiB of it, answers and hangs up.
    let flood = std::thread::spawn({
        let socket = socket.clone();
        move || {
            use std::io::{Read as _, Write as _};
            let started = std::time::Instant::now();
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
            stream.set_write_timeout(Some(ANSWER_WAIT)).unwrap();
            // Stops at the first failed write: the daemon closed its end.
            let _ = stream.write_all(&vec![b'x'; 10 << 20]);
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            (answer, started.elapsed())
        }
    });
    let (answer, took) = flood.join().unwrap();
    assert!(
        answer.is_empty() || answer.contains("longer than 4096 bytes"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // More silent clients than the daemon serves at once (8) delay an answer by a bound or two.
    let silent: Vec<_> = (0..12)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let (answer, took) = exchange(&socket, b"{\"state\":null}\n");
    assert!(answer.contains("\"phase\":\"serving\""), "{answer}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    drop(silent);

    // Still serving, and answering.
    let mut child = child;
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon died");
    let state = state_when(&socket, |s| s["phase"] == "serving");
    assert_eq!(state["last_result"], "no-update");
    assert_eq!(state["version"], "2.0.0", "as the asked pass read it");
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    assert!(child.0.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// A configured dry run for `web@1.service` with `swap` in its `[swap]` table, `daemon` in its
/// `[daemon]` table and no system bus (the address names no socket): the line saying how a
/// granted update would reach the unit.
fn configured_handoff_line(scratch: &Scratch, swap: &str, daemon: &str) -> String {
    let no_bus = scratch.dir.path().join("no-bus-here");
    let bus = format!("unix:path={}", no_bus.display());
    configured_handoff_line_on(scratch, swap, daemon, &bus)
}

/// [`configured_handoff_line`] with the system bus at `bus`.
fn configured_handoff_line_on(scratch: &Scratch, swap: &str, daemon: &str, bus: &str) -> String {
    let config = scratch.dir.path().join("web.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nenabled = false\n\
             [health]\ncheck = \"none\"\n\
             [update]\nserver = \"http://127.0.0.1:9/v1/update/\"\n\
             app_id = \"6a6e5b4c-0000-4000-8000-00000000beef\"\n\
             [daemon]\ncontrol_socket = \"\"\n{daemon}[swap]\n{swap}"
        ),
    )
    .unwrap();
    let mut command = scratch.command(&["run", "--dry-run", "--config", config.to_str().unwrap()]);
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Running(command.spawn().expect("sidekick starts"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("on a granted update") => return line,
            Ok(_) => continue,
            Err(err) => panic!("no line saying how an update reaches the unit: {err}"),
        }
    }
}

#[test]
fn a_configured_dry_run_names_the_quadlet_dropin_the_real_run_writes_deciding_the_kind_from_quadlet_dir()
 {
    let scratch = Scratch::new();
    let quadlets = scratch.dir.path().join("quadlet");
    let dropins = scratch.dir.path().join("system");
    std::fs::create_dir(&quadlets).unwrap();
    let swap = format!(
        "quadlet_dir = \"{}\"\ndropin_dir = \"{}\"\n",
        quadlets.display(),
        dropins.display()
    );
    // No `.container` file: a unit file of its own, with its `.service.d` drop-in.
    let line = configured_handoff_line(&scratch, &swap, "");
    let service_dropin = dropins.join("web@1.service.d/50-sidekick.conf");
    assert!(
        line.contains(&format!(
            "would swap web@1.service on a granted update by writing its drop-in {}, \
             reloading systemd and restarting it",
            service_dropin.display()
        )),
        "{line}"
    );
    // Quadlet's `web@1.container` there: the drop-in of the `.container` file, as the real run
    // (whose unit's SourcePath names that file) writes it; and said how the kind was decided.
    std::fs::write(
        quadlets.join("web@1.container"),
        "[Container]\nImage=web:1\n",
    )
    .unwrap();
    let line = configured_handoff_line(&scratch, &swap, "");
    let quadlet_dropin = quadlets.join("web@1.container.d/50-sidekick.conf");
    assert!(
        line.contains(&format!(
            "by writing the drop-in {} of its Quadlet file web@1.container (Image=), \
             reloading systemd (Quadlet generates web@1.service again) and restarting it",
            quadlet_dropin.display()
        )),
        "{line}"
    );
    assert!(!line.contains(".service.d"), "{line}");
    assert!(
        line.contains(&format!(
            "systemd not asked, no system bus: the unit's kind from the files in \
             swap.quadlet_dir {}",
            quadlets.display()
        )),
        "{line}"
    );
    assert!(
        !quadlet_dropin.exists() && !dropins.exists(),
        "the dry run wrote a drop-in"
    );
}

#[test]
fn a_configured_dry_run_in_environment_file_mode_names_the_version_request_and_its_template() {
    let scratch = Scratch::new();
    let state = scratch.dir.path().join("state");
    let daemon = format!("state_dir = \"{}\"\n", state.display());
    let line = configured_handoff_line(&scratch, "handoff = \"environment-file\"\n", &daemon);
    assert!(
        line.contains(&format!(
            "would swap web@1.service on a granted update by writing the version request {} \
             and starting sidekick-version@web-1.service, which writes \
             /var/lib/sidekick-versions/web-1.env, then restarting it (no reload; the pre-pull \
             runs as sidekick-prepull@<image>.service)",
            state.join("web-1/version.request").display()
        )),
        "{line}"
    );
    assert!(!line.contains("drop-in"), "{line}");
    assert!(!state.exists(), "the dry run wrote its state");
}

#[tokio::test]
async fn a_configured_dry_run_takes_the_units_kind_from_its_source_path_in_systemd() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    // As Quadlet's generator writes it: the service names the `.container` file it came from.
    systemd.write_unit(
        "web@1.service",
        "[Unit]\nSourcePath=/etc/containers/systemd/web@1.container\n\
         [Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let scratch = Scratch::new();
    // No `.container` file in swap.quadlet_dir: the kind comes from systemd, not the files.
    let quadlets = scratch.dir.path().join("quadlet");
    let swap = format!("quadlet_dir = \"{}\"\n", quadlets.display());
    let line = configured_handoff_line_on(&scratch, &swap, "", systemd.bus_address());
    assert!(
        line.contains(&format!(
            "by writing the drop-in {} of its Quadlet file web@1.container (Image=)",
            quadlets
                .join("web@1.container.d/50-sidekick.conf")
                .display()
        )),
        "{line}"
    );
    assert!(
        line.ends_with("(the unit's kind from its SourcePath in systemd)"),
        "{line}"
    );
}
