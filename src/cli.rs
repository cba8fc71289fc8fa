//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::broker::BrokerLink;
use crate::config::{Config, LogFormat};
use crate::exit::{Exit, Incomplete};
use crate::operator::{self, ReplayRequest};
use crate::publish::{prepare_lines, publish_lines};
use crate::storage::{Database, DeadLetterSelector, ParkedSelector};
use crate::telemetry::{Telemetry, TelemetrySettings};
use crate::worker::Worker;

/// erp-sync keeps the SoftwareOne Marketplace Platform in step with the ERP: it consumes
/// buyer, seller and ERP-link events from RabbitMQ and calls the platform's Accounts
/// API, with an outbox and an audit trail in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "erp-sync", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults (also ERP_SYNC_CONFIG).
    /// Environment variables ERP_SYNC_<TABLE>_<KEY> override both.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format: "text" for people, "json" for log collectors. Overrides
    /// `log.format`. The level filter comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker until SIGTERM or Ctrl-C: consume events, store them, call the
    /// platform, retry, record every step.
    Run,
    /// Create the database if it does not exist and apply the schema migrations.
    Migrate,
    /// Serve the built-in simulator of the platform's Accounts API.
    Simulate(SimulateArgs),
    /// Publish a file of events, one JSON envelope per line, to the events exchange.
    Publish(PublishArgs),
    /// Run the whole pipeline once against the local PostgreSQL and RabbitMQ and the
    /// built-in simulator, then print a summary. Uses its own database and queues.
    Demo(DemoArgs),
    /// Show commands by state, the age of the oldest due command, parked commands by
    /// reason and dead letters waiting.
    Status(StatusArgs),
    /// Show the audit timeline of an event id, a command id or a platform object id.
    Audit(AuditArgs),
    /// Put parked commands back in line, after the cause was fixed.
    Replay(ReplayArgs),
    /// List the recorded dead letters, or publish chosen ones to the exchange again.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// An event id (UUID), a command id (number) or a platform object id such as
    /// BUY-1234-5678 or ERP-1234-5678-9012.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay this command (repeatable).
    #[arg(long = "command", value_name = "ID")]
    pub commands: Vec<i64>,
    /// Replay the parked commands of this event (repeatable).
    #[arg(long = "event", value_name = "UUID")]
    pub events: Vec<uuid::Uuid>,
    /// Replay the parked commands about this platform object (repeatable).
    #[arg(long = "object", value_name = "ID")]
    pub objects: Vec<String>,
    /// Replay the commands parked with this reason: permanent_failure,
    /// retries_exhausted, erp_link_not_found or erp_link_disabled.
    #[arg(long, value_name = "REASON")]
    pub park_reason: Option<String>,
    /// Why the commands are replayed; recorded in the audit trail with your user name.
    #[arg(long, value_name = "TEXT", required_unless_present = "dry_run")]
    pub reason: Option<String>,
    /// Show what would be sent, beside what was sent last time, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List recorded dead letters, oldest first.
    List {
        /// Only dead letters with this reason, such as malformed_json.
        #[arg(long, value_name = "REASON")]
        dead_letter_reason: Option<String>,
        /// Only dead letters not yet published again.
        #[arg(long)]
        waiting: bool,
        /// Show at most this many.
        #[arg(long, value_name = "COUNT")]
        limit: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish chosen dead letters to the events exchange again, with their original
    /// body and routing key.
    Republish {
        /// Publish this dead letter (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<i64>,
        /// Publish the dead letters with this reason that were not published again yet.
        #[arg(long, value_name = "REASON")]
        dead_letter_reason: Option<String>,
        /// Why they are published again; recorded in the audit trail with your user name.
        #[arg(long, value_name = "TEXT", required_unless_present = "dry_run")]
        reason: Option<String>,
        /// Show what would be published and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on (overrides `simulator.listen`; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Seed of the generated data set (overrides `simulator.seed`).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Number of generated buyers (overrides `simulator.buyers`).
    #[arg(long, value_name = "COUNT")]
    pub buyers: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// File with one JSON envelope per line; blank lines are skipped.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Routing key for lines that are not valid envelopes (and so have no derivable
    /// key). Without it such lines are reported and not sent.
    #[arg(long, value_name = "KEY")]
    pub routing_key: Option<String>,
    /// Exchange to publish to (overrides `amqp.exchange`).
    #[arg(long, value_name = "NAME")]
    pub exchange: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Longest wait for every event to settle, as a duration such as "2m".
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the demo prints its own progress and
    /// summary, so it logs only warnings and errors.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => crate::telemetry::QUIET_FILTER,
            _ => crate::telemetry::DEFAULT_FILTER,
        }
    }

    /// Reports whether the command exports spans and metrics to a configured
    /// collector. Only the daemon does, and other commands only log.
    pub fn exports_telemetry(&self) -> bool {
        matches!(self.command, Command::Run)
    }

    /// Loads the configuration the command runs with.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

/// Runs one command to completion.
pub async fn run_command(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => {
            let shutdown = crate::shutdown::cancel_on_signals()?;
            let worker = Worker::prepare(config).await?;
            worker.run(shutdown).await
        }
        Command::Migrate => Database::migrate(&config.database).await,
        Command::Simulate(args) => {
            let mut simulator = config.simulator.clone();
            if let Some(listen) = args.listen {
                simulator.listen = listen;
            }
            if let Some(seed) = args.seed {
                simulator.seed = seed;
            }
            if let Some(buyers) = args.buyers {
                simulator.buyers = buyers;
            }
            let shutdown = crate::shutdown::cancel_on_signals()?;
            crate::simulator::serve(simulator, async move { shutdown.cancelled().await }).await
        }
        Command::Publish(args) => publish_file(&config, &args).await,
        Command::Demo(args) => crate::demo::run_demo(config, args.timeout).await,
        Command::Status(args) => {
            let database = Database::connect_checked(&config.database).await?;
            operator::print_status(&database, args.json).await
        }
        Command::Audit(args) => {
            let database = Database::connect_checked(&config.database).await?;
            operator::print_timeline(&database, &args.id, args.json).await
        }
        Command::Replay(args) => {
            let database = Database::connect_checked(&config.database).await?;
            let request = ReplayRequest {
                selector: ParkedSelector {
                    command_ids: args.commands,
                    event_ids: args.events,
                    object_ids: args.objects,
                    park_reason: args.park_reason,
                },
                reason: args.reason.unwrap_or_default(),
                dry_run: args.dry_run,
            };
            operator::replay(&database, &config, &request).await
        }
        Command::DeadLetters(command) => {
            let database = Database::connect_checked(&config.database).await?;
            match command {
                DeadLetterCommand::List {
                    dead_letter_reason,
                    waiting,
                    limit,
                    json,
                } => {
                    let selector = DeadLetterSelector {
                        ids: Vec::new(),
                        reason: dead_letter_reason,
                        waiting_only: waiting,
                        limit,
                    };
                    operator::list_dead_letters(&database, &selector, json).await
                }
                DeadLetterCommand::Republish {
                    ids,
                    dead_letter_reason,
                    reason,
                    dry_run,
                } => {
                    let waiting_only = ids.is_empty();
                    let selector = DeadLetterSelector {
                        ids,
                        reason: dead_letter_reason,
                        waiting_only,
                        limit: None,
                    };
                    operator::republish_dead_letters(
                        &database,
                        &config,
                        &selector,
                        &reason.unwrap_or_default(),
                        dry_run,
                    )
                    .await
                }
            }
        }
    }
}

async fn publish_file(config: &Config, args: &PublishArgs) -> anyhow::Result<()> {
    let contents = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let lines = prepare_lines(&contents, args.routing_key.as_deref());
    let exchange = args.exchange.as_deref().unwrap_or(&config.amqp.exchange);

    let link = BrokerLink::connect(&config.amqp).await?;
    let publisher = link.publisher().await?;
    let report = publish_lines(&publisher, exchange, lines).await?;
    link.close().await;

    for (line, problem) in &report.skipped {
        eprintln!("line {line}: not sent: {problem}");
    }
    for (line, reply) in &report.unroutable {
        eprintln!("line {line}: not routed to any queue: {reply}");
    }
    println!(
        "published {} message(s) to {exchange:?}; {} unroutable, {} not sent",
        report.published,
        report.unroutable.len(),
        report.skipped.len()
    );
    if report.is_complete() {
        Ok(())
    } else {
        Err(Incomplete("some lines were not published".to_owned()).into())
    }
}

/// How long tasks still running after the command returned (a blocking DNS lookup,
/// for one) may take before the process exits without them.
const RUNTIME_SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// Runs `erp-sync` with the given command line (the program name first), returning the
/// process exit code. The benchmark harness runs its worker and simulator through it.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("erp-sync: {error:#}");
            return Exit::for_error(&error).into();
        }
    };
    let telemetry = match Telemetry::install(TelemetrySettings {
        log: &config.log,
        telemetry: &config.telemetry,
        default_filter: cli.default_log_filter(),
        export: cli.exports_telemetry(),
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("erp-sync: {error:#}");
            return Exit::for_error(&error).into();
        }
    };

    // The worker threads follow TOKIO_WORKER_THREADS when it is set.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("erp-sync: cannot start the Tokio runtime: {error}");
            return Exit::Failure.into();
        }
    };
    let exit = runtime.block_on(async {
        match run_command(cli, config).await {
            Ok(()) => Exit::Success,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "erp-sync stopped with an error"
                );
                eprintln!("erp-sync: {error:#}");
                Exit::for_error(&error)
            }
        }
    });

    // Neither a task that does not end nor a collector that does not respond may keep
    // the process from exiting, because both steps have a time limit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_LIMIT);
    telemetry.shutdown();
    exit.into()
}
