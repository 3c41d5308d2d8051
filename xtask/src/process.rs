//! Long-running child processes (make, QEMU) whose full output goes to a log file while the
//! terminal shows progress, and whose failure shows the log's tail.
//!
//! Progress goes to stderr so that commands such as `cargo xtask kernel --print-dirs` keep
//! stdout for their answer. On a terminal the last log line is redrawn in place; otherwise a
//! short line is printed every minute, so CI logs stay readable.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How many log lines a failure shows.
const TAIL_LINES: usize = 40;

/// Runs `command` to completion with stdout and stderr appended to `log`, showing `label`
/// and progress. Fails, printing the log's tail, when the command exits non-zero.
pub fn run_logged(command: &mut Command, log: &Path, label: &str) -> Result<()> {
    let status = run_logged_status(command, log, label, None)?;
    if !status.success() {
        print_tail(log);
        bail!("{label} failed ({status}); full log: {}", log.display());
    }
    Ok(())
}

/// Like [`run_logged`], but returns the exit status instead of judging it, and kills the
/// child when `timeout` passes (the status is then `None`).
pub fn run_logged_status(
    command: &mut Command,
    log: &Path,
    label: &str,
    timeout: Option<Duration>,
) -> Result<ExitStatus> {
    match run_with_progress(command, log, label, timeout, &mut |_| {})? {
        Some(status) => Ok(status),
        None => bail!(
            "{label} did not finish in {timeout:?}; log: {}",
            log.display()
        ),
    }
}

/// Runs `command` with its output appended to `log`. `on_output` sees every chunk of new
/// log text as it arrives (the QEMU runner uses it to report results live). Returns `None`
/// when the child was killed because `timeout` passed.
pub fn run_with_progress(
    command: &mut Command,
    log: &Path,
    label: &str,
    timeout: Option<Duration>,
    on_output: &mut dyn FnMut(&str),
) -> Result<Option<ExitStatus>> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    let start_offset = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let stderr_file = log_file
        .try_clone()
        .with_context(|| format!("cannot reopen log {}", log.display()))?;
    let mut child = command
        .stdout(log_file)
        .stderr(stderr_file)
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {label}: {command:?}"))?;
    let mut progress = Progress::new(label, log, start_offset)?;
    let start = Instant::now();
    loop {
        let status = child
            .try_wait()
            .with_context(|| format!("cannot wait for {label}"))?;
        progress.poll(on_output);
        if let Some(status) = status {
            progress.finish(start.elapsed());
            return Ok(Some(status));
        }
        if timeout.is_some_and(|limit| start.elapsed() > limit) {
            kill(&mut child);
            progress.poll(on_output);
            progress.finish(start.elapsed());
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(child: &mut Child) {
    // The child may have exited between try_wait and kill; either way it is gone after wait.
    let _ = child.kill();
    let _ = child.wait();
}

/// Prints the last lines of a log to stderr, after a failure.
pub fn print_tail(log: &Path) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.len().saturating_sub(TAIL_LINES);
    eprintln!(
        "---- last {} lines of {} ----",
        lines.len() - first,
        log.display()
    );
    for line in &lines[first..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of log ----");
}

/// Follows a log file as it grows and draws one status line.
struct Progress {
    label: String,
    file: File,
    offset: u64,
    pending: String,
    last_line: String,
    terminal: bool,
    last_report: Instant,
    started: Instant,
}

impl Progress {
    fn new(label: &str, log: &Path, offset: u64) -> Result<Progress> {
        let file = File::open(log).with_context(|| format!("cannot read log {}", log.display()))?;
        let terminal = std::io::stderr().is_terminal();
        if !terminal {
            eprintln!("{label}: started (log: {})", log.display());
        }
        Ok(Progress {
            label: label.to_string(),
            file,
            offset,
            pending: String::new(),
            last_line: String::new(),
            terminal,
            last_report: Instant::now(),
            started: Instant::now(),
        })
    }

    fn poll(&mut self, on_output: &mut dyn FnMut(&str)) {
        let mut bytes = Vec::new();
        if self.file.seek(SeekFrom::Start(self.offset)).is_err()
            || self.file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(&bytes);
            on_output(&text);
            self.pending.push_str(&text);
            if let Some(end) = self.pending.rfind('\n') {
                if let Some(line) = self.pending[..end].lines().rfind(|l| !l.trim().is_empty()) {
                    self.last_line = line.trim().to_string();
                }
                self.pending.drain(..=end);
            }
        }
        let elapsed = self.started.elapsed().as_secs();
        if self.terminal {
            let line: String = self.last_line.chars().take(90).collect();
            eprint!("\r\x1b[K{} [{elapsed}s] {line}", self.label);
            let _ = std::io::stderr().flush();
        } else if self.last_report.elapsed() >= Duration::from_secs(60) {
            self.last_report = Instant::now();
            eprintln!("{}: still running after {elapsed}s", self.label);
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
        eprintln!("{}: done in {:.1}s", self.label, elapsed.as_secs_f64());
    }
}
