//! A private PostgreSQL cluster: its own port, socket directory and data directory,
//! owned by the `postgres` user because `initdb` refuses to run as root. Killed on
//! drop.

use std::time::Duration;

use super::system::{self, InstanceDir};

/// Binaries of the PostgreSQL version Debian installs.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster that the test may crash, restart, pause and make read-only.
pub struct PrivateCluster {
    dir: InstanceDir,
    port: u16,
}

impl PrivateCluster {
    /// Creates a cluster with trust authentication on loopback and starts it.
    pub async fn start() -> PrivateCluster {
        let cluster = PrivateCluster::allocate().await;
        let data = cluster.data_dir();
        system::run_as(
            "postgres",
            &bin("initdb"),
            &["--no-sync", "-D", &data, "-A", "trust", "-U", "postgres"],
        )
        .await;
        cluster.write_settings();
        cluster.boot().await;
        cluster
    }

    /// Creates a streaming-replication standby of `primary` and starts it. The standby
    /// is read-only until [`PrivateCluster::promote`].
    pub async fn start_standby_of(primary: &PrivateCluster) -> PrivateCluster {
        let cluster = PrivateCluster::allocate().await;
        let data = cluster.data_dir();
        let port = primary.port.to_string();
        system::run_as(
            "postgres",
            &bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )
        .await;
        cluster.write_settings();
        cluster.boot().await;
        cluster
    }

    async fn allocate() -> PrivateCluster {
        let dir = InstanceDir::create("postgres");
        dir.chown("postgres").await;
        PrivateCluster {
            dir,
            port: system::free_port(),
        }
    }

    /// Appends this cluster's port, socket directory and loopback address to its
    /// `postgresql.conf`; later lines win over the ones a base backup copied.
    fn write_settings(&self) {
        use std::io::Write as _;

        let path = format!("{}/postgresql.conf", self.data_dir());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("postgresql.conf exists");
        // fsync is off because no test crashes the operating system; an immediate
        // stop still keeps every committed transaction.
        writeln!(
            file,
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nlog_min_messages = warning\n",
            self.port,
            self.dir.path().display()
        )
        .expect("postgresql.conf is written");
    }

    /// Returns the address of the cluster, for a proxy in front of it.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Returns a connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the cluster and waits until it accepts connections.
    pub async fn boot(&self) {
        let data = self.data_dir();
        let log = format!("{}/server.log", self.dir.path().display());
        system::run_as(
            "postgres",
            &bin("pg_ctl"),
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )
        .await;
    }

    /// Stops the cluster with `-m immediate`: every server process exits at once, as in
    /// a crash, and the next start recovers from the write-ahead log.
    pub async fn crash(&self) {
        self.pg_ctl_stop("immediate").await;
    }

    async fn pg_ctl_stop(&self, mode: &str) {
        let data = self.data_dir();
        system::run_as(
            "postgres",
            &bin("pg_ctl"),
            &["-D", &data, "-m", mode, "-w", "stop"],
        )
        .await;
    }

    /// Freezes every server process with SIGSTOP: connections stay open and nothing
    /// responds, as with a stalled disk or a paused virtual machine.
    pub fn pause(&self) {
        for pid in self.server_processes() {
            system::signal_now(pid, "STOP");
        }
    }

    /// Resumes the processes frozen by [`PrivateCluster::pause`].
    pub fn resume(&self) {
        for pid in self.server_processes() {
            system::signal_now(pid, "CONT");
        }
    }

    /// Promotes a standby to a primary that accepts writes.
    pub async fn promote(&self) {
        let data = self.data_dir();
        system::run_as("postgres", &bin("pg_ctl"), &["-D", &data, "-w", "promote"]).await;
    }

    /// Runs one SQL statement as the superuser on `database` with `psql`.
    pub async fn psql(&self, database: &str, sql: &str) -> String {
        system::run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(database),
                "-c",
                sql,
            ],
        )
        .await
    }

    fn data_dir(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn postmaster(&self) -> Option<u32> {
        system::read_pid_file(std::path::Path::new(&format!(
            "{}/postmaster.pid",
            self.data_dir()
        )))
    }

    fn server_processes(&self) -> Vec<u32> {
        let Some(postmaster) = self.postmaster() else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(system::children_of(postmaster));
        pids
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let processes = self.server_processes();
        for pid in &processes {
            system::signal_now(*pid, "CONT");
        }
        if let Some(postmaster) = processes.first().copied()
            && system::is_alive(postmaster)
        {
            // SIGQUIT is PostgreSQL's immediate shutdown; the children follow it.
            system::signal_now(postmaster, "QUIT");
            for _ in 0..200 {
                if !system::is_alive(postmaster) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if system::is_alive(postmaster) {
                system::signal_now(postmaster, "KILL");
            }
        }
    }
}

fn bin(name: &str) -> String {
    format!("{BIN_DIR}/{name}")
}
