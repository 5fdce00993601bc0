//! Benchmarks of the whole `tokenctl` process, and of Terraform doing the
//! same amount of work where `terraform` is installed.
//!
//! `cargo run --release --example bench` (see BENCHMARKS.md). Options:
//! `--runs N` (default 5), `--sizes 1000,10000,100000`, `--apply-n 2000`,
//! `--delay-ms 20`, `--skip-apply`, `--skip-terraform`, `--terraform-max 10000`,
//! `--skip-postgres`, `--only-postgres` (the PostgreSQL backend alone).
//! `--only plan,apply,adaptive,postgres,sops` (sections to run; `sops` runs
//! only when named), `--adaptive-runs N` (default 1), `--baseline PATH`
//! (another tokenctl binary, e.g. built from an earlier commit, run at fixed
//! parallelism beside the adaptive one, and alternately with this one in the
//! `sops` section), `--sops-homes N` (default 200) and `--sops-commits N`
//! (default 2000): `plan --refresh` reading SOPS homes in a git work tree.
//!
//! Every measurement runs the release binary as a child process and reads its
//! wall time and peak resident memory (`wait4`); the table shows the median
//! of the runs. Network traffic stays on loopback: the API is a local mock.

#[path = "../tests/support/mock_logzio.rs"]
mod mock_logzio;
#[path = "../tests/support/pg.rs"]
mod pg;
// pg.rs asks it whether this is CI.
#[path = "../tests/support/host.rs"]
#[allow(dead_code)]
mod host;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenctl::backend::JournalWriter;
use tokenctl::model::address::Address;
use tokenctl::model::journal::Record;
use tokenctl::model::state::TokenRecord;
use tokenctl::secret::Secret;
use tokenctl::sink::sops::{SopsFormat, SopsSink};
use tokenctl::sink::{FileSink, NewToken, SecretSink};
use tokenctl::vars::Vars;

const ACCOUNTS: u64 = 1_000;
const FIRST_ACCOUNT: u64 = 10_001;

struct Options {
    runs: usize,
    sizes: Vec<usize>,
    apply_n: usize,
    delay: Duration,
    apply: bool,
    terraform: bool,
    /// Largest size Terraform is run at (it takes minutes at 10k).
    terraform_max: usize,
    /// Whether to run the PostgreSQL backend's benchmarks; `Some(true)`:
    /// only those.
    postgres: Option<bool>,
    /// Sections to run: `plan`, `apply`, `adaptive`.
    only: Vec<String>,
    /// Runs per case of the adaptive section (each takes up to minutes).
    adaptive_runs: usize,
    /// A tokenctl binary to compare the adaptive section with.
    baseline: Option<PathBuf>,
    /// Addresses, and commits that touch other files, of the `sops` section.
    sops_homes: usize,
    sops_commits: usize,
}

impl Options {
    fn runs_section(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == name)
    }
}

fn options() -> Options {
    let mut options = Options {
        runs: 5,
        sizes: vec![1_000, 10_000, 100_000],
        apply_n: 2_000,
        delay: Duration::from_millis(20),
        apply: true,
        terraform: true,
        terraform_max: 10_000,
        postgres: Some(false),
        only: Vec::new(),
        adaptive_runs: 1,
        baseline: None,
        sops_homes: 200,
        sops_commits: 2_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--runs" => options.runs = value.parse().expect("--runs N"),
            "--sizes" => {
                options.sizes = value
                    .split(',')
                    .map(|s| s.parse().expect("--sizes 1000,10000"))
                    .collect()
            }
            "--apply-n" => options.apply_n = value.parse().expect("--apply-n N"),
            "--delay-ms" => {
                options.delay = Duration::from_millis(value.parse().expect("--delay-ms N"))
            }
            "--terraform-max" => options.terraform_max = value.parse().expect("--terraform-max N"),
            "--only" => options.only = value.split(',').map(str::to_string).collect(),
            "--adaptive-runs" => options.adaptive_runs = value.parse().expect("--adaptive-runs N"),
            "--baseline" => options.baseline = Some(PathBuf::from(value)),
            "--sops-homes" => options.sops_homes = value.parse().expect("--sops-homes N"),
            "--sops-commits" => options.sops_commits = value.parse().expect("--sops-commits N"),
            "--skip-apply" => {
                options.apply = false;
                i -= 1;
            }
            "--skip-terraform" => {
                options.terraform = false;
                i -= 1;
            }
            "--skip-postgres" => {
                options.postgres = None;
                i -= 1;
            }
            "--only-postgres" => {
                options.postgres = Some(true);
                i -= 1;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    options
}

/// Wall time and peak resident memory of one child process.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    peak_kib: u64,
    success: bool,
}

/// Runs a command to completion and measures it.
// The child is reaped by wait4, which std's Child does not know about.
#[allow(clippy::zombie_processes)]
fn measure(command: &mut Command) -> Sample {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = command.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once; `child` is never waited on again.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert!(pid > 0, "wait4 failed");
    Sample {
        wall,
        peak_kib: usage.ru_maxrss as u64,
        success: libc::WIFEXITED(status) && matches!(libc::WEXITSTATUS(status), 0 | 2),
    }
}

/// Measures `runs` times and returns the median wall time and peak memory.
fn median(runs: usize, mut make: impl FnMut() -> Command) -> Sample {
    let mut samples: Vec<Sample> = (0..runs).map(|_| measure(&mut make())).collect();
    assert!(
        samples.iter().all(|s| s.success),
        "a benchmarked command failed"
    );
    samples.sort_by_key(|s| s.wall);
    let mut peaks: Vec<u64> = samples.iter().map(|s| s.peak_kib).collect();
    peaks.sort_unstable();
    Sample {
        wall: samples[samples.len() / 2].wall,
        peak_kib: peaks[peaks.len() / 2],
        success: true,
    }
}

fn addresses(n: usize) -> Vec<Address> {
    (0..n)
        .map(|i| {
            Address::new(
                FIRST_ACCOUNT + (i as u64 % ACCOUNTS),
                format!("service-token-{i:06}"),
            )
        })
        .collect()
}

fn write_manifest(path: &Path, tokens: &[Address]) {
    let mut text =
        String::from("version: 1\nregion: eu\nsecrets:\n  file: secrets/tokens.jsonl\ntokens:\n");
    for address in tokens {
        let _ = writeln!(
            text,
            "  - name: {}\n    accountId: {}",
            address.name, address.account_id
        );
    }
    fs::write(path, text).expect("write manifest");
}

fn write_state(path: &Path, tokens: &[Address]) {
    let mut state = tokenctl::lineage::fresh_state();
    state.serial = 1;
    for (i, address) in tokens.iter().enumerate() {
        state.tokens.push(TokenRecord::created(
            address.clone(),
            100_000 + i as u64,
            1_700_000_000 + i as i64,
            tokenctl::secret::fingerprint_of(&address.to_string()),
        ));
    }
    fs::create_dir_all(path.parent().expect("state folder")).expect("mkdir");
    fs::write(path, state.to_json()).expect("write state");
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn binary() -> PathBuf {
    let host = Vars::from_process();
    let cargo = host.get("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "tokenctl"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the release binary failed");
    let target = host
        .get("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/tokenctl")
}

/// Returns the PATH the benchmark runs with, for the commands it starts.
fn host_path() -> String {
    Vars::from_process()
        .get("PATH")
        .unwrap_or_default()
        .to_string()
}

fn tokenctl(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", host_path())
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1");
    command
}

/// Returns `tokenctl apply` of everything at `parallelism` against the
/// mock at `api_url`, in `dir`.
fn apply_command(bin: &Path, dir: &Path, parallelism: usize, api_url: &str) -> Command {
    let p = parallelism.to_string();
    let args = [
        "apply",
        "--auto-approve",
        "--parallelism",
        &p,
        "--max-creates",
        "100000",
    ];
    let mut command = tokenctl(bin, dir, &args);
    command
        .env("LOGZIO_API_TOKEN", mock_logzio::OWNER_TOKEN)
        .env("LOGZIO_API_URL", api_url);
    command
}

fn terraform_available() -> bool {
    Command::new("terraform")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn terraform(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("terraform");
    command
        .args(args)
        .current_dir(dir)
        .env_remove("TF_CLI_CONFIG_FILE")
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1");
    command
}

/// Terraform's side of the comparison: a folder with `n` `terraform_data`
/// resources, applied once.
struct TerraformWork {
    dir: tempfile::TempDir,
    apply: Sample,
}

impl TerraformWork {
    /// Initializes and applies `n` resources; `None` if Terraform fails.
    fn new(n: usize, parallelism: usize) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        fs::write(
            dir.path().join("main.tf"),
            "variable \"n\" {\n  type = number\n}\n\nresource \"terraform_data\" \"token\" {\n  count = var.n\n  input = \"service-token-${count.index}\"\n}\n",
        )
        .ok()?;
        if !measure(&mut terraform(dir.path(), &["init", "-input=false"])).success {
            return None;
        }
        let n_var = format!("-var=n={n}");
        let parallelism = format!("-parallelism={parallelism}");
        let apply = measure(&mut terraform(
            dir.path(),
            &[
                "apply",
                "-auto-approve",
                "-input=false",
                &parallelism,
                &n_var,
            ],
        ));
        apply.success.then_some(TerraformWork { dir, apply })
    }

    /// Times a command in the applied folder (median of `runs`).
    fn time(&self, runs: usize, args: &[&str]) -> Sample {
        median(runs, || terraform(self.dir.path(), args))
    }
}

fn plan_benchmarks(bin: &Path, options: &Options, report: &mut String) {
    let tf = options.terraform && terraform_available();
    let _ = writeln!(
        report,
        "\n### Whole-process plan commands (median of {} runs)\n",
        options.runs
    );
    let _ = writeln!(
        report,
        "Terraform runs the same-sized work: `validate`; `plan` of `terraform_data` resources with nothing to change; \
         `plan` with 1% more; `plan -json` with 1% more. Ratio = Terraform's time / ours.\n"
    );
    let _ = writeln!(
        report,
        "| tokens | command | wall ms | peak RSS MiB | Terraform wall ms | ratio |"
    );
    let _ = writeln!(report, "|---:|---|---:|---:|---:|---:|");
    let mut noop_walls = Vec::new();
    for &n in &options.sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = addresses(n + n / 100);
        write_state(&dir.path().join("state/tokens.state.json"), &all[..n]);
        write_manifest(&dir.path().join("same.yaml"), &all[..n]);
        write_manifest(&dir.path().join("grown.yaml"), &all);
        let tf_work = (tf && n <= options.terraform_max)
            .then(|| TerraformWork::new(n, 16))
            .flatten();
        // Terraform takes seconds to minutes per run at these sizes: one run
        // above 1,000 resources.
        let tf_runs = if n > 1_000 { 1 } else { options.runs };
        let (n_var, grown_var) = (format!("-var=n={n}"), format!("-var=n={}", n + n / 100));
        let tf_cases: [&[&str]; 4] = [
            &["validate"],
            &["plan", "-input=false", "-detailed-exitcode", &n_var],
            &["plan", "-input=false", "-detailed-exitcode", &grown_var],
            &[
                "plan",
                "-input=false",
                "-detailed-exitcode",
                "-json",
                &grown_var,
            ],
        ];
        let cases: [(&str, &[&str]); 4] = [
            ("validate", &["-f", "same.yaml", "validate"]),
            ("plan (no changes)", &["-f", "same.yaml", "plan"]),
            (
                "plan (1% new)",
                &["-f", "grown.yaml", "plan", "--max-creates", "100000"],
            ),
            (
                "plan --output json (1% new)",
                &[
                    "-f",
                    "grown.yaml",
                    "plan",
                    "--output",
                    "json",
                    "--max-creates",
                    "100000",
                ],
            ),
        ];
        for ((name, args), tf_args) in cases.into_iter().zip(tf_cases) {
            let sample = median(options.runs, || tokenctl(bin, dir.path(), args));
            if name == "plan (no changes)" {
                noop_walls.push((n, sample.wall));
            }
            let (tf_wall, ratio) = match &tf_work {
                Some(work) => {
                    let theirs = work.time(tf_runs, tf_args);
                    (
                        ms(theirs.wall),
                        format!(
                            "{:.0}×",
                            theirs.wall.as_secs_f64() / sample.wall.as_secs_f64()
                        ),
                    )
                }
                None => ("".into(), "".into()),
            };
            let _ = writeln!(
                report,
                "| {n} | `{name}` | {} | {} | {tf_wall} | {ratio} |",
                ms(sample.wall),
                mib(sample.peak_kib)
            );
            eprintln!("{n} {name}: {} ms", ms(sample.wall));
        }
        if let Some(work) = &tf_work {
            let _ = writeln!(
                report,
                "| {n} | (Terraform `apply` of {n} `terraform_data`, 1 run) | | | {} | |",
                ms(work.apply.wall)
            );
        }
    }
    if let (Some((n1, w1)), Some((n2, w2))) = (
        noop_walls.iter().find(|(n, _)| *n == 10_000),
        noop_walls.iter().find(|(n, _)| *n == 100_000),
    ) {
        let _ = writeln!(
            report,
            "\nNo-op plan growth {n1} → {n2} tokens: {:.1}× the time for {}× the tokens.",
            w2.as_secs_f64() / w1.as_secs_f64(),
            n2 / n1
        );
    }
    if !tf {
        let _ = writeln!(
            report,
            "\nTerraform was not measured (`terraform` not found or --skip-terraform)."
        );
    }
}

fn apply_benchmarks(bin: &Path, options: &Options, report: &mut String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let n = options.apply_n;
    let accounts: Vec<u64> = (0..100).map(|i| FIRST_ACCOUNT + i).collect();
    let tokens: Vec<Address> = (0..n)
        .map(|i| Address::new(accounts[i % accounts.len()], format!("new-token-{i:05}")))
        .collect();
    let _ = writeln!(
        report,
        "\n### Apply of {n} creates against a mock API (median of {} runs)\n",
        options.runs
    );
    let _ = writeln!(
        report,
        "Latency bound = N × delay / parallelism. The mock's real answer time is longer than its nominal delay \
         (timer granularity, HTTP): a bare HTTP client doing the same creates one at a time measures it, and the \
         measured bound uses it. Wall is the whole tokenctl process, pre-flight, journal, sinks and state fold included.\n"
    );
    let _ = writeln!(
        report,
        "| server delay | parallelism | wall s | latency bound s | bound / wall | measured bound s | measured bound / wall | creates/s | bare client s |"
    );
    let _ = writeln!(report, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut measured_delay = None;
    let mut zero_delay_wall = None;
    let mut cases: Vec<(Duration, usize)> =
        [1, 4, 16].iter().map(|&p| (options.delay, p)).collect();
    cases.push((Duration::ZERO, 16));
    for (delay, parallelism) in cases {
        let mock = runtime.block_on(mock_logzio::MockLogzio::start_with(
            mock_logzio::Behaviour {
                delay,
                sub_accounts: Some(accounts.clone()),
                ..Default::default()
            },
        ));
        let mut walls = Vec::new();
        for _ in 0..options.runs {
            let dir = tempfile::tempdir().expect("tempdir");
            write_manifest(&dir.path().join("tokens.yaml"), &tokens);
            let mut command = apply_command(bin, dir.path(), parallelism, &mock.url());
            let sample = measure(&mut command);
            assert!(sample.success, "apply failed");
            walls.push(sample.wall);
        }
        walls.sort();
        let wall = walls[walls.len() / 2];
        let bare = runtime.block_on(bare_client(&mock.url(), n, parallelism));
        if parallelism == 1 && delay > Duration::ZERO {
            measured_delay = Some(bare.as_secs_f64() / n as f64);
        }
        if delay.is_zero() {
            zero_delay_wall = Some(wall);
        }
        let bound = delay.as_secs_f64() * n as f64 / parallelism as f64;
        let measured = measured_delay
            .filter(|_| delay > Duration::ZERO)
            .map(|d| d * n as f64 / parallelism as f64);
        let percent = |b: f64| format!("{:.1}%", 100.0 * b / wall.as_secs_f64());
        let _ = writeln!(
            report,
            "| {} ms | {parallelism} | {:.2} | {:.2} | {} | {} | {} | {:.0} | {:.2} |",
            delay.as_millis(),
            wall.as_secs_f64(),
            bound,
            if bound > 0.0 {
                percent(bound)
            } else {
                "".into()
            },
            measured.map_or("".into(), |m| format!("{m:.2}")),
            measured.map_or("".into(), percent),
            n as f64 / wall.as_secs_f64(),
            bare.as_secs_f64(),
        );
        eprintln!(
            "apply delay {delay:?} p{parallelism}: {:.2} s",
            wall.as_secs_f64()
        );
    }
    if let Some(delay) = measured_delay {
        let _ = writeln!(
            report,
            "\nMeasured answer time of the mock at {} ms nominal delay: {:.2} ms.",
            options.delay.as_millis(),
            delay * 1000.0
        );
    }
    if let Some(ours) = zero_delay_wall
        && options.terraform
        && terraform_available()
        && let Some(work) = TerraformWork::new(n, 16)
    {
        let _ = writeln!(
            report,
            "\nTerraform `apply -parallelism=16` of {n} `terraform_data` resources (no network at all): {:.2} s; \
             tokenctl's apply of {n} creates against the zero-delay mock: {:.2} s ({:.0}× faster).",
            work.apply.wall.as_secs_f64(),
            ours.as_secs_f64(),
            work.apply.wall.as_secs_f64() / ours.as_secs_f64()
        );
    }
    durability_costs(n, report, &runtime);
}

/// Times a bare HTTP client sending `n` creates, `parallelism` at a time,
/// with no journal, sinks or state: what the mock server itself allows.
async fn bare_client(base: &str, n: usize, parallelism: usize) -> Duration {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/api-tokens/sub-account");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..parallelism {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let body =
                    serde_json::json!({"name": format!("bare-{i}"), "accountId": FIRST_ACCOUNT});
                let response = client
                    .post(&url)
                    .header("X-API-TOKEN", mock_logzio::OWNER_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("bare create");
                let _ = response.bytes().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("bare task");
    }
    start.elapsed()
}

/// Measures in-process what durability costs per create: the journal's two
/// fsynced records (group commit, 16 creates at a time) and the sink's
/// fsynced append.
fn durability_costs(n: usize, report: &mut String, runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Arc::new(
        JournalWriter::create(
            &dir.path().join("journal"),
            &Record::Begin {
                lineage: "bench".into(),
                serial: 0,
                started: 0,
                pid: 0,
                host: None,
            },
        )
        .expect("journal"),
    );
    let start = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                for i in (worker..n).step_by(16) {
                    let address = Address::new(1, format!("t{i}"));
                    journal
                        .append(&Record::Intent {
                            address: address.clone(),
                            at: 0,
                        })
                        .await
                        .expect("append");
                    journal
                        .append(&Record::Created {
                            address,
                            id: i as u64,
                            created_at: 0,
                            fingerprint: "sha256:0".into(),
                        })
                        .await
                        .expect("append");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
    });
    let journal_cost = start.elapsed();

    let vars = Vars::from_pairs([("PATH", host_path())]);
    let mut sink = FileSink::open(&dir.path().join("tokens.jsonl"), &vars).expect("sink");
    let secret = Secret::new("x".repeat(36));
    let start = Instant::now();
    for i in 0..n {
        let address = Address::new(1, format!("t{i}"));
        sink.deliver(&NewToken {
            address: &address,
            id: i as u64,
            created_at: 0,
            token: &secret,
        })
        .expect("deliver");
    }
    let sink_cost = start.elapsed();

    // A new SOPS file per token: data key wrapped for two age recipients,
    // AES-GCM, MAC, then a temp file fsynced and linked into place.
    let recipients: Vec<_> = (0..2)
        .map(|_| age::x25519::Identity::generate().to_public())
        .collect();
    let mut sops_sink = SopsSink::new(
        dir.path().join("sops"),
        recipients,
        SopsFormat::Plain,
        Vec::new(),
    );
    let start = Instant::now();
    for i in 0..n {
        let address = Address::new(1, format!("t{i}"));
        sops_sink
            .deliver(&NewToken {
                address: &address,
                id: i as u64,
                created_at: 0,
                token: &secret,
            })
            .expect("deliver");
    }
    let sops_cost = start.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    let _ = writeln!(
        report,
        "\nDurability per create, measured in-process over {n} creates: journal (intent + created, 16 creates in flight, group commit) {:.3} ms; file sink append + fsync {:.3} ms; sops sink (two age recipients, new file + fsyncs) {:.3} ms.",
        per(journal_cost),
        per(sink_cost),
        per(sops_cost)
    );
}

/// How the mock refuses load in one adaptive-concurrency case.
struct Server {
    name: String,
    behaviour: mock_logzio::Behaviour,
    /// The best wall time any client can reach, in seconds.
    bound: f64,
    /// Whether the 429 target (at most 5% of creates) applies.
    throttle_target: bool,
    /// Whether the 1.25× time target applies (not for the heavy tail).
    time_target: bool,
}

/// One measured client against one server.
struct Outcome {
    wall: Duration,
    throttled: u64,
    /// False when the process failed or was stopped at the deadline.
    success: bool,
    /// Tokens the server created.
    created: usize,
    /// How the process ended: its exit code, or the signal that stopped it.
    ended: String,
}

/// Runs `command` to completion, killing it after `deadline`.
#[allow(clippy::zombie_processes)]
fn measure_until(command: &mut Command, deadline: Duration) -> (Sample, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = command.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            while start.elapsed() < deadline {
                if finished.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !finished.load(std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: our own child, not yet reaped (the waiter below
                // sets `finished` first thing after reaping it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    let wall = start.elapsed();
    let _ = watchdog.join();
    assert!(reaped > 0, "wait4 failed");
    let ended = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        "stopped at the deadline".to_string()
    };
    (
        Sample {
            wall,
            peak_kib: usage.ru_maxrss as u64,
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        },
        ended,
    )
}

/// Benchmarks the adaptive concurrency against servers that shed load by
/// concurrency or by rate, or have a heavy tail, beside fixed parallelism.
fn adaptive_benchmarks(bin: &Path, options: &Options, report: &mut String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let n = options.apply_n;
    let d = Duration::from_millis(50);
    let ceiling = 16.0;
    let accounts: Vec<u64> = (0..100).map(|i| FIRST_ACCOUNT + i).collect();
    let tokens: Vec<Address> = (0..n)
        .map(|i| Address::new(accounts[i % accounts.len()], format!("new-token-{i:05}")))
        .collect();
    let base = mock_logzio::Behaviour {
        delay: d,
        sub_accounts: Some(accounts.clone()),
        ..Default::default()
    };
    let nd = n as f64 * d.as_secs_f64();
    let mut servers = Vec::new();
    for limit in [2usize, 4, 8, 16] {
        servers.push(Server {
            name: format!("sheds beyond {limit} in flight"),
            behaviour: mock_logzio::Behaviour {
                shed_concurrency: Some(limit),
                ..base.clone()
            },
            bound: nd / limit as f64,
            throttle_target: true,
            time_target: true,
        });
    }
    for rate in [20.0, 100.0] {
        servers.push(Server {
            name: format!("allows {rate:.0} creates/s (burst {:.0})", rate / 10.0),
            behaviour: mock_logzio::Behaviour {
                shed_rate: Some(mock_logzio::RateLimit {
                    per_second: rate,
                    burst: rate / 10.0,
                }),
                ..base.clone()
            },
            bound: n as f64 / rate,
            throttle_target: false,
            time_target: true,
        });
    }
    servers.push(Server {
        name: "no limit".into(),
        behaviour: base.clone(),
        bound: nd / ceiling,
        throttle_target: false,
        time_target: true,
    });
    servers.push(Server {
        name: "no limit, 1 answer in 100 after 1 s".into(),
        behaviour: mock_logzio::Behaviour {
            tail: Some(mock_logzio::Tail {
                every: 100,
                delay: Duration::from_secs(1),
            }),
            ..base.clone()
        },
        bound: nd / ceiling,
        throttle_target: false,
        time_target: false,
    });

    let mut clients: Vec<(String, PathBuf, Option<&str>)> =
        vec![("tokenctl, default flags".into(), bin.to_path_buf(), None)];
    if let Some(baseline) = &options.baseline {
        for p in ["4", "16"] {
            clients.push((
                format!("before, `--parallelism {p}`"),
                baseline.clone(),
                Some(p),
            ));
        }
    }
    let _ = writeln!(
        report,
        "\n### Adaptive concurrency: {n} creates, answers after {} ms (median of {} run(s))\n",
        d.as_millis(),
        options.adaptive_runs
    );
    let _ = writeln!(
        report,
        "Bound: N × d / L when the server takes L creates in flight; N / R when it takes R a second; \
         N × d / 16 (the default ceiling) with no limit. Ratio = wall / bound (target ≤ 1.25). \
         429s = requests the server refused, as a share of creates (target ≤ 5% when shedding by concurrency). \
         A run that failed or passed 6× its bound (then stopped) is marked ✗.\n"
    );
    let mut header = String::from("| server | bound s |");
    let mut rule = String::from("|---|---:|");
    for (name, _, _) in &clients {
        let _ = write!(header, " {name}: wall s | ratio | 429s |");
        rule.push_str("---:|---:|---:|");
    }
    let _ = writeln!(report, "{header} targets met |");
    let _ = writeln!(report, "{rule}---|");
    let mut failures = Vec::new();
    for server in &servers {
        let mut row = format!("| {} | {:.2} |", server.name, server.bound);
        let mut met = None;
        for (client, binary, parallelism) in &clients {
            let outcome = adaptive_case(
                &runtime,
                binary,
                *parallelism,
                server,
                &tokens,
                options.adaptive_runs,
            );
            let ratio = outcome.wall.as_secs_f64() / server.bound;
            let share = 100.0 * outcome.throttled as f64 / n as f64;
            let mark = if outcome.success { "" } else { " ✗" };
            if !outcome.success {
                failures.push(format!(
                    "✗ {} / {client}: {}, {} of {n} tokens created.",
                    server.name, outcome.ended, outcome.created
                ));
            }
            let _ = write!(
                row,
                " {:.2}{mark} | {ratio:.2}× | {} ({share:.1}%) |",
                outcome.wall.as_secs_f64(),
                outcome.throttled
            );
            eprintln!(
                "{} / {client}: {:.2} s, {ratio:.2}×, {} throttled",
                server.name,
                outcome.wall.as_secs_f64(),
                outcome.throttled
            );
            if parallelism.is_none() {
                let time_ok = !server.time_target || ratio <= 1.25;
                let throttle_ok = !server.throttle_target || share <= 5.0;
                met = Some(if !server.time_target {
                    "reported".to_string()
                } else if outcome.success && time_ok && throttle_ok {
                    "yes".to_string()
                } else {
                    "no".to_string()
                });
            }
        }
        let _ = writeln!(report, "{row} {} |", met.unwrap_or_default());
    }
    for failure in failures {
        let _ = writeln!(report, "\n{failure}");
    }
}

/// Measures one client (a binary, with a fixed parallelism or the default)
/// against a fresh mock of `server`; returns the median run.
fn adaptive_case(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    parallelism: Option<&str>,
    server: &Server,
    tokens: &[Address],
    runs: usize,
) -> Outcome {
    let mut outcomes = Vec::new();
    for _ in 0..runs.max(1) {
        let mock = runtime.block_on(mock_logzio::MockLogzio::start_with(
            server.behaviour.clone(),
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        write_manifest(&dir.path().join("tokens.yaml"), tokens);
        let mut args = vec!["apply", "--auto-approve", "--max-creates", "100000"];
        if let Some(p) = parallelism {
            args.extend(["--parallelism", p]);
        }
        let mut command = tokenctl(binary, dir.path(), &args);
        command
            .env("LOGZIO_API_TOKEN", mock_logzio::OWNER_TOKEN)
            .env("LOGZIO_API_URL", mock.url());
        let deadline = Duration::from_secs_f64((server.bound * 6.0).max(30.0));
        let (sample, ended) = measure_until(&mut command, deadline);
        let created = mock.issued().len();
        outcomes.push(Outcome {
            wall: sample.wall,
            throttled: mock.throttled(),
            success: sample.success && created == tokens.len(),
            created,
            ended,
        });
    }
    outcomes.sort_by_key(|o| o.wall);
    outcomes.swap_remove(outcomes.len() / 2)
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1_048_576.0)
        });
    format!("{cores} cores ({cpu}), {memory} RAM")
}

fn main() {
    // Writes a large manifest and state in a child process, so that the
    // benchmark's own memory never peaks: a spawned child's peak RSS counts
    // its parent's peak up to the exec (vfork), which would inflate it.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--write-seed") {
        let dir = Path::new(&args[2]);
        let n: usize = args[3].parse().expect("--write-seed DIR N");
        let tokens = addresses(n);
        write_pg_manifest(&dir.join("tokens.yaml"), &tokens);
        write_state(&dir.join("seed.json"), &tokens);
        return;
    }
    let options = options();
    let bin = binary();
    let mut report = format!(
        "## Results\n\nMachine: {}. Command: `cargo run --release --example bench`.\n",
        machine()
    );
    // --only-postgres runs the PostgreSQL section alone.
    let others = options.postgres != Some(true);
    if others && options.runs_section("plan") {
        plan_benchmarks(&bin, &options, &mut report);
    }
    if others && options.apply && options.runs_section("apply") {
        apply_benchmarks(&bin, &options, &mut report);
    }
    if others && options.apply && options.runs_section("adaptive") {
        adaptive_benchmarks(&bin, &options, &mut report);
    }
    if options.postgres.is_some() && (!others || options.runs_section("postgres")) {
        postgres_benchmarks(&bin, &options, &mut report);
    }
    // Named only: it needs git and age-keygen, and takes a while to set up.
    if options.only.iter().any(|s| s == "sops") {
        sops_refresh_benchmarks(&bin, &options, &mut report);
    }
    println!("{report}");
}

/// Runs `program` with `args` in `dir`, and fails the benchmark if it fails.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `plan --refresh` of tokens whose secrets are in SOPS homes (one file per
/// address), in a git work tree whose history holds many commits that
/// touch other files: the read-back reads the folder and git's history.
/// With `--baseline`, the two binaries run alternately.
fn sops_refresh_benchmarks(bin: &Path, options: &Options, report: &mut String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (homes, commits) = (options.sops_homes, options.sops_commits);
    let mock = runtime.block_on(mock_logzio::MockLogzio::start_with(
        mock_logzio::Behaviour {
            sub_accounts: Some(vec![160343]),
            ..Default::default()
        },
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path();
    let git = |args: &[&str]| {
        let mut all = vec![
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ];
        all.extend_from_slice(args);
        run_in(work, "git", &all)
    };
    run_in(work, "age-keygen", &["-o", "key.txt"]);
    let key = fs::read_to_string(work.join("key.txt")).expect("key");
    let recipient = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen wrote no public key")
        .to_string();
    let mut manifest = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: secrets/tokens\n    age: [{recipient}]\ntokens:\n"
    );
    for i in 1..=homes {
        let _ = writeln!(manifest, "  - name: t{i}\n    accountId: 160343");
    }
    fs::write(work.join("tokens.yaml"), manifest).expect("manifest");
    fs::write(work.join(".gitignore"), "home/\nkey.txt\n").expect(".gitignore");
    git(&["init", "-q"]);
    let applied = measure(&mut apply_command(bin, work, 16, &mock.url()));
    assert!(applied.success, "the apply that writes the homes failed");
    git(&["add", "-A"]);
    git(&["commit", "-qm", "homes"]);
    // The other commits, through fast-import: a commit each, on the branch.
    let branch = git(&["symbolic-ref", "HEAD"]).trim().to_string();
    let head = git(&["rev-parse", "HEAD"]).trim().to_string();
    let mut stream = String::new();
    for n in 1..=commits {
        let content = format!("{n}\n");
        let _ = write!(
            stream,
            "commit {branch}\ncommitter bench <bench@example.invalid> {} +0000\ndata {}\nc{n}\n",
            1_700_000_000 + n,
            format!("c{n}").len()
        );
        if n == 1 {
            let _ = writeln!(stream, "from {head}");
        }
        let _ = write!(
            stream,
            "M 100644 inline other.txt\ndata {}\n{content}\n",
            content.len()
        );
    }
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(work)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    {
        use std::io::Write as _;
        let mut stdin = import.stdin.take().expect("stdin");
        stdin
            .write_all(stream.as_bytes())
            .expect("fast-import input");
    }
    assert!(import.wait().expect("fast-import").success());
    git(&["reset", "-q", "--hard"]);
    let refresh = |binary: &Path| {
        let mut command = tokenctl(binary, work, &["plan", "--refresh"]);
        command
            .env("LOGZIO_API_TOKEN", mock_logzio::OWNER_TOKEN)
            .env("LOGZIO_API_URL", mock.url())
            .env("SOPS_AGE_KEY_FILE", work.join("key.txt"));
        command
    };
    // Both read every secret back: a fast run that verified nothing would
    // prove nothing.
    let counts =
        format!("Refresh: {homes} alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable.");
    for binary in options.baseline.iter().map(PathBuf::as_path).chain([bin]) {
        let out = refresh(binary).output().expect("plan --refresh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&counts), "{}: {stdout}", binary.display());
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..options.runs {
        if let Some(baseline) = &options.baseline {
            let sample = measure(&mut refresh(baseline));
            assert!(sample.success, "the baseline's plan --refresh failed");
            theirs.push(sample.wall);
        }
        let sample = measure(&mut refresh(bin));
        assert!(sample.success, "plan --refresh failed");
        ours.push(sample.wall);
    }
    let list = |walls: &[Duration]| walls.iter().map(|w| ms(*w)).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        report,
        "\n### `plan --refresh` of {homes} SOPS homes, {} commits\n\nWall ms of each run, in the order run (alternately when a baseline is given):\n",
        commits + 1
    );
    if let Some(baseline) = &options.baseline {
        let _ = writeln!(
            report,
            "- baseline {}: {}",
            baseline.display(),
            list(&theirs)
        );
    }
    let _ = writeln!(report, "- this tree: {}", list(&ours));
}

/// Writes a manifest that keeps its state in PostgreSQL.
fn write_pg_manifest(path: &Path, tokens: &[Address]) {
    write_manifest(path, tokens);
    let text = fs::read_to_string(path).expect("manifest");
    let text = text.replacen(
        "secrets:",
        "backend:\n  postgres:\n    schema: tokenctl\n    state: bench\nsecrets:",
        1,
    );
    fs::write(path, text).expect("write manifest");
}

/// The PostgreSQL backend: an apply whose every intent and outcome is
/// committed (fsync on, synchronous_commit on), against the file backend
/// at the same settings; and a no-op plan of a large state read from the
/// database.
fn postgres_benchmarks(bin: &Path, options: &Options, report: &mut String) {
    let Some(cluster) = pg::Cluster::start_with(true) else {
        let _ = writeln!(
            report,
            "\n### PostgreSQL backend\n\nSkipped: no PostgreSQL server binaries."
        );
        return;
    };
    let version = cluster
        .psql("postgres", "SHOW server_version")
        .unwrap_or_default();
    let _ = writeln!(
        report,
        "\n### PostgreSQL backend (PostgreSQL {version} on the same machine, fsync on, synchronous_commit on)\n"
    );
    let size = options.sizes.iter().copied().max().unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = Command::new(std::env::current_exe().expect("bench binary"))
        .arg("--write-seed")
        .arg(dir.path())
        .arg(size.to_string())
        .status()
        .expect("seed");
    assert!(seeded.success(), "writing the seed failed");
    let db = cluster.create_db();
    let conn = cluster.conn_str(&db);
    let push = tokenctl(bin, dir.path(), &["state", "push", "seed.json"])
        .env("TOKENCTL_PG_CONN_STR", &conn)
        .output()
        .expect("push");
    assert!(
        push.status.success(),
        "state push failed: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let pg = median(options.runs, || {
        let mut command = tokenctl(bin, dir.path(), &["plan", "--detailed-exitcode"]);
        command.env("TOKENCTL_PG_CONN_STR", &conn);
        command
    });
    // The same plan on the file backend, for comparison on this machine.
    let file_manifest = fs::read_to_string(dir.path().join("tokens.yaml"))
        .expect("manifest")
        .replacen(
            "backend:\n  postgres:\n    schema: tokenctl\n    state: bench\n",
            "",
            1,
        );
    fs::write(dir.path().join("file.yaml"), file_manifest).expect("manifest");
    let file = median(options.runs, || {
        tokenctl(
            bin,
            dir.path(),
            &[
                "plan",
                "--detailed-exitcode",
                "-f",
                "file.yaml",
                "--state",
                "seed.json",
            ],
        )
    });
    let _ = writeln!(
        report,
        "No-op `plan` of {size} tokens, whole process (median of {} runs):\n\n\
         | backend | wall ms | peak RSS MiB |\n|---|---:|---:|\n\
         | file | {} | {} |\n\
         | postgres (one row, one snapshot) | {} | {} |\n",
        options.runs,
        ms(file.wall),
        mib(file.peak_kib),
        ms(pg.wall),
        mib(pg.peak_kib)
    );
    eprintln!("postgres bench: plan {size}: {} ms", ms(pg.wall));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let n = options.apply_n;
    let parallelism = 16;
    let accounts: Vec<u64> = (0..100).map(|i| FIRST_ACCOUNT + i).collect();
    let tokens: Vec<Address> = (0..n)
        .map(|i| Address::new(accounts[i % accounts.len()], format!("new-token-{i:05}")))
        .collect();
    let mock = runtime.block_on(mock_logzio::MockLogzio::start_with(
        mock_logzio::Behaviour {
            delay: options.delay,
            sub_accounts: Some(accounts.clone()),
            ..Default::default()
        },
    ));
    let _ = writeln!(report, "Apply, median of {} runs:\n", options.runs);
    let _ = writeln!(
        report,
        "Apply of {n} creates at {} ms server delay, `--parallelism {parallelism}` given explicitly. Bound = N × delay / P. \
         Each run starts from a database with the schema and no state, and ends with the fold; the state then holds all {n} tokens.\n",
        options.delay.as_millis()
    );
    let _ = writeln!(
        report,
        "| backend | wall s | bound s | wall / bound | bare client s | wall / bare client |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|");
    let bare = runtime.block_on(bare_client(&mock.url(), n, parallelism));
    let bound = options.delay.as_secs_f64() * n as f64 / parallelism as f64;
    for backend in ["file", "postgres"] {
        let mut walls = Vec::new();
        for _ in 0..options.runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = cluster.create_db();
            // A team's database has its schema already: created once, here,
            // outside the measurement.
            cluster
                .psql(&db, &tokenctl::backend::postgres::sql::create("tokenctl"))
                .expect("schema");
            if backend == "postgres" {
                write_pg_manifest(&dir.path().join("tokens.yaml"), &tokens);
            } else {
                write_manifest(&dir.path().join("tokens.yaml"), &tokens);
            }
            let mut command = apply_command(bin, dir.path(), parallelism, &mock.url());
            command.env("TOKENCTL_PG_CONN_STR", cluster.conn_str(&db));
            let sample = measure(&mut command);
            assert!(sample.success, "apply failed");
            if backend == "postgres" {
                let stored = cluster
                    .psql(
                        &db,
                        "SELECT json_array_length(document::json->'tokens') FROM tokenctl.states",
                    )
                    .expect("count");
                assert_eq!(stored, n.to_string(), "the state does not hold every token");
            }
            walls.push(sample.wall);
        }
        walls.sort();
        let wall = walls[walls.len() / 2].as_secs_f64();
        let _ = writeln!(
            report,
            "| {backend} | {wall:.2} | {bound:.2} | {:.3}× | {:.2} | {:.3}× |",
            wall / bound,
            bare.as_secs_f64(),
            wall / bare.as_secs_f64()
        );
        eprintln!("postgres bench: apply {backend}: {wall:.2} s");
    }
}
