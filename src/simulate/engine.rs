//! The discrete-event simulation of one queue and its consumer fleet.
//!
//! Events, in time order (ties in this order): service completions and replicas becoming
//! ready, the broker's statistics sample (every second), the scaler's tick, arrivals.
//! The queue is FIFO; a running replica holds up to `concurrency` messages at once
//! (RabbitMQ prefetch, processed concurrently). A new replica consumes after
//! `startup_delay`. On scale-down, replicas still starting go first (newest first), then the
//! least busy running ones; a running replica stops taking messages at once and finishes
//! what it holds (it costs until then).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use jiff::Timestamp;

use super::trace::Message;
use crate::core::observation::Observation;

/// The consumer model.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Mean seconds to process one message.
    pub mean_service: f64,
    /// Gamma shape of the service time (1 = exponential; larger is less variable).
    pub service_shape: f64,
    /// Messages one replica processes at once (its prefetch).
    pub concurrency: u32,
    /// Seconds from creating a replica to its first message.
    pub startup_delay: f64,
    pub min_replicas: i32,
    pub max_replicas: i32,
}

impl Workload {
    /// Messages per second one busy replica completes.
    pub fn replica_rate(&self) -> f64 {
        f64::from(self.concurrency) / self.mean_service
    }
}

/// The broker's view of the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerModel {
    /// How old the statistics are when read (RabbitMQ management: about 5 s).
    pub stats_delay: f64,
    /// Window the rates are averaged over (RabbitMQ: 5 s samples).
    pub rate_window: f64,
}

/// One second's statistics sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
}

/// One point of the time series used by the chart.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    pub t: f64,
    pub arrivals_per_s: f64,
    pub backlog: u64,
    pub replicas: i32,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Per message, seconds from arrival to the start of processing (or to the end of the
    /// run, for messages never started).
    pub waits: Vec<f64>,
    pub started: usize,
    pub replica_seconds: f64,
    pub busy_seconds: f64,
    pub scale_changes: u32,
    /// Times the count went up, with the new count.
    pub scale_ups: Vec<f64>,
    pub max_backlog: u64,
    pub series: Vec<Point>,
    /// Arrived, completed, in flight and waiting at every statistics sample (checked by
    /// the conservation test).
    pub conservation_violations: u64,
    pub final_backlog: u64,
}

/// A scaling policy under test.
pub trait Scaler {
    /// Whole seconds between ticks (the first tick is at 0).
    fn period(&self) -> u64;
    /// The replica count wanted now.
    fn tick(&mut self, view: &View<'_>) -> i32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodState {
    Starting,
    Running,
    Terminating,
    Gone,
}

#[derive(Clone, Debug)]
struct Pod {
    created: f64,
    ready_at: f64,
    ended: Option<f64>,
    state: PodState,
    busy: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Done(usize),
    Ready(usize),
}

#[derive(Clone, Copy, Debug)]
struct Ev {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap, we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// Simulated clock origin for `Timestamp`s handed to the policy.
const EPOCH: i64 = 1_700_000_000;

/// Seconds since the run started as a `Timestamp`.
pub fn timestamp(t: f64) -> Timestamp {
    let ns = (EPOCH as f64 * 1e9 + t * 1e9).round() as i128;
    Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The simulation state visible to a scaler at a tick.
pub struct View<'a> {
    sim: &'a Sim<'a>,
    pub now: f64,
}

impl View<'_> {
    /// Replicas asked for (starting and running).
    pub fn current(&self) -> i32 {
        self.sim.live
    }

    pub fn workload(&self) -> &Workload {
        self.sim.workload
    }

    /// What the broker's management API answers now: the statistics as they were
    /// `stats_delay` ago, rates averaged over `rate_window`.
    pub fn observation(&self) -> Observation {
        let s = &self.sim.samples;
        let at = (self.now - self.sim.broker.stats_delay).floor().max(0.0) as usize;
        let i = at.min(s.len().saturating_sub(1));
        let cur = s.get(i).copied().unwrap_or_default();
        let w = self.sim.broker.rate_window.max(1.0) as usize;
        let j = i.saturating_sub(w);
        let (publish, deliver, ack) = if i > j {
            let prev = s[j];
            let span = (i - j) as f64;
            (
                Some((cur.published - prev.published) as f64 / span),
                Some((cur.delivered - prev.delivered) as f64 / span),
                Some((cur.acked - prev.acked) as f64 / span),
            )
        } else {
            (None, None, None)
        };
        Observation {
            backlog: i64::try_from(cur.ready + cur.unacked).unwrap_or(i64::MAX),
            ready: i64::try_from(cur.ready).ok(),
            unacked: i64::try_from(cur.unacked).ok(),
            consumers: Some(i64::from(cur.consumers)),
            publish_rate: publish,
            deliver_rate: deliver,
            ack_rate: ack,
            consumer_utilisation: None,
            observed_at: timestamp(self.now),
            replica_cap: None,
        }
    }

    /// Ground truth for the oracle: arrival times of the messages waiting now (oldest first).
    pub fn waiting_arrivals(&self) -> impl ExactSizeIterator<Item = f64> + '_ {
        self.sim.queue.iter().map(|i| self.sim.msgs[*i].arrival)
    }

    /// Ground truth for the oracle: messages not yet arrived.
    pub fn future(&self) -> &[Message] {
        &self.sim.msgs[self.sim.next_msg..]
    }

    /// Ground truth for the oracle: messages being processed.
    pub fn in_flight(&self) -> u64 {
        self.sim.in_flight
    }

    /// Ground truth for the oracle: when each live replica consumes (past for running ones).
    pub fn ready_times(&self) -> Vec<f64> {
        self.sim
            .pods
            .iter()
            .filter(|p| matches!(p.state, PodState::Starting | PodState::Running))
            .map(|p| p.ready_at)
            .collect()
    }
}

struct Sim<'a> {
    msgs: &'a [Message],
    workload: &'a Workload,
    broker: &'a BrokerModel,
    next_msg: usize,
    queue: VecDeque<usize>,
    start: Vec<f64>,
    pods: Vec<Pod>,
    free: Vec<usize>,
    events: BinaryHeap<Ev>,
    seq: u64,
    live: i32,
    running: u32,
    terminating: u32,
    in_flight: u64,
    published: u64,
    delivered: u64,
    acked: u64,
    samples: Vec<Sample>,
}

/// Run one policy over `msgs` until `end` seconds. All replicas of the initial count are
/// running at time 0.
#[allow(clippy::too_many_arguments)] // one call site per policy; a struct would only rename them
pub fn run(
    msgs: &[Message],
    end: f64,
    workload: &Workload,
    broker: &BrokerModel,
    initial: i32,
    scaler: &mut dyn Scaler,
    sample_every: f64,
    surge_at: Option<f64>,
) -> Outcome {
    let mut sim = Sim {
        msgs,
        workload,
        broker,
        next_msg: 0,
        queue: VecDeque::new(),
        start: vec![f64::NAN; msgs.len()],
        pods: Vec::new(),
        free: Vec::new(),
        events: BinaryHeap::new(),
        seq: 0,
        live: 0,
        running: 0,
        terminating: 0,
        in_flight: 0,
        published: 0,
        delivered: 0,
        acked: 0,
        samples: Vec::with_capacity(end as usize + 2),
    };
    sim.scale_to(0.0, initial.max(0), true);
    let period = scaler.period().max(1) as f64;
    let mut next_tick = 0.0;
    let mut next_sample = 0.0;
    let mut next_point = 0.0;
    let mut bin_arrivals = 0u64;
    let mut out = Outcome {
        waits: Vec::new(),
        started: 0,
        replica_seconds: 0.0,
        busy_seconds: 0.0,
        scale_changes: 0,
        scale_ups: Vec::new(),
        max_backlog: 0,
        series: Vec::new(),
        conservation_violations: 0,
        final_backlog: 0,
    };
    loop {
        let t_arrival = msgs.get(sim.next_msg).map_or(f64::INFINITY, |m| m.arrival);
        let t_event = sim.events.peek().map_or(f64::INFINITY, |e| e.at);
        let t = t_event.min(next_sample).min(next_tick).min(t_arrival);
        if t > end {
            break;
        }
        if t_event <= t {
            let Some(ev) = sim.events.pop() else { break };
            match ev.kind {
                Kind::Done(p) => sim.complete(ev.at, p),
                Kind::Ready(p) => sim.pod_ready(ev.at, p),
            }
        } else if next_sample <= t {
            // Statistics sample, and the chart's points.
            let s = Sample {
                ready: sim.queue.len() as u64,
                unacked: sim.in_flight,
                consumers: sim.consumers(),
                published: sim.published,
                delivered: sim.delivered,
                acked: sim.acked,
            };
            if s.published != s.acked + s.unacked + s.ready || s.delivered != s.acked + s.unacked {
                out.conservation_violations += 1;
            }
            out.max_backlog = out.max_backlog.max(s.ready + s.unacked);
            sim.samples.push(s);
            if next_sample >= next_point {
                out.series.push(Point {
                    t: next_sample,
                    arrivals_per_s: bin_arrivals as f64 / sample_every,
                    backlog: s.ready + s.unacked,
                    replicas: sim.live,
                });
                bin_arrivals = 0;
                next_point += sample_every;
            }
            next_sample += 1.0;
        } else if next_tick <= t {
            let desired = {
                let view = View { sim: &sim, now: t };
                scaler.tick(&view)
            }
            .clamp(0, i32::MAX);
            if desired != sim.live {
                if desired > sim.live && surge_at.is_none_or(|s| t >= s) {
                    out.scale_ups.push(t);
                }
                out.scale_changes += 1;
                sim.scale_to(t, desired, false);
            }
            next_tick += period;
        } else {
            let i = sim.next_msg;
            sim.next_msg += 1;
            sim.published += 1;
            bin_arrivals += 1;
            sim.queue.push_back(i);
            sim.dispatch(t);
        }
    }
    // Costs up to the end of the run.
    for p in &sim.pods {
        let until = p.ended.unwrap_or(end).min(end);
        out.replica_seconds += (until - p.created).max(0.0);
    }
    let c = f64::from(workload.concurrency.max(1));
    out.busy_seconds = msgs[..sim.next_msg].iter().map(|m| m.service).sum::<f64>() / c;
    out.final_backlog = sim.queue.len() as u64 + sim.in_flight;
    out.waits = msgs[..sim.next_msg]
        .iter()
        .zip(&sim.start)
        .map(|(m, s)| {
            if s.is_nan() {
                end - m.arrival
            } else {
                s - m.arrival
            }
        })
        .collect();
    out.started = sim.start.iter().filter(|s| !s.is_nan()).count();
    out
}

impl Sim<'_> {
    /// Connected consumers: running replicas, and terminating ones still finishing.
    fn consumers(&self) -> u32 {
        self.running + self.terminating
    }

    fn push(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Ev {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn dispatch(&mut self, t: f64) {
        while !self.queue.is_empty() {
            let Some(p) = self.free.pop() else { return };
            if self.pods[p].state != PodState::Running {
                continue; // a slot of a replica that has since gone
            }
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            self.start[i] = t;
            self.pods[p].busy += 1;
            self.in_flight += 1;
            self.delivered += 1;
            let done = t + self.msgs[i].service;
            self.push(done, Kind::Done(p));
        }
    }

    fn complete(&mut self, t: f64, p: usize) {
        self.in_flight -= 1;
        self.acked += 1;
        let pod = &mut self.pods[p];
        pod.busy -= 1;
        match pod.state {
            PodState::Running => {
                self.free.push(p);
                self.dispatch(t);
            }
            PodState::Terminating if pod.busy == 0 => {
                pod.state = PodState::Gone;
                pod.ended = Some(t);
                self.terminating -= 1;
            }
            _ => {}
        }
    }

    fn pod_ready(&mut self, t: f64, p: usize) {
        if self.pods[p].state != PodState::Starting {
            return;
        }
        self.pods[p].state = PodState::Running;
        self.running += 1;
        for _ in 0..self.workload.concurrency {
            self.free.push(p);
        }
        self.dispatch(t);
    }

    fn scale_to(&mut self, t: f64, n: i32, at_start: bool) {
        while self.live < n {
            let ready_at = if at_start {
                t
            } else {
                t + self.workload.startup_delay
            };
            self.pods.push(Pod {
                created: t,
                ready_at,
                ended: None,
                state: PodState::Starting,
                busy: 0,
            });
            let id = self.pods.len() - 1;
            self.live += 1;
            if at_start {
                self.pod_ready(t, id);
            } else {
                self.push(ready_at, Kind::Ready(id));
            }
        }
        while self.live > n {
            // Starting replicas first (newest first), then the least busy running one.
            let victim = self
                .pods
                .iter()
                .rposition(|p| p.state == PodState::Starting)
                .or_else(|| {
                    self.pods
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.state == PodState::Running)
                        .min_by_key(|(_, p)| p.busy)
                        .map(|(i, _)| i)
                });
            let Some(v) = victim else { break };
            let pod = &mut self.pods[v];
            if pod.state == PodState::Running {
                self.running -= 1;
            }
            if pod.busy == 0 {
                pod.state = PodState::Gone;
                pod.ended = Some(t);
            } else {
                pod.state = PodState::Terminating;
                self.terminating += 1;
            }
            self.live -= 1;
        }
    }
}
