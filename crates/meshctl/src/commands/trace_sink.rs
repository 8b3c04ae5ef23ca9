//! `meshctl trace-sink`: an OTLP/gRPC collector for the terminal.

use crate::{CliError, failed};

/// `meshctl trace-sink`: receive traces until Ctrl-C, drawing each once it has been quiet for a
/// second (its spans have all arrived).
pub async fn run(listen: std::net::SocketAddr) -> Result<(), CliError> {
    use std::collections::{HashMap, HashSet};
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Usage(format!("--listen {listen}: {e}")))?;
    let sink = mesh_dev::sink::TraceSink::new();
    println!("receiving OTLP/gRPC traces on {listen}; Ctrl-C to stop");
    let server = tokio::spawn(
        sink.clone()
            .serve(listener, mesh_service::shutdown_signal()),
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut drawn: HashSet<String> = HashSet::new();
    while !server.is_finished() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for span in sink.spans() {
            *counts.entry(span.trace_id).or_default() += 1;
        }
        for (trace_id, count) in &counts {
            if seen.get(trace_id) == Some(count) && drawn.insert(trace_id.clone()) {
                let services = sink.services(trace_id);
                println!("{}", sink.waterfall(trace_id));
                println!(
                    "trace {trace_id}: {count} spans across {} services: {}\n",
                    services.len(),
                    services.join(", ")
                );
                sink.forget(trace_id);
            }
        }
        seen = counts;
    }
    server
        .await
        .map_err(failed)?
        .map_err(|e| failed(format!("trace sink: {e}")))
}
