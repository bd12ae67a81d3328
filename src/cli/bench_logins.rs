//! `novabox bench logins`: what a flood of wrong passwords does to everyone else. F clients
//! send wrong passwords as fast as they can while one client times unrelated requests (a
//! compute list and the identity version document), compared in the same run with the same
//! requests on a quiet stack. Run twice: with the default lockout, and with it off, which
//! leaves only the hashing being off the async threads between the flood and the rest.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::bench_boot::{percentile, start_stack};

#[derive(Debug, Args)]
pub struct LoginsArgs {
    /// Concurrent clients sending wrong passwords
    #[arg(short = 'f', long, default_value_t = 40)]
    pub flooders: usize,
    /// Unrelated requests timed in each phase
    #[arg(short = 'n', long, default_value_t = 300)]
    pub requests: usize,
}

/// How long the flooded phase lasts at least: long enough for a lockout to set in and for the
/// hashing queue to fill.
const FLOOD_FOR: Duration = Duration::from_secs(8);

/// p50 and p95 of each timed request kind in one phase.
struct Phase {
    flavors: (Duration, Duration),
    identity: (Duration, Duration),
}

/// Times at least `n` rounds of the two unrelated requests, one after the other, for at least
/// `min` (so a flood has time to reach its steady state).
async fn time_requests(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    min: Duration,
) -> anyhow::Result<Phase> {
    let (mut flavors, mut identity) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let started = Instant::now();
    while flavors.len() < n || started.elapsed() < min {
        let t = Instant::now();
        let r = http.get(format!("{base}/compute/v2.1/flavors")).header("x-auth-token", token).send().await?;
        if !r.status().is_success() {
            bail!("GET /compute/v2.1/flavors answered {}", r.status());
        }
        r.bytes().await?;
        flavors.push(t.elapsed());
        let t = Instant::now();
        let r = http.get(format!("{base}/identity/v3")).send().await?;
        r.bytes().await?;
        identity.push(t.elapsed());
    }
    flavors.sort();
    identity.sort();
    let p = |v: &[Duration]| (percentile(v, 0.50), percentile(v, 0.95));
    Ok(Phase { flavors: p(&flavors), identity: p(&identity) })
}

/// One stack: a quiet phase, then a flooded one. Returns both and the flood's answers.
async fn run_stack(ready: &serde_json::Value, args: &LoginsArgs) -> anyhow::Result<(Phase, Phase, Vec<(u16, usize)>)> {
    let auth = ready["auth_url"].as_str().context("no auth_url")?;
    let base = auth.trim_end_matches("/identity/v3").to_string();
    let pw = ready["credentials"]["demo"]["password"].as_str().context("no demo password")?;
    let demo = novabox::client::Client::login(auth, "demo", pw, "demo").await?;
    let token = demo.token().to_string();
    let http = reqwest::Client::new();
    // Warm up the connection and the caches the same way for both phases.
    time_requests(&http, &base, &token, 20, Duration::ZERO).await?;
    let quiet = time_requests(&http, &base, &token, args.requests, Duration::ZERO).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<[AtomicUsize; 600]> = Arc::new(std::array::from_fn(|_| AtomicUsize::new(0)));
    let mut flood = Vec::new();
    for i in 0..args.flooders {
        let (stop, answers, url) = (stop.clone(), answers.clone(), format!("{base}/identity/v3/auth/tokens"));
        let user = ["demo", "alt_demo", "admin"][i % 3];
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": "not-the-password"}}}}});
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http.post(&url).json(&body).send().await {
                    answers[usize::from(r.status().as_u16()).min(599)].fetch_add(1, Ordering::Relaxed);
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    // Let the flood build up before timing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = time_requests(&http, &base, &token, args.requests, FLOOD_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    let counts =
        (0..600).filter_map(|s| Some((s as u16, answers[s].load(Ordering::Relaxed))).filter(|c| c.1 > 0)).collect();
    Ok((quiet, flooded?, counts))
}

pub fn run(args: LoginsArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.flooders == 0 || args.requests == 0 {
        bail!("-f and -n must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!(
        "novabox bench logins: {} clients sending wrong passwords; {} timed GET /compute/v2.1/flavors and GET \
         /identity/v3 each, quiet then flooded, fake driver, local bus",
        args.flooders, args.requests
    );
    println!(
        "  {:<34} {:>12} {:>12} {:>12} {:>12}  flood answers",
        "", "flavors p50", "flavors p95", "identity p50", "identity p95"
    );
    let lockout_off: &[(&str, &str)] = &[
        ("lockout_failure_attempts = 10", "lockout_failure_attempts = 0"),
        ("lockout_source_failures = 100", "lockout_source_failures = 0"),
    ];
    for (label, edits) in [("default lockout", &[][..]), ("lockout off (hashing only)", lockout_off)] {
        let dir = tempfile::tempdir()?;
        let (stack, ready, _) = start_stack(dir.path(), "local", edits)?;
        let (quiet, flooded, counts) = runtime.block_on(run_stack(&ready, &args))?;
        drop(stack);
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        let answers = counts.iter().map(|(s, n)| format!("{n}x{s}")).collect::<Vec<_>>().join(" ");
        for (phase, p, ans) in [("quiet", &quiet, String::new()), ("flooded", &flooded, answers)] {
            println!(
                "  {:<34} {:>12} {:>12} {:>12} {:>12}  {ans}",
                format!("{label}, {phase}"),
                ms(p.flavors.0),
                ms(p.flavors.1),
                ms(p.identity.0),
                ms(p.identity.1)
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
