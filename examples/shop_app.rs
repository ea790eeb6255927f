//! Runs one of the e-commerce shop's demo apps on its own, outside `palisade up`: handy for
//! benchmarks and for running the mesh as separate processes.
//!
//! `cargo run --release --example shop_app -- search --listen 127.0.0.1:18080`

use std::net::SocketAddr;

use clap::Parser;
use palisade_example_shop::FrontendConfig;
use tokio_util::sync::CancellationToken;

/// Runs a shop demo app.
#[derive(Debug, Parser)]
struct Args {
    /// frontend, search or payments.
    app: String,
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The frontend's sidecar outbound listener.
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    eprintln!("{} listening on {}", args.app, args.listen);
    palisade_example_shop::serve_app(
        &args.app,
        listener,
        FrontendConfig::new(args.outbound),
        shutdown,
    )
    .await?;
    Ok(())
}
