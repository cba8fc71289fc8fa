//! `erp-sync-bench`: measures erp-sync on this machine against the ceiling that
//! RabbitMQ and PostgreSQL set in the same run, and writes `docs/benchmarks.md`.
//!
//! The worker and the simulator run as separate processes: the harness starts its own
//! binary again as `erp-sync-bench run` and `erp-sync-bench simulate`, which behave
//! exactly like `erp-sync run` and `erp-sync simulate`, so one build is enough.

mod ceiling;
mod harness;
mod plots;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// Measures erp-sync against the local RabbitMQ and PostgreSQL and writes the results
/// page. Uses its own database (erp_sync_bench) and queues (erp-sync-bench.*).
#[derive(Debug, Parser)]
#[command(name = "erp-sync-bench", version)]
struct Args {
    /// Scenarios to run, comma-separated; all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Multiplier of every event count and duration, for a quick check (0.1) or the
    /// documented run (1.0).
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    scale: f64,
    /// Results page to write; the plots go beside it in a folder of the same name.
    #[arg(long, default_value = "docs/benchmarks.md", value_name = "FILE")]
    out: PathBuf,
}

/// The benchmark scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Raw consume and batched insert rates, commit and broker delivery latency.
    Ceiling,
    /// Committing and acknowledging a backlog with dispatch disabled.
    Ingest,
    /// A backlog over distinct buyers, from start to the last event settled.
    EndToEnd,
    /// A steady stream; latency from publish to the platform receiving the call.
    Latency,
    /// A platform that answers in 100 ms, at the default concurrency.
    SlowPlatform,
    /// The end-to-end run again, on tables that already hold a long history.
    History,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Ceiling,
        Scenario::Ingest,
        Scenario::EndToEnd,
        Scenario::Latency,
        Scenario::SlowPlatform,
        Scenario::History,
    ];
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().collect();
    if matches!(
        arguments.get(1).map(String::as_str),
        Some("run" | "simulate")
    ) {
        return harness::run_as_erp_sync(&arguments[1..]);
    }

    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("erp-sync-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let bench = harness::Bench::new(args.scale)?;
    let mut results = report::Results::new(bench.machine().await, args.scale);

    for scenario in Scenario::ALL
        .into_iter()
        .filter(|scenario| scenarios.contains(scenario))
    {
        eprintln!("== {scenario:?}");
        match scenario {
            Scenario::Ceiling => results.ceiling = Some(ceiling::measure(&bench).await?),
            Scenario::Ingest => results.ingest = Some(scenarios::ingest(&bench).await?),
            Scenario::EndToEnd => {
                results.end_to_end = Some(scenarios::end_to_end(&bench, false).await?)
            }
            Scenario::Latency => results.latency = Some(scenarios::latency(&bench).await?),
            Scenario::SlowPlatform => {
                results.slow_platform = Some(scenarios::slow_platform(&bench).await?)
            }
            Scenario::History => results.history = scenarios::history(&bench).await?,
        }
        eprint!("{}", results.summary());
    }

    report::write(&results, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    bench.cleanup().await;
    Ok(())
}
