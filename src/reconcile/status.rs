//! Pure pieces of the status a tick writes.

use crate::core::conditions::rfc3339;
use crate::core::observation::Observation;
use crate::spec::api::ObservationStatus;

/// The observation as shown in status.
pub fn observation_status(obs: &Observation) -> ObservationStatus {
    ObservationStatus {
        backlog: obs.backlog,
        ready: obs.ready,
        unacked: obs.unacked,
        consumers: obs.consumers,
        publish_rate: obs.publish_rate.map(round2),
        deliver_rate: obs.deliver_rate.map(round2),
        ack_rate: obs.ack_rate.map(round2),
        consumer_utilisation: obs.consumer_utilisation.map(round2),
        observed_at: rfc3339(obs.observed_at),
    }
}

fn round2(v: f64) -> f64 {
    if v.is_finite() {
        (v * 100.0).round() / 100.0
    } else {
        0.0
    }
}
