//! Arrival traces (CSV or built-in scenarios) and the messages drawn from them.

use super::rng::Rng;

/// Piecewise-constant arrival rate: each point's rate holds until the next point; the trace
/// ends at `end`.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// (start second, arrivals per second), strictly increasing starts.
    pub points: Vec<(f64, f64)>,
    pub end: f64,
}

/// One message: when it arrives and how long it takes to process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Message {
    pub arrival: f64,
    pub service: f64,
}

impl Trace {
    /// Parse `t_seconds,arrivals_per_second` rows (a header row, blank lines and `#` comments
    /// are skipped). The rate of a row holds until the next row. The trace ends at
    /// `duration` when given, otherwise at the last row's time (give a last row at the end).
    pub fn from_csv(text: &str, duration: Option<f64>) -> Result<Trace, String> {
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut cols = line.split(',').map(str::trim);
            let (Some(a), Some(b)) = (cols.next(), cols.next()) else {
                return Err(format!(
                    "line {}: expected t_seconds,arrivals_per_second",
                    i + 1
                ));
            };
            let (Ok(t), Ok(r)) = (a.parse::<f64>(), b.parse::<f64>()) else {
                if points.is_empty() && a.parse::<f64>().is_err() {
                    continue; // header
                }
                return Err(format!("line {}: {line:?} is not two numbers", i + 1));
            };
            if !(t.is_finite() && t >= 0.0) {
                return Err(format!(
                    "line {}: time {t} must be a non-negative number",
                    i + 1
                ));
            }
            if !(r.is_finite() && r >= 0.0) {
                return Err(format!(
                    "line {}: rate {r} must be a non-negative number",
                    i + 1
                ));
            }
            if let Some((prev, _)) = points.last()
                && t <= *prev
            {
                return Err(format!(
                    "line {}: time {t} does not increase (after {prev})",
                    i + 1
                ));
            }
            points.push((t, r));
        }
        let Some(&(last, _)) = points.last() else {
            return Err("the trace has no rows".to_string());
        };
        let end = match duration {
            Some(d) if d.is_finite() && d > 0.0 => d,
            Some(d) => return Err(format!("duration {d} must be positive")),
            None => last,
        };
        if end <= points[0].0 {
            return Err("the trace ends before its first row: add a last row at the end time, or pass --duration".to_string());
        }
        Ok(Trace { points, end })
    }

    /// Rate at time `t` (0 before the first point).
    pub fn rate_at(&self, t: f64) -> f64 {
        let i = self.points.partition_point(|(s, _)| *s <= t);
        if i == 0 { 0.0 } else { self.points[i - 1].1 }
    }

    /// Highest rate within the trace.
    pub fn peak(&self) -> f64 {
        self.points
            .iter()
            .filter(|(t, _)| *t < self.end)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
    }

    /// Expected number of arrivals.
    pub fn expected_arrivals(&self) -> f64 {
        self.segments().map(|(a, b, r)| (b - a) * r).sum()
    }

    fn segments(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.points.iter().enumerate().filter_map(|(i, &(t, r))| {
            let next = self
                .points
                .get(i + 1)
                .map_or(self.end, |p| p.0)
                .min(self.end);
            (next > t).then_some((t, next, r))
        })
    }

    /// Poisson arrivals at the trace's rate (exact for piecewise-constant rates: the
    /// exponential gap restarts at each change) and a Gamma service time per message.
    /// Every policy replays the same messages.
    pub fn messages(&self, seed: u64, mean_service: f64, shape: f64) -> Vec<Message> {
        let mut arrivals = Rng::new(seed, 1);
        let mut services = Rng::new(seed, 2);
        let mut out = Vec::with_capacity(self.expected_arrivals().min(5e7) as usize + 16);
        for (a, b, r) in self.segments() {
            if r <= 0.0 {
                continue;
            }
            let mut t = a + arrivals.exponential(r);
            while t < b {
                out.push(Message {
                    arrival: t,
                    service: services.gamma(shape, mean_service),
                });
                t += arrivals.exponential(r);
            }
        }
        out
    }
}

/// A linear ramp from `from` to `to` over `[t0, t1)`, as steps of `step` seconds.
pub fn ramp(points: &mut Vec<(f64, f64)>, t0: f64, t1: f64, from: f64, to: f64, step: f64) {
    let n = ((t1 - t0) / step).round().max(1.0) as usize;
    for i in 0..n {
        let t = t0 + i as f64 * step;
        let x = (i as f64 + 0.5) / n as f64;
        points.push((t, from + (to - from) * x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parsing() {
        let t = Trace::from_csv(
            "t_seconds,arrivals_per_second\n0,10\n# surge\n60, 100\n120,0\n",
            None,
        )
        .expect("valid");
        assert_eq!(t.points, [(0.0, 10.0), (60.0, 100.0), (120.0, 0.0)]);
        assert_eq!(t.end, 120.0);
        assert_eq!(t.rate_at(59.9), 10.0);
        assert_eq!(t.rate_at(60.0), 100.0);
        assert_eq!(t.peak(), 100.0);
        assert_eq!(t.expected_arrivals(), 6600.0);
        let t = Trace::from_csv("0,10\n60,100\n", Some(90.0)).expect("valid");
        assert_eq!(t.expected_arrivals(), 600.0 + 3000.0);
        for (bad, why) in [
            ("", "no rows"),
            ("0,1\n0,2\n10,0", "does not increase"),
            ("0,-1\n10,0", "rate -1"),
            ("0,1\nx,2", "not two numbers"),
            ("0,1\n5", "expected"),
            ("5,1", "ends before"),
        ] {
            let err = Trace::from_csv(bad, None).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn messages_follow_the_rate_and_are_seeded() {
        let t = Trace::from_csv("0,50\n100,0\n200,200\n300,0", None).expect("valid");
        let m = t.messages(3, 1.0, 2.0);
        assert_eq!(m, t.messages(3, 1.0, 2.0));
        assert_ne!(m, t.messages(4, 1.0, 2.0));
        let first = m.iter().filter(|x| x.arrival < 100.0).count() as f64;
        let quiet = m
            .iter()
            .filter(|x| (100.0..200.0).contains(&x.arrival))
            .count();
        let burst = m.iter().filter(|x| x.arrival >= 200.0).count() as f64;
        assert!((first - 5000.0).abs() < 4.0 * 5000f64.sqrt(), "{first}");
        assert_eq!(quiet, 0);
        assert!((burst - 20000.0).abs() < 4.0 * 20000f64.sqrt(), "{burst}");
        assert!(m.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        let mean = m.iter().map(|x| x.service).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }
}
