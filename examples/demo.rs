//! Runs tokenctl end to end against a local mock of the Logz.io API:
//! validate → plan → apply → plan, then shows the state and the secrets file.
//!
//! `cargo run --example demo`

#[path = "../tests/support/mock_logzio.rs"]
mod mock_logzio;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use tokenctl::cli::{self, Env, Io, Terminal};

fn main() -> io::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mock = runtime.block_on(mock_logzio::MockLogzio::start());
    let dir = tempfile::Builder::new()
        .prefix("tokenctl-demo-")
        .tempdir()?
        .keep();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tokens.yaml"),
        dir.join("tokens.yaml"),
    )?;
    let env = Env {
        api_token: Some(mock_logzio::OWNER_TOKEN.into()),
        api_url: Some(mock.url()),
        no_color: tokenctl::vars::Vars::from_process()
            .get("NO_COLOR")
            .is_some(),
        home: Some(dir.join("home").display().to_string()),
        ..Env::default()
    };
    println!(
        "Mock Logz.io API at {}; working in {}\n",
        mock.url(),
        dir.display()
    );

    let manifest = dir.join("tokens.yaml");
    let state = dir.join("state/tokens.state.json");
    let tokenctl = |args: &[&str]| -> i32 {
        println!("$ tokenctl {}", args.join(" "));
        let mut argv: Vec<OsString> = vec!["tokenctl".into(), "-f".into(), manifest.clone().into()];
        argv.extend(["--state".into(), state.clone().into()]);
        argv.extend(args.iter().map(OsString::from));
        let (mut stdout, mut stderr) = (io::stdout(), io::stderr());
        let mut no_input = || Ok(String::new());
        let mut io = Io {
            stdout: &mut stdout,
            stderr: &mut stderr,
            terminal: Terminal::default(),
            read_line: &mut no_input,
        };
        let code = i32::from(cli::run(argv, &env, &mut io).code());
        println!("(exit code {code})\n");
        code
    };

    let steps: [(&[&str], i32); 4] = [
        (&["validate"], 0),
        (&["plan", "--detailed-exitcode"], 2),
        (&["apply", "--auto-approve"], 0),
        (&["plan", "--detailed-exitcode"], 0),
    ];
    for (args, expected) in steps {
        if tokenctl(args) != expected {
            eprintln!("demo: `tokenctl {}` should exit {expected}", args.join(" "));
            std::process::exit(1);
        }
    }

    let requests = runtime.block_on(mock.create_requests());
    println!(
        "The mock API received {} create requests: {}",
        requests.len(),
        requests.join(", ")
    );
    println!("\n{}:", state.display());
    io::stdout().write_all(&fs::read(&state)?)?;

    let secrets = dir.join("secrets/logzio-tokens.jsonl");
    println!(
        "\n{} (mode {}), token values masked here:",
        secrets.display(),
        mode(&secrets)
    );
    for line in fs::read_to_string(&secrets)?.lines() {
        let mut record: serde_json::Value = serde_json::from_str(line)?;
        let length = record["token"].as_str().map_or(0, str::len);
        record["token"] = format!("<{length} characters>").into();
        println!("{record}");
    }
    Ok(())
}

#[cfg(unix)]
fn mode(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
        .unwrap_or_default()
}

#[cfg(not(unix))]
fn mode(_path: &Path) -> String {
    String::new()
}
