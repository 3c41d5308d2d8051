//! Progress on stderr, one line per finished phase (`kpatch-rs: compile 4.36 s`), so a log
//! stays line-oriented; on a terminal, the running phase also shows a spinner with its
//! elapsed time, redrawn in place, since preparing a tree or a one-time full build takes
//! minutes.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The phases of a build, in order: what runs after each one.
const PHASES: &[&str] = &[
    "inputs",
    "patched tree",
    "compile",
    "diff",
    "resolve",
    "link",
    "post-link",
    "sign",
];

const SPINNER: &[char] = &['|', '/', '-', '\\'];

#[derive(Debug)]
pub struct Progress {
    /// The phase running and since when; None once the build is over.
    running: Arc<Mutex<Option<(&'static str, Instant)>>>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts with the first phase; the spinner only when stderr is a terminal.
    pub fn start() -> Progress {
        let running = Arc::new(Mutex::new(Some((PHASES[0], Instant::now()))));
        let spinner = std::io::stderr().is_terminal().then(|| {
            let running = Arc::clone(&running);
            std::thread::spawn(move || spin(&running))
        });
        Progress { running, spinner }
    }

    /// `phase` finished after `seconds`: its line, and the next phase's spinner.
    pub fn finished(&self, phase: &str, seconds: f64) {
        let next = PHASES
            .iter()
            .position(|p| *p == phase)
            .and_then(|i| PHASES.get(i + 1))
            .copied();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut stderr = std::io::stderr().lock();
        if self.spinner.is_some() {
            let _ = write!(stderr, "\r\x1b[K");
        }
        let _ = writeln!(stderr, "kpatch-rs: {phase} {seconds:.2} s");
        *running = next.map(|p| (p, Instant::now()));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            *running = None;
        }
        if let Some(spinner) = self.spinner.take() {
            let _ = spinner.join();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

fn spin(running: &Mutex<Option<(&'static str, Instant)>>) {
    for tick in 0.. {
        std::thread::sleep(Duration::from_millis(150));
        let state = *running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((phase, since)) = state else {
            return;
        };
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[Kkpatch-rs: {phase} {} {}s",
            SPINNER[tick % SPINNER.len()],
            since.elapsed().as_secs()
        );
    }
}
