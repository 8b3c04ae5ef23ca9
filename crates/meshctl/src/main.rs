//! The meshctl binary: parse, run, map the outcome to an exit code.

#[tokio::main]
async fn main() {
    let cli: meshctl::cli::Cli = mesh_service::parse_args();
    if std::env::var_os("RUST_LOG").is_some() {
        mesh_telemetry::init();
    }
    if let Err(error) = meshctl::run(cli).await {
        eprintln!("error: {error}");
        std::process::exit(error.exit_code());
    }
}
