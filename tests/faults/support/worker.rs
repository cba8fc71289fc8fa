//! The `erp-sync` binary as a child process, with its JSON log in a file so the test
//! can read it while the process runs and after it was killed.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::system;

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_erp-sync");

/// A running `erp-sync` process.
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    log_path: PathBuf,
}

impl WorkerProcess {
    /// Starts `erp-sync ARGS` with only `PATH` and `vars` in its environment; standard
    /// output and error go to `log_path`, appended.
    pub fn spawn(args: &[&str], vars: &[(String, String)], log_path: PathBuf) -> WorkerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the worker log opens");
        let instance_dir = log_path.parent().expect("the log is in a directory");
        let child = Command::new(BINARY)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(system::INSTANCE_VAR, instance_dir)
            .envs(vars.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log handle is cloned"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("erp-sync starts");
        let pid = child.id().expect("the child has a pid");
        // Lets a later test end this process if the test that started it is killed.
        std::fs::write(log_path.with_extension("pid"), pid.to_string())
            .expect("the pid file is written");
        WorkerProcess {
            child,
            pid,
            log_path,
        }
    }

    /// Kills the process with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM or SIGINT (`"TERM"`, `"INT"`).
    pub fn signal(&self, signal: &str) {
        system::signal_now(self.pid, signal);
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("the exit status is read"),
            Err(_) => panic!(
                "erp-sync (pid {}) did not exit within {limit:?}; log:\n{}",
                self.pid,
                self.log_tail(60)
            ),
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory (`VmHWM`) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// The log so far.
    pub fn log(&self) -> WorkerLog {
        WorkerLog::read(&self.log_path)
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log().tail(lines)
    }

    /// Waits until a log line matches, failing the test after `limit`.
    pub async fn wait_for_log(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&LogLine) -> bool,
    ) -> LogLine {
        let deadline = Instant::now() + limit;
        loop {
            // Read before the log, so that a line written just before the exit counts.
            let alive = system::is_alive(self.pid);
            if let Some(line) = self.log().lines.into_iter().find(|line| matches(line)) {
                return line;
            }
            assert!(
                alive,
                "erp-sync exited while the test waited for the log to show {what}; log:\n{}",
                self.log_tail(60)
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for the log to show {what}; log:\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The log of one or more runs written to one file.
pub struct WorkerLog {
    pub lines: Vec<LogLine>,
}

/// One log line: a JSON event of the tracing subscriber, or plain text such as the
/// final `erp-sync: …` message on standard error.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub text: String,
    pub json: Option<Value>,
}

impl LogLine {
    /// The event's message, or the whole line when it is not JSON.
    pub fn message(&self) -> &str {
        self.field("message").unwrap_or(&self.text)
    }

    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`; empty for plain text.
    pub fn level(&self) -> &str {
        self.field("level").unwrap_or("")
    }

    /// A text field of the event.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.json.as_ref()?.get(name)?.as_str()
    }

    /// A numeric field of the event.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.json.as_ref()?.get(name)?.as_u64()
    }

    pub fn is(&self, level: &str, message: &str) -> bool {
        self.level() == level && self.message() == message
    }
}

impl WorkerLog {
    fn read(path: &PathBuf) -> WorkerLog {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines = text
            .lines()
            .map(|line| LogLine {
                text: line.to_owned(),
                json: serde_json::from_str(line).ok(),
            })
            .collect();
        WorkerLog { lines }
    }

    /// The lines with this level and message.
    pub fn find(&self, level: &str, message: &str) -> Vec<&LogLine> {
        self.lines
            .iter()
            .filter(|line| line.is(level, message))
            .collect()
    }

    /// How many lines have this level and message.
    pub fn count(&self, level: &str, message: &str) -> usize {
        self.find(level, message).len()
    }

    /// Whether any line contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.lines.iter().any(|line| line.text.contains(text))
    }

    pub fn tail(&self, count: usize) -> String {
        let start = self.lines.len().saturating_sub(count);
        self.lines[start..]
            .iter()
            .map(|line| line.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
