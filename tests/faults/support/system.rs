//! Operating-system helpers: working directories of private instances, free ports,
//! signals, and the external commands the tests run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Directory under the system temporary directory that contains every private instance.
const INSTANCES_DIR: &str = "erp-sync-faults";

/// Environment variable naming the instance directory of the test that started a
/// worker process.
pub const INSTANCE_VAR: &str = "FAULT_TEST_INSTANCE_DIR";

/// A directory for one private instance or one test's files, removed on drop.
///
/// Its name carries the id of the test process that created it, so a later test can
/// find and end the servers of a test process that was killed before its drop handlers
/// ran.
pub struct InstanceDir {
    path: PathBuf,
}

impl InstanceDir {
    /// Creates `<tmp>/erp-sync-faults/<kind>-<owner pid>-<random>`.
    pub fn create(kind: &str) -> InstanceDir {
        let root = std::env::temp_dir().join(INSTANCES_DIR);
        std::fs::create_dir_all(&root).expect("the instances directory is created");
        let name = format!(
            "{kind}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let path = root.join(name);
        std::fs::create_dir(&path).expect("the instance directory is created");
        InstanceDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the directory and everything in it to a system user.
    pub async fn chown(&self, user: &str) {
        run("chown", &["-R", user, &self.path.display().to_string()]).await;
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Ends the servers and workers of instance directories whose test process no longer
/// runs, and removes those directories. Processes are found through their pid files
/// and ended only when their command line or environment still names the directory,
/// so a process id reused by an unrelated process is left alone.
pub fn reap_orphaned_instances() {
    let root = std::env::temp_dir().join(INSTANCES_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = entry
            .file_name()
            .to_str()
            .and_then(|name| name.split('-').nth(1)?.parse::<u32>().ok());
        if owner.is_none_or(is_alive) {
            continue;
        }
        for pid_file in pid_files_under(&dir) {
            if let Some(pid) = read_pid_file(&pid_file)
                && belongs_to(pid, &dir)
            {
                for child in children_of(pid) {
                    signal_now(child, "CONT");
                }
                signal_now(pid, "CONT");
                signal_now(pid, "KILL");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Finds the pid files of RabbitMQ (`pid`), PostgreSQL (`postmaster.pid`) and workers
/// (`worker-N.pid`) at most two levels below `dir`.
fn pid_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((current, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && depth < 2 {
                pending.push((path, depth + 1));
            } else if name == "pid" || name.to_string_lossy().ends_with(".pid") {
                found.push(path);
            }
        }
    }
    found
}

/// Reads the process id on the first line of a pid file.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Reports whether a process was started for the instance directory `dir`: its
/// command line (PostgreSQL's `-D`) or its environment (RabbitMQ's directories, a
/// worker's [`INSTANCE_VAR`]) names the directory.
fn belongs_to(pid: u32, dir: &Path) -> bool {
    let dir = dir.display().to_string();
    ["cmdline", "environ"].iter().any(|file| {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .is_ok_and(|text| String::from_utf8_lossy(&text).contains(&dir))
    })
}

/// Reports whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line (after the parenthesised name).
fn process_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// The direct children of a process.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = stat[stat.rfind(')')? + 1..].to_owned();
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Sends a signal (`KILL`, `TERM`, `STOP`, …) to a process and waits for `kill` to
/// return; a process that already ended is not an error.
pub fn signal_now(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until a process has ended, failing the test after `limit`.
pub async fn wait_for_exit(pid: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while is_alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a loopback port is free")
        .local_addr()
        .expect("the port is known")
        .port()
}

/// Runs a program to completion and returns its standard output and error, failing
/// the test when it does not succeed.
pub async fn run(program: &str, args: &[&str]) -> String {
    run_with_env(program, args, &[]).await
}

/// Runs a program with extra environment variables, like [`run`].
pub async fn run_with_env(program: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|error| panic!("{program} cannot start: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}:\n{text}",
        output.status
    );
    text
}

/// Runs a program as another system user, like [`run`].
pub async fn run_as(user: &str, program: &str, args: &[&str]) -> String {
    let mut full = vec!["-u", user, "--", program];
    full.extend_from_slice(args);
    run("runuser", &full).await
}
