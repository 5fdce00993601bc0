//! Serves the mock Logz.io API on loopback until interrupted, for trying
//! tokenctl by hand: `cargo run --example mock_server -- [--delay-ms N]`,
//! then, in another shell, the printed `export` lines and `tokenctl apply`.

#[path = "../tests/support/mock_logzio.rs"]
mod mock_logzio;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let delay = args
        .iter()
        .position(|a| a == "--delay-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let mock = mock_logzio::MockLogzio::start_with(mock_logzio::Behaviour {
        delay,
        ..Default::default()
    })
    .await;
    println!("export LOGZIO_API_URL={}", mock.url());
    println!("export LOGZIO_API_TOKEN={}", mock_logzio::OWNER_TOKEN);
    println!(
        "# sub-accounts: {:?}; Ctrl-C to stop",
        mock_logzio::SUB_ACCOUNTS
    );
    let _ = tokio::signal::ctrl_c().await;
    let requests = mock.create_requests().await;
    println!("{} creates received", requests.len());
}
