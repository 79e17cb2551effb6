//! End-to-end tests against real servers started by the project's own scripts:
//! RabbitMQ (`e2e/rabbitmq.sh`, read through the management API and through AMQP), moto's
//! SQS (`e2e/moto.sh`), tansu's Kafka protocol (`e2e/kafka.sh`) and the in-repo fake
//! Kubernetes API server.
//!
//! One process runs every trial so that one RabbitMQ serves them all; trials that stop
//! their broker start a private one.

mod kafka;
mod leader;
mod leader_stall;
mod operator;
mod packaging;
mod rabbitmq_amqp;
mod rabbitmq_deadletter;
mod rabbitmq_prefetch;
mod rabbitmq_source;
mod sqs;
mod support;

use std::process::ExitCode;

use libtest_mimic::Arguments;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let env = support::Env::new();
    let mut trials = Vec::new();
    trials.extend(rabbitmq_source::trials(&env));
    trials.extend(rabbitmq_amqp::trials(&env));
    trials.extend(rabbitmq_deadletter::trials(&env));
    trials.extend(rabbitmq_prefetch::trials(&env));
    trials.extend(operator::trials(&env));
    trials.extend(leader::trials(&env));
    trials.extend(leader_stall::trials(&env));
    trials.extend(packaging::trials(&env));
    trials.extend(sqs::trials(&env));
    trials.extend(kafka::trials(&env));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit_code()
}
