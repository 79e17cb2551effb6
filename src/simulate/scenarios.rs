//! Built-in scenarios: a trace plus the consumer it feeds.

use super::engine::Workload;
use super::trace::{Trace, ramp};

/// A named trace with its consumer model and KEDA target.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub trace: Trace,
    pub workload: Workload,
    /// The user's `backlogPerReplica` (KEDA's target value).
    pub backlog_per_replica: i64,
    /// When the surge starts, for "time to first scale-up".
    pub surge_at: Option<f64>,
}

/// Names of the built-in scenarios, in table order.
pub const BUILT_IN: [&str; 4] = ["flash-sale", "order-surge", "diurnal", "on-off"];

fn workload(mean_service: f64, shape: f64, concurrency: u32, min: i32, max: i32) -> Workload {
    Workload {
        mean_service,
        service_shape: shape,
        concurrency,
        startup_delay: 20.0,
        min_replicas: min,
        max_replicas: max,
    }
}

/// A built-in scenario by name.
pub fn built_in(name: &str) -> Option<Scenario> {
    let min = 60.0;
    Some(match name {
        "flash-sale" => {
            // 1x = 50 msg/s; 10x within 5 minutes at "midnight" (t = 10 min), an hour at
            // 10x, a 30-minute decay, then 1x.
            let mut p = vec![(0.0, 50.0)];
            ramp(&mut p, 10.0 * min, 15.0 * min, 50.0, 500.0, 10.0);
            p.push((15.0 * min, 500.0));
            ramp(&mut p, 75.0 * min, 105.0 * min, 500.0, 50.0, 10.0);
            p.push((105.0 * min, 50.0));
            Scenario {
                name: name.to_string(),
                description:
                    "1x → 10x within 5 minutes, 1 h plateau, 30 min decay (50 → 500 msg/s)"
                        .to_string(),
                trace: Trace {
                    points: p,
                    end: 120.0 * min,
                },
                workload: workload(1.0, 2.0, 20, 1, 100),
                backlog_per_replica: 100,
                surge_at: Some(10.0 * min),
            }
        }
        "order-surge" => {
            // 60 msg/s; 280 msg/s for 10 minutes. The fleet the user ran (4 replicas,
            // 80 msg/s) builds a ~120k backlog.
            Scenario {
                name: name.to_string(),
                description:
                    "60 → 280 msg/s for 10 min (a fixed fleet of 4 builds a ~120k backlog)"
                        .to_string(),
                trace: Trace {
                    points: vec![(0.0, 60.0), (10.0 * min, 280.0), (20.0 * min, 60.0)],
                    end: 60.0 * min,
                },
                workload: workload(1.0, 2.0, 20, 1, 100),
                backlog_per_replica: 100,
                surge_at: Some(10.0 * min),
            }
        }
        "diurnal" => {
            // A day: 2 msg/s at night to 20 msg/s mid-day, slow jobs (5 s, 2 at a time).
            let mut p = Vec::new();
            let day = 86_400.0;
            let mut t = 0.0;
            while t < day {
                let x = (t + 150.0) / day;
                p.push((
                    t,
                    2.0 + 18.0 * (1.0 - (std::f64::consts::TAU * x).cos()) / 2.0,
                ));
                t += 300.0;
            }
            Scenario {
                name: name.to_string(),
                description: "24 h cycle, 2 → 20 msg/s, 5 s jobs".to_string(),
                trace: Trace {
                    points: p,
                    end: day,
                },
                workload: workload(5.0, 2.0, 2, 1, 100),
                backlog_per_replica: 20,
                surge_at: None,
            }
        }
        "on-off" => {
            // Idle 8 minutes, 40 msg/s for 2 minutes; 12 times. Scale to zero allowed.
            let mut p = Vec::new();
            for k in 0..12 {
                let base = f64::from(k) * 10.0 * min;
                p.push((base, 0.0));
                p.push((base + 8.0 * min, 40.0));
            }
            Scenario {
                name: name.to_string(),
                description: "bursts: idle 8 min, 40 msg/s for 2 min, ×12; minReplicas 0"
                    .to_string(),
                trace: Trace {
                    points: p,
                    end: 120.0 * min,
                },
                workload: workload(2.0, 1.0, 4, 0, 50),
                backlog_per_replica: 20,
                surge_at: Some(8.0 * min),
            }
        }
        _ => return None,
    })
}
