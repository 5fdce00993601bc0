//! Serves the mock Logz.io API on loopback until interrupted, for trying
//! tokenctl by hand: `cargo run --example mock_server -- [--delay-ms N]
//! [--shed-concurrency L] [--shed-rate R] [--heavy-tail]`, then, in another
//! shell, the printed `export` lines and `tokenctl apply`. `--shed-rate`
//! allows R creates a second with a burst of R/10; `--heavy-tail` answers
//! one create in a hundred after 1 s.

#[path = "../tests/support/mock_logzio.rs"]
mod mock_logzio;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = value("--delay-ms").map_or(Duration::ZERO, Duration::from_millis);
    let mock = mock_logzio::MockLogzio::start_with(mock_logzio::Behaviour {
        delay,
        shed_concurrency: value("--shed-concurrency").map(|l| l as usize),
        shed_rate: value("--shed-rate").map(|r| mock_logzio::RateLimit {
            per_second: r as f64,
            burst: (r as f64 / 10.0).max(1.0),
        }),
        tail: args
            .iter()
            .any(|a| a == "--heavy-tail")
            .then_some(mock_logzio::Tail {
                every: 100,
                delay: Duration::from_secs(1),
            }),
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
    println!(
        "{} creates received, {} shed with 429",
        requests.len(),
        mock.throttled()
    );
}
