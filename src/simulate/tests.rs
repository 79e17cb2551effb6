use super::engine::{self, BrokerModel, Scaler, View, Workload};
use super::policies::{Nerite, Static};
use super::scenarios::built_in;
use super::trace::Trace;
use super::*;

fn wl(mean: f64, shape: f64, c: u32) -> Workload {
    Workload {
        mean_service: mean,
        service_shape: shape,
        concurrency: c,
        startup_delay: 20.0,
        min_replicas: 0,
        max_replicas: 100,
    }
}

fn broker() -> BrokerModel {
    BrokerModel {
        stats_delay: 5.0,
        rate_window: 5.0,
    }
}

#[test]
fn conservation_and_replica_seconds_at_fixed_count() {
    let t = Trace::from_csv("0,30\n300,0\n400,0", None).expect("valid");
    let w = wl(1.0, 2.0, 10);
    let msgs = t.messages(9, 1.0, 2.0);
    let o = engine::run(&msgs, t.end, &w, &broker(), 4, &mut Static(4), 10.0, None);
    assert_eq!(o.conservation_violations, 0);
    assert_eq!(o.waits.len(), msgs.len());
    // 4 replicas for 400 s, no changes.
    assert!(
        (o.replica_seconds - 1600.0).abs() < 1e-6,
        "{}",
        o.replica_seconds
    );
    assert_eq!(o.scale_changes, 0);
    // Everything was served by the end.
    assert_eq!(o.started, msgs.len());
    assert_eq!(o.final_backlog, 0);
}

#[test]
fn littles_law_on_a_steady_mm_c_queue() {
    // M/M/c: λ = 8/s, service mean 1 s, c = 10 slots (1 replica × 10), ρ = 0.8.
    // Erlang C gives the mean wait Wq = C(c, a) / (cμ − λ).
    let lambda = 8.0;
    let t = Trace::from_csv("0,8\n20000,8", None).expect("valid");
    let w = wl(1.0, 1.0, 10);
    let msgs = t.messages(5, 1.0, 1.0);
    let o = engine::run(&msgs, t.end, &w, &broker(), 1, &mut Static(1), 10.0, None);
    let mean_wait = o.waits.iter().sum::<f64>() / o.waits.len() as f64;
    let a: f64 = lambda; // offered load in Erlangs (λ/μ, μ = 1)
    let c = 10u32;
    let mut sum = 0.0;
    let mut term = 1.0;
    for k in 0..c {
        if k > 0 {
            term *= a / f64::from(k);
        }
        sum += term;
    }
    let last = term * a / f64::from(c);
    let rho = a / f64::from(c);
    let erlang_c = last / (1.0 - rho) / (sum + last / (1.0 - rho));
    let wq = erlang_c / (f64::from(c) - a);
    assert!(
        (mean_wait - wq).abs() < 0.15 * wq,
        "mean wait {mean_wait} vs Erlang C {wq}"
    );
    // Little's law: mean number waiting = λ × mean wait, from the 1 s samples.
    let mean_queue = o.series.iter().map(|p| p.backlog as f64).sum::<f64>() / o.series.len() as f64;
    // The series' backlog counts in-flight messages too: L = λ (Wq + 1 s).
    let l = lambda * (mean_wait + 1.0);
    assert!((mean_queue - l).abs() < 0.1 * l, "L {mean_queue} vs λW {l}");
}

#[test]
fn deterministic_for_a_seed() {
    let mut sc = built_in("order-surge").expect("exists");
    sc.trace.end = 1800.0;
    let s = Settings {
        sweep: vec![100.0, 1000.0],
        ..Settings::default()
    };
    let a = serde_json::to_string(&run_scenario(&sc, &s)).expect("json");
    let b = serde_json::to_string(&run_scenario(&sc, &s)).expect("json");
    assert_eq!(a, b);
    let c = serde_json::to_string(&run_scenario(
        &sc,
        &Settings {
            seed: 2,
            ..s.clone()
        },
    ))
    .expect("json");
    assert_ne!(a, c);
}

#[test]
fn order_surge_builds_about_120k_under_the_users_fleet() {
    let sc = built_in("order-surge").expect("exists");
    let msgs = sc.trace.messages(1, 1.0, 2.0);
    let mut end = sc.trace.clone();
    end.end = 1200.0;
    let o = engine::run(
        &msgs[..msgs.partition_point(|m| m.arrival < 1200.0)],
        1200.0,
        &sc.workload,
        &broker(),
        4,
        &mut Static(4),
        60.0,
        None,
    );
    assert!(
        (110_000..=130_000).contains(&o.max_backlog),
        "{}",
        o.max_backlog
    );
}

/// Records what it saw, scales on a schedule.
struct Probe {
    seen: Vec<(f64, i64, Option<f64>)>,
}

impl Scaler for Probe {
    fn period(&self) -> u64 {
        5
    }
    fn tick(&mut self, v: &View<'_>) -> i32 {
        let o = v.observation();
        self.seen.push((v.now, o.backlog, o.publish_rate));
        if v.now >= 100.0 { 3 } else { 1 }
    }
}

#[test]
fn statistics_are_delayed_and_replicas_start_late() {
    // 10 msg/s from t = 50; 1 replica of 1 slot at 100 s service: nothing completes.
    let t = Trace::from_csv("0,0\n50,10\n200,10", None).expect("valid");
    let w = Workload {
        startup_delay: 20.0,
        ..wl(1000.0, 1.0, 1)
    };
    let msgs = t.messages(3, 1000.0, 1.0);
    let mut p = Probe { seen: Vec::new() };
    let o = engine::run(&msgs, t.end, &w, &broker(), 1, &mut p, 1.0, None);
    // The tick at 55 s sees the queue as of 50 s: still empty.
    let at = |x: f64| p.seen.iter().find(|s| s.0 == x).copied().expect("tick");
    assert_eq!(at(55.0).1, 0);
    assert_eq!(at(55.0).2, Some(0.0));
    // At 65 s: rate over 55..60 s, around 10/s.
    let r = at(65.0).2.expect("rate");
    assert!(r > 2.0 && r < 25.0, "{r}");
    // Scale-up at 100 s; new replicas start at 120 s: two more messages start then.
    let started_at_120 = o
        .waits
        .iter()
        .zip(&msgs)
        .filter(|(w, m)| ((m.arrival + **w) - 120.0).abs() < 1e-9)
        .count();
    assert_eq!(started_at_120, 2);
    assert_eq!(o.scale_changes, 1);
}

/// nerite (`maxMessageWait` 90 s, 5 s polls, 20 s start-up, 1–100 replicas) on `t` with
/// 1 s jobs (Gamma k=2), 20 at once per replica, starting from 10 replicas.
fn nerite_closed_loop(t: &Trace, seed: u64) -> (Nerite, engine::Outcome) {
    let w = Workload {
        min_replicas: 1,
        ..wl(1.0, 2.0, 20)
    };
    let msgs = t.messages(seed, 1.0, 2.0);
    let cfg = Nerite::config(
        1,
        100,
        100,
        Duration::from_secs(90),
        Duration::from_secs(5),
        Duration::from_secs(20),
    );
    let mut n = Nerite::new(cfg);
    let o = engine::run(&msgs, t.end, &w, &broker(), 10, &mut n, 10.0, None);
    (n, o)
}

/// nerite in a closed loop: Poisson arrivals at a constant 190/s, 20/s per replica (9.5
/// replicas of work, the hardest rounding), a queue that grows whenever the fleet falls
/// short. Once the throughput is learned, the count stays put, and every message starts
/// within the objective.
#[test]
fn nerite_holds_a_constant_count_under_constant_load() {
    let t = Trace::from_csv("0,190\n7200,190", None).expect("valid");
    for seed in 1..=4 {
        let (n, o) = nerite_closed_loop(&t, seed);
        let late: Vec<_> = n.changes.iter().filter(|c| c.t > 600.0).collect();
        assert!(late.is_empty(), "seed {seed}: {late:#?}");
        let within = o.waits.iter().filter(|x| **x <= 90.0).count();
        assert_eq!(within, o.waits.len(), "seed {seed}");
    }
}

/// The same with the rate wandering ±20 % every few minutes: few changes, none back and
/// forth within a minute.
#[test]
fn nerite_makes_few_changes_on_a_noisy_steady_load() {
    let mut csv = String::new();
    let mut rng = super::rng::Rng::new(7, 0);
    for k in 0..40 {
        let rate = 190.0 * (0.8 + 0.4 * rng.uniform());
        csv.push_str(&format!("{},{rate:.1}\n", k * 180));
    }
    csv.push_str("7200,190\n");
    let t = Trace::from_csv(&csv, None).expect("valid");
    let (n, o) = nerite_closed_loop(&t, 2);
    // 40 rate changes in two hours; a change of the count per rate change at most.
    assert!(n.changes.len() <= 40, "{} changes", n.changes.len());
    for pair in n.changes.windows(2) {
        let flip = (pair[0].to > pair[0].from) != (pair[1].to > pair[1].from);
        assert!(
            !(flip && pair[1].t - pair[0].t < 60.0),
            "back and forth within a minute: {pair:#?}"
        );
    }
    let within = o.waits.iter().filter(|x| **x <= 90.0).count();
    assert!(within as f64 >= 0.995 * o.waits.len() as f64);
}
