//! `nerite simulate`: replay an arrival trace through nerite's own policy and through a
//! model of KEDA + HPA, side by side, in a deterministic discrete-event simulation.
//!
//! - [`trace`]: CSV traces and the seeded messages drawn from them;
//! - [`scenarios`]: the built-in scenarios;
//! - [`engine`]: the queue, the consumer fleet and the broker's statistics;
//! - [`keda`]: KEDA + HPA as documented;
//! - [`policies`]: the compared policies (static, KEDA, KEDA tuned, nerite, oracle);
//! - [`output`]: the table, JSON and SVG.
//!
//! nerite's policy here is `crate::core::policy::decide` itself, fed the observations the broker
//! would give (statistics `stats_delay` old, rates over 5 s), ticked every poll interval.

pub mod engine;
pub mod keda;
pub mod output;
pub mod policies;
pub mod rng;
pub mod scenarios;
pub mod trace;

use std::time::Duration;

use serde::Serialize;

use engine::{BrokerModel, Outcome, Point, Scaler};
use keda::KedaConfig;
use policies::{KedaHpa, Nerite, Oracle, Static};
use scenarios::Scenario;

/// Settings shared by every scenario of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Message-wait SLO, seconds (also nerite's `maxMessageWait`).
    pub slo: f64,
    pub stats_delay: f64,
    /// nerite's poll interval, seconds.
    pub poll_interval: u64,
    /// KEDA targets tried for "KEDA tuned".
    pub sweep: Vec<f64>,
    /// KEDA tuned's polling interval, seconds.
    pub tuned_polling: u64,
    /// Oracle look-ahead beyond the start-up delay, seconds.
    pub oracle_horizon: f64,
    /// Keep nerite's changes of the count with their reasons.
    pub explain: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seed: 1,
            slo: 90.0,
            stats_delay: 5.0,
            poll_interval: 5,
            sweep: vec![
                5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0,
            ],
            tuned_polling: 5,
            oracle_horizon: 120.0,
            explain: false,
        }
    }
}

/// One policy's figures on one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    /// Settings that matter (e.g. the KEDA target).
    pub detail: String,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub within_slo_pct: f64,
    pub replica_seconds: f64,
    /// replica_seconds ÷ the work floor.
    pub cost_ratio: f64,
    pub scale_changes: u32,
    /// Seconds from the surge start to the first scale-up.
    pub first_scale_up_s: Option<f64>,
    pub max_backlog: u64,
    pub final_backlog: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Point>,
    /// nerite's changes of the count with their reasons (only with `--explain`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<policies::Change>,
}

/// Every policy on one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub messages: usize,
    /// Total busy seconds ÷ concurrency: replica-seconds at 100 % utilization.
    pub work_floor: f64,
    pub slo_s: f64,
    pub results: Vec<PolicyResult>,
    /// Every KEDA target tried for "KEDA tuned".
    pub sweep: Vec<PolicyResult>,
}

/// The figures of one run.
pub fn summarize(
    policy: &str,
    detail: String,
    o: Outcome,
    slo: f64,
    surge_at: Option<f64>,
    keep_series: bool,
) -> PolicyResult {
    let mut w = o.waits;
    let n = w.len();
    let within = w.iter().filter(|x| **x <= slo).count();
    let max = w.iter().copied().fold(0.0, f64::max);
    let p50 = percentile(&mut w, 0.50);
    let p99 = percentile(&mut w, 0.99);
    PolicyResult {
        policy: policy.to_string(),
        detail,
        p50_wait_s: p50,
        p99_wait_s: p99,
        max_wait_s: max,
        within_slo_pct: if n == 0 {
            100.0
        } else {
            100.0 * within as f64 / n as f64
        },
        replica_seconds: o.replica_seconds,
        cost_ratio: if o.busy_seconds > 0.0 {
            o.replica_seconds / o.busy_seconds
        } else {
            f64::INFINITY
        },
        scale_changes: o.scale_changes,
        first_scale_up_s: surge_at
            .and_then(|s| o.scale_ups.iter().find(|t| **t >= s).map(|t| t - s)),
        max_backlog: o.max_backlog,
        final_backlog: o.final_backlog,
        series: if keep_series { o.series } else { Vec::new() },
        changes: Vec::new(),
    }
}

/// Nearest-rank percentile (reorders `xs`).
pub fn percentile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    let (_, v, _) = xs.select_nth_unstable_by(rank, f64::total_cmp);
    *v
}

/// Run every policy on one scenario.
pub fn run_scenario(sc: &Scenario, s: &Settings) -> ScenarioResult {
    let w = &sc.workload;
    let msgs = sc.trace.messages(s.seed, w.mean_service, w.service_shape);
    let broker = BrokerModel {
        stats_delay: s.stats_delay,
        rate_window: 5.0,
    };
    let mu = w.replica_rate();
    let bounds = |n: f64| (n.ceil() as i32).clamp(w.min_replicas, w.max_replicas);
    let initial = bounds(sc.trace.rate_at(0.0) / mu);
    let sample_every = (sc.trace.end / 720.0).max(1.0).round();
    let go = |scaler: &mut dyn Scaler, initial: i32| {
        engine::run(
            &msgs,
            sc.trace.end,
            w,
            &broker,
            initial,
            scaler,
            sample_every,
            sc.surge_at,
        )
    };
    let sum = |name: &str, detail: String, o: Outcome| {
        summarize(name, detail, o, s.slo, sc.surge_at, true)
    };
    let mut results = Vec::new();

    let peak = bounds(1.1 * sc.trace.peak() / mu);
    results.push(sum(
        "static",
        format!("{peak} replicas (peak + 10 %)"),
        go(&mut Static(peak), peak),
    ));

    let bpr = sc.backlog_per_replica as f64;
    let keda = KedaConfig::defaults(bpr, w.min_replicas, w.max_replicas);
    results.push(sum(
        "keda",
        format!("target {bpr}, polling 30s"),
        go(&mut KedaHpa::new(keda.clone()), initial),
    ));

    let mut sweep = Vec::new();
    for target in &s.sweep {
        let cfg = KedaConfig {
            polling_interval: s.tuned_polling,
            target: *target,
            ..keda.clone()
        };
        let o = go(&mut KedaHpa::new(cfg), initial);
        sweep.push(summarize(
            "keda-tuned",
            format!("target {target}, polling {}s", s.tuned_polling),
            o,
            s.slo,
            sc.surge_at,
            false,
        ));
    }
    if let Some(best) = best_of(&sweep) {
        // Re-run the winner to keep its time series for the chart.
        let cfg = KedaConfig {
            polling_interval: s.tuned_polling,
            target: best,
            ..keda.clone()
        };
        results.push(sum(
            "keda-tuned",
            format!(
                "target {best} (best of sweep), polling {}s",
                s.tuned_polling
            ),
            go(&mut KedaHpa::new(cfg), initial),
        ));
    }

    let cfg = Nerite::config(
        w.min_replicas,
        w.max_replicas,
        sc.backlog_per_replica,
        Duration::from_secs_f64(s.slo),
        Duration::from_secs(s.poll_interval.max(1)),
        Duration::from_secs_f64(w.startup_delay),
    );
    let mut nerite = Nerite::new(cfg);
    let outcome = go(&mut nerite, initial);
    let mut result = sum(
        "nerite",
        format!("maxMessageWait {}s, poll {}s", s.slo, s.poll_interval),
        outcome,
    );
    if s.explain {
        result.changes = nerite.changes;
    }
    results.push(result);

    let mut oracle = Oracle {
        wait: s.slo * 0.9,
        horizon: s.oracle_horizon,
        min: w.min_replicas,
        max: w.max_replicas,
    };
    results.push(sum(
        "oracle",
        "knows the trace; deadline 0.9 × SLO".to_string(),
        go(&mut oracle, initial),
    ));

    let work_floor = msgs.iter().map(|m| m.service).sum::<f64>() / f64::from(w.concurrency.max(1));
    ScenarioResult {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        messages: msgs.len(),
        work_floor,
        slo_s: s.slo,
        results,
        sweep,
    }
}

/// The best KEDA target: the cheapest with at least 99.5 % of messages within the SLO, or,
/// when none reaches it, the one with the most.
pub fn best_of(sweep: &[PolicyResult]) -> Option<f64> {
    let target = |r: &PolicyResult| {
        r.detail
            .strip_prefix("target ")
            .and_then(|d| d.split(',').next())
            .and_then(|t| t.parse::<f64>().ok())
    };
    let ok = sweep
        .iter()
        .filter(|r| r.within_slo_pct >= 99.5)
        .min_by(|a, b| a.replica_seconds.total_cmp(&b.replica_seconds));
    let pick = ok.or_else(|| {
        sweep
            .iter()
            .max_by(|a, b| a.within_slo_pct.total_cmp(&b.within_slo_pct))
    });
    pick.and_then(target)
}

#[cfg(test)]
mod tests;

/// What `nerite simulate` was asked for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Built-in scenario names; all of them when empty and no trace is given.
    pub scenarios: Vec<String>,
    /// A CSV trace (`t_seconds,arrivals_per_second`) and its name.
    pub trace: Option<(String, String)>,
    pub duration: Option<f64>,
    pub mean_service: Option<f64>,
    pub service_shape: Option<f64>,
    pub concurrency: Option<u32>,
    pub startup_delay: Option<f64>,
    pub min_replicas: Option<i32>,
    pub max_replicas: Option<i32>,
    pub backlog_per_replica: Option<i64>,
    pub settings: Settings,
}

/// Resolve the scenarios of a request (built-in ones, or the trace with the consumer
/// flags), with the consumer flags applied as overrides.
pub fn scenarios_of(req: &Request) -> Result<Vec<Scenario>, String> {
    let mut out = Vec::new();
    if let Some((name, text)) = &req.trace {
        let trace = trace::Trace::from_csv(text, req.duration)?;
        out.push(Scenario {
            name: name.clone(),
            description: format!("trace {name}"),
            trace,
            workload: engine::Workload {
                mean_service: 1.0,
                service_shape: 2.0,
                concurrency: 20,
                startup_delay: 20.0,
                min_replicas: 1,
                max_replicas: 100,
            },
            backlog_per_replica: 100,
            surge_at: None,
        });
    }
    let names: Vec<String> = if req.scenarios.is_empty() && req.trace.is_none() {
        scenarios::BUILT_IN.iter().map(|s| s.to_string()).collect()
    } else {
        req.scenarios.clone()
    };
    for n in names {
        out.push(scenarios::built_in(&n).ok_or_else(|| {
            format!(
                "unknown scenario {n:?} (built-in: {})",
                scenarios::BUILT_IN.join(", ")
            )
        })?);
    }
    for sc in &mut out {
        let w = &mut sc.workload;
        if let Some(v) = req.mean_service {
            w.mean_service = v;
        }
        if let Some(v) = req.service_shape {
            w.service_shape = v;
        }
        if let Some(v) = req.concurrency {
            w.concurrency = v;
        }
        if let Some(v) = req.startup_delay {
            w.startup_delay = v;
        }
        if let Some(v) = req.min_replicas {
            w.min_replicas = v;
        }
        if let Some(v) = req.max_replicas {
            w.max_replicas = v;
        }
        if let Some(v) = req.backlog_per_replica {
            sc.backlog_per_replica = v;
        }
        if !(w.mean_service.is_finite() && w.mean_service > 0.0) {
            return Err("--mean-service must be a positive number of seconds".to_string());
        }
        if !(w.service_shape.is_finite() && w.service_shape > 0.0) {
            return Err("--service-shape must be positive".to_string());
        }
        if w.concurrency == 0 {
            return Err("--concurrency must be at least 1".to_string());
        }
        if !(w.startup_delay.is_finite() && w.startup_delay >= 0.0) {
            return Err("--startup-delay must be a non-negative number of seconds".to_string());
        }
        if w.min_replicas < 0 || w.max_replicas < 1 || w.min_replicas > w.max_replicas {
            return Err(
                "replica bounds must satisfy 0 ≤ --min-replicas ≤ --max-replicas, max ≥ 1"
                    .to_string(),
            );
        }
        if sc.backlog_per_replica < 1 {
            return Err("--backlog-per-replica must be at least 1".to_string());
        }
    }
    let s = &req.settings;
    if !(s.slo.is_finite() && s.slo >= 1.0) {
        return Err("--slo must be at least 1 second".to_string());
    }
    if !(s.stats_delay.is_finite() && s.stats_delay >= 0.0) {
        return Err("--stats-delay must be a non-negative number of seconds".to_string());
    }
    if s.poll_interval == 0 {
        return Err("--poll-interval must be at least 1 second".to_string());
    }
    Ok(out)
}

/// Run a request; returns what to print (the table, or JSON), after writing the charts.
pub fn execute(
    req: &Request,
    json: bool,
    show_sweep: bool,
    svg_dir: Option<&std::path::Path>,
) -> Result<String, String> {
    let scenarios = scenarios_of(req)?;
    let results: Vec<ScenarioResult> = scenarios
        .iter()
        .map(|sc| run_scenario(sc, &req.settings))
        .collect();
    let mut written = Vec::new();
    if let Some(dir) = svg_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for r in &results {
            let path = dir.join(format!("{}.svg", r.scenario));
            std::fs::write(&path, output::svg(r))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written.push(path);
        }
    }
    if json {
        return serde_json::to_string_pretty(&results).map_err(|e| e.to_string());
    }
    let mut out = output::table(&results);
    if show_sweep {
        out.push_str(&output::sweep_table(&results));
    }
    if req.settings.explain {
        out.push_str(&output::changes(&results));
    }
    for p in written {
        out.push_str(&format!("\nchart: {}", p.display()));
    }
    out.push('\n');
    Ok(out)
}
