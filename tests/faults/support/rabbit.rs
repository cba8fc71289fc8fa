//! A private RabbitMQ node: its own node name, ports and data directory, owned by the
//! `rabbitmq` user as the Debian start script requires. Killed on drop.

use std::time::Duration;

use tokio::time::Instant;

use super::system::{self, InstanceDir};

/// Maximum wait for a node to accept AMQP connections after it was started.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// Broker settings a test may change before the node starts.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// `consumer_timeout`: how long a delivery may stay unacknowledged before the
    /// broker closes its channel with 406 PRECONDITION_FAILED. The broker checks it
    /// once per `channel_tick_interval`, which is then set to one second.
    pub consumer_timeout: Option<Duration>,
}

/// A RabbitMQ node that the test may kill, stop and start again.
pub struct PrivateBroker {
    dir: InstanceDir,
    node: String,
    port: u16,
    dist_port: u16,
}

impl PrivateBroker {
    /// Writes the node's configuration and boots it.
    pub async fn start(options: &BrokerOptions) -> PrivateBroker {
        let dir = InstanceDir::create("rabbitmq");
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let broker = PrivateBroker {
            node: format!("erpfault{}@localhost", &suffix[..12]),
            port: system::free_port(),
            dist_port: system::free_port(),
            dir,
        };

        let path = broker.dir.path();
        std::fs::create_dir_all(path.join("log")).unwrap();
        std::fs::create_dir_all(path.join("mnesia")).unwrap();
        std::fs::write(path.join("enabled_plugins"), "[].\n").unwrap();
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{}\nlog.console = false\nlog.file.level = info\n",
            broker.port
        );
        let mut advanced = "[].\n".to_owned();
        if let Some(timeout) = options.consumer_timeout {
            conf.push_str(&format!("consumer_timeout = {}\n", timeout.as_millis()));
            advanced = "[{rabbit, [{channel_tick_interval, 1000}]}].\n".to_owned();
        }
        std::fs::write(path.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(path.join("advanced.config"), advanced).unwrap();
        broker.dir.chown("rabbitmq:rabbitmq").await;

        broker.boot().await;
        broker
    }

    /// Returns the AMQP URL of the node, with the default `guest` user (allowed on
    /// loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the node in the background and waits until it accepts AMQP connections.
    pub async fn boot(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        system::run_with_env("rabbitmq-server", &["-detached"], &self.environment()).await;

        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            if accepts_amqp(&self.url()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node {} did not start within {BOOT_LIMIT:?}; log:\n{}",
                self.node,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the node with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&self) {
        let pid = self.pid().expect("the node runs");
        system::signal_now(pid, "KILL");
        system::wait_for_exit(pid, Duration::from_secs(10)).await;
    }

    /// Stops the node cleanly (`rabbitmqctl stop`), which closes client connections
    /// with a `connection.close` from the broker.
    pub async fn stop(&self) {
        let pid_file = self.pid_file().display().to_string();
        self.ctl(&["stop", &pid_file]).await;
    }

    /// Deletes a queue with `rabbitmqctl`, as an operator would.
    pub async fn delete_queue(&self, queue: &str) {
        self.ctl(&["delete_queue", queue]).await;
    }

    /// Counts the consumers on a queue with `rabbitmqctl list_consumers`.
    pub async fn consumers(&self, queue: &str) -> usize {
        self.list("list_consumers", &["queue_name", "consumer_tag"])
            .await
            .iter()
            .filter(|columns| columns.first().map(String::as_str) == Some(queue))
            .count()
    }

    /// Returns the messages of a queue that wait for a consumer and those delivered but
    /// not acknowledged, from `rabbitmqctl list_queues`, or `None` for a missing queue.
    pub async fn queue_depth(&self, queue: &str) -> Option<(u64, u64)> {
        let rows = self
            .list(
                "list_queues",
                &["name", "messages_ready", "messages_unacknowledged"],
            )
            .await;
        rows.iter().find_map(|columns| match columns.as_slice() {
            [name, ready, unacknowledged] if name == queue => {
                Some((ready.parse().ok()?, unacknowledged.parse().ok()?))
            }
            _ => None,
        })
    }

    /// Returns the arguments a queue was declared with, as `rabbitmqctl` prints them.
    pub async fn queue_arguments(&self, queue: &str) -> String {
        let rows = self.list("list_queues", &["name", "arguments"]).await;
        rows.iter()
            .find(|columns| columns.first().map(String::as_str) == Some(queue))
            .map(|columns| columns.join(" "))
            .unwrap_or_default()
    }

    /// Runs `rabbitmqctl` against this node.
    async fn ctl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.node.as_str()];
        full.extend_from_slice(args);
        system::run("rabbitmqctl", &full).await
    }

    /// Runs a `rabbitmqctl` listing command and splits its rows into columns.
    async fn list(&self, command: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let mut args = vec![command, "-q", "--no-table-headers"];
        args.extend_from_slice(columns);
        self.ctl(&args)
            .await
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// Reads the node's log file.
    pub fn log(&self) -> String {
        let path = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.path().join("pid")
    }

    fn pid(&self) -> Option<u32> {
        system::read_pid_file(&self.pid_file())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        let path = self.dir.path().display().to_string();
        vec![
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{path}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{path}/log")),
            ("RABBITMQ_PID_FILE", format!("{path}/pid")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{path}/enabled_plugins"),
            ),
            ("RABBITMQ_CONFIG_FILE", format!("{path}/rabbitmq")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                format!("{path}/advanced.config"),
            ),
            // Erlang distribution and its port mapper on loopback only, whatever the
            // machine's rabbitmq-env.conf says.
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
            (
                "ERL_FLAGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
        ]
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(pid) = self.pid()
            && system::is_alive(pid)
        {
            system::signal_now(pid, "KILL");
            for _ in 0..200 {
                if !system::is_alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reports whether an AMQP handshake with `url` succeeds within a second.
async fn accepts_amqp(url: &str) -> bool {
    let connecting = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(1), connecting).await {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            true
        }
        _ => false,
    }
}
