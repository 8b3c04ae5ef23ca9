//! The mesh-bench binary: `run` measures everything and writes the markdown report; `serve` is
//! the benchmark server it starts as a child process for each configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_bench::load::Shape;
use mesh_bench::material::Material;
use mesh_bench::report::Report;
use mesh_bench::server::Config;
use mesh_bench::{issuer, memory, micro, place_order, server};

/// What each layer of Zero-Trust Mesh costs, against plain tonic, in one run.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure every configuration, the PlaceOrder path and memory; print the markdown report.
    Run(RunArgs),
    /// Serve one configuration (started by `run`; prints `READY <addr>`, stops when stdin closes).
    Serve {
        /// Which configuration.
        #[arg(long, value_enum)]
        config: Config,
        /// Material written by `run`.
        #[arg(long)]
        dir: PathBuf,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// OTLP/gRPC receiver for configurations 5 to 7.
        #[arg(long)]
        otlp: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Connections to the server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once in the closed-loop run.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Discarded warm-up seconds per run.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Calls per second of the fixed-rate (latency) runs.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// PlaceOrder calls per second.
    #[arg(long, default_value_t = 50.0)]
    place_rate: f64,
    /// Offered PlaceOrder rates of the sweep (comma-separated, per second).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,250,500,750,1000,1500,2000"
    )]
    place_sweep: Vec<f64>,
    /// Idle mTLS connections for the per-connection memory figure: at most 511, since they all
    /// come from one address and a mesh listener holds at most 512 connections per source.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=511))]
    idle_connections: u16,
    /// A quick pass that only shows everything runs (CI): tiny durations, no figures to keep.
    #[arg(long)]
    smoke: bool,
    /// The auth client/user registry for the idle-RSS run.
    #[arg(long, default_value = "config/auth.example.toml")]
    auth_config: PathBuf,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which parts to run (comma-separated; all by default).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "layers,place-order,sweep,sweep-postgres,issuer,memory"
    )]
    steps: Vec<Step>,
}

/// A part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Step {
    /// Every configuration, closed loop and fixed rate.
    Layers,
    /// The PlaceOrder path, per hop.
    PlaceOrder,
    /// PlaceOrder at rising rates on SQLite.
    Sweep,
    /// The same on PostgreSQL (Debian's binaries; as root, run as the `postgres` user).
    SweepPostgres,
    /// Grants, token exchanges and certificate signings per second.
    Issuer,
    /// Idle RSS per service and per connection.
    Memory,
}

fn main() {
    let cli: Cli = mesh_service::parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: tokio runtime: {e}");
            std::process::exit(1)
        });
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Serve {
                config,
                dir,
                listen,
                otlp,
            } => serve(config, dir, listen, otlp).await,
        }
    });
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn serve(
    config: Config,
    dir: PathBuf,
    listen: SocketAddr,
    otlp: Option<String>,
) -> anyhow::Result<()> {
    let material = Material::open(&dir);
    // From configuration 5 on, the server logs as a mesh service does: the same subscriber, the
    // same default filter (`RUST_LOG`, default `info`), to stderr.
    if matches!(config, Config::Otel | Config::Full | Config::Client) {
        mesh_telemetry::init();
    }
    // Stop when the parent closes our stdin (or dies), or on a signal.
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
        })
        .await;
    };
    let shutdown = async move {
        tokio::select! {
            () = stdin_closed => {}
            () = mesh_service::shutdown_signal() => {}
        }
    };
    server::serve(
        config,
        &material,
        listen,
        otlp,
        |addr| println!("READY {addr}"),
        shutdown,
    )
    .await
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let seconds = |s: f64| Duration::from_secs_f64(s);
    let (duration, warmup, place_duration, idle_connections) = if args.smoke {
        (seconds(0.5), seconds(0.2), seconds(1.0), 20)
    } else {
        (
            seconds(args.duration),
            seconds(args.warmup),
            seconds(args.duration),
            usize::from(args.idle_connections),
        )
    };
    let dir = tempfile::tempdir()?;
    let material = Material::create(dir.path())?;
    let closed = Shape {
        connections: args.connections,
        streams: args.streams,
        warmup,
        duration,
        rate: None,
    };
    let open = Shape {
        connections: args.connections,
        streams: args.streams,
        warmup,
        duration,
        rate: Some(args.rate),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = Report {
        setup: format!(
            "{cores} cores; load generator and server on one machine over loopback; {} connections, \
             {} streams in the closed loop, {:.0}/s in the fixed-rate runs; {:.1} s measured after \
             {:.1} s warm-up per run; {} build",
            args.connections,
            args.streams,
            args.rate,
            duration.as_secs_f64(),
            warmup.as_secs_f64(),
            if cfg!(debug_assertions) {
                "DEBUG (figures meaningless)"
            } else {
                "release"
            }
        ),
        rate: args.rate,
        place_rate: args.place_rate,
        ..Report::default()
    };

    if args.steps.contains(&Step::Layers) {
        eprintln!("layers (each configuration in its own server process):");
        let (rows, spans) = micro::run(&material, &Config::ALL, closed, open).await?;
        report.rows = rows;
        report.spans = spans;
    }
    if args.steps.contains(&Step::PlaceOrder) {
        eprintln!("PlaceOrder at {:.0}/s ...", args.place_rate);
        report.hops = place_order::run(args.place_rate, place_duration, warmup).await?;
    }
    let sweep_rates = if args.smoke {
        vec![20.0, 40.0]
    } else {
        args.place_sweep.clone()
    };
    for (step, backend, name) in [
        (Step::Sweep, place_order::Backend::Sqlite, "SQLite"),
        (
            Step::SweepPostgres,
            place_order::Backend::Postgres,
            "PostgreSQL",
        ),
    ] {
        if args.steps.contains(&step) {
            eprintln!("PlaceOrder sweep on {name}: {sweep_rates:?}/s ...");
            let points = place_order::sweep(&sweep_rates, backend, duration, warmup).await?;
            report.sweeps.push((name.to_owned(), points));
        }
    }
    if args.steps.contains(&Step::Issuer) {
        eprintln!("issuer rates ...");
        report.issuer = issuer::run(duration, warmup).await?;
    }
    if args.steps.contains(&Step::Memory) {
        eprintln!("memory ...");
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("no directory for the service binaries"))?;
        report.idle = memory::idle_services(&bin_dir, &args.auth_config).await?;
        for config in [Config::Plain, Config::Mtls, Config::Full] {
            let (before, after, per) =
                memory::per_connection(config, &material, idle_connections).await?;
            report
                .per_connection
                .push((config, idle_connections, before, after, per));
        }
    }

    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown)?;
    }
    Ok(())
}
