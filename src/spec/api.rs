//! The `ScaledConsumer` custom resource (`nerite.dev/v1alpha1`).
//!
//! The schema published in `crds/` is generated from these types (`nerite crd`); the
//! CEL rules below are enforced by the API server, and [`crate::spec::validate`] checks the
//! same constraints again in code for clusters or clients that bypass them.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern every duration field must match: one or more `<number><unit>` groups, units
/// `ms`, `s`, `m`, `h` (for example `500ms`, `5s`, `1m30s`, `2h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Keeps a message-queue consumer workload sized to its queue.
///
/// nerite polls the broker named in `source`, decides how many replicas the workload in
/// `scaleTargetRef` needs, and sets them through the workload's `/scale` subresource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nerite.dev",
    version = "v1alpha1",
    kind = "ScaledConsumer",
    plural = "scaledconsumers",
    singular = "scaledconsumer",
    shortname = "scon",
    category = "nerite",
    namespaced,
    status = "ScaledConsumerStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.source"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","jsonPath":".status.lastObservation.backlog"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.fallback) || !has(self.fallback.replicas) || (self.fallback.replicas >= self.minReplicas && self.fallback.replicas <= self.maxReplicas)").message("fallback.replicas must lie within [minReplicas, maxReplicas]"))]
#[serde(rename_all = "camelCase")]
pub struct ScaledConsumerSpec {
    /// The workload to scale. Any kind that has a `/scale` subresource works
    /// (Deployment, StatefulSet, custom resources that declare one).
    pub scale_target_ref: ScaleTargetRef,

    /// Lowest replica count nerite sets. `0` allows scale to zero (see
    /// `behavior.activationBacklog` and `behavior.scaleToZeroCooldown`).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Highest replica count nerite sets.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// While true nerite keeps observing and reporting but never changes the replica count.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// The queue to watch. Exactly one broker must be set.
    pub source: SourceSpec,

    /// What "enough replicas" means.
    pub objective: ObjectiveSpec,

    /// How fast and how often nerite changes the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<BehaviorSpec>,

    /// What to do while the source cannot be read. Missing data never lowers the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
}

fn default_min_replicas() -> i32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reference to the scaled workload, in the ScaledConsumer's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the workload, e.g. `apps/v1`.
    #[schemars(length(min = 1))]
    pub api_version: String,
    /// Kind of the workload, e.g. `Deployment`.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The broker to observe. Exactly one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.rabbitmq), has(self.sqs), has(self.kafka)].filter(x, x).size() == 1").message("exactly one source must be set (supported: rabbitmq, sqs, kafka)"))]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// A RabbitMQ queue, read through the management HTTP API or through AMQP alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqSource>,
    /// An Amazon SQS queue (depth from GetQueueAttributes), with optional dead-letter
    /// management and redrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsSource>,
    /// A Kafka consumer group: lag from committed offsets, partition-aware replicas,
    /// optional partition growth and dead-letter-topic redrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
    /// Source kinds this version does not support. The schema never admits them (a cluster
    /// prunes or refuses them); kept here so validation in code can name them when a client
    /// bypasses the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

impl SourceSpec {
    /// Short human description used in status and printer columns.
    pub fn describe(&self) -> String {
        if let Some(q) = &self.sqs {
            let name = q.queue_url.rsplit('/').next().unwrap_or_default();
            return format!("sqs:{name}");
        }
        if let Some(k) = &self.kafka {
            return format!("kafka:{}", k.topic_names().join(","));
        }
        match &self.rabbitmq {
            Some(r) => format!("rabbitmq:{}", r.queue),
            None => "none".to_string(),
        }
    }
}

/// A RabbitMQ queue, observed through the management plugin's HTTP API (`managementUrl`) or,
/// for brokers without it, through AMQP alone (`amqpUrl`: ready and consumer counts only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.managementUrl), has(self.amqpUrl)].filter(x, x).size() == 1").message("exactly one of managementUrl and amqpUrl must be set"))]
#[x_kube(validation = Rule::new("!has(self.managementUrl) || self.managementUrl.startsWith('http://') || self.managementUrl.startsWith('https://')").message("managementUrl must be an http:// or https:// URL"))]
#[x_kube(validation = Rule::new("!has(self.amqpUrl) || self.amqpUrl.startsWith('amqp://') || self.amqpUrl.startsWith('amqps://')").message("amqpUrl must be an amqp:// or amqps:// URL"))]
#[x_kube(validation = Rule::new("!has(self.amqpUrl) || !has(self.prefetch)").message("prefetch needs managementUrl: through amqpUrl nerite sees no unacknowledged messages and no ack rate"))]
#[x_kube(validation = Rule::new("!has(self.amqpUrl) || !has(self.deadLetter)").message("deadLetter (dead-lettering and redrive) needs managementUrl: it is managed through the management API"))]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqSource {
    /// Base URL of the management API, e.g. `http://rabbitmq.default.svc:15672`.
    /// Must not contain credentials: use `credentialsSecretRef`. Exactly one of
    /// `managementUrl` and `amqpUrl` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub management_url: Option<String>,
    /// AMQP-only mode, for brokers without the management plugin:
    /// `amqp://host[:port]` or `amqps://host[:port]`, e.g. `amqp://rabbitmq.default.svc:5672`.
    /// nerite reads the queue with a passive declare, which gives the ready count and the
    /// consumer count only: no unacknowledged count, no rates, so no prefetch, no
    /// dead-lettering and no redrive (see docs/rabbitmq.md). Must not contain credentials
    /// or a vhost: use `credentialsSecretRef` and `vhost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub amqp_url: Option<String>,
    /// Virtual host of the queue.
    #[serde(default = "default_vhost")]
    #[schemars(length(min = 1))]
    pub vhost: String,
    /// Queue name.
    #[schemars(length(min = 1, max = 255))]
    pub queue: String,
    /// Secret (in the ScaledConsumer's namespace) holding the user nerite logs in as
    /// (management API or AMQP).
    pub credentials_secret_ref: SecretKeysRef,
    /// Whether delivered-but-unacknowledged messages count toward the backlog
    /// (KEDA's `QueueLength` mode counts them). Default true. Has no effect with `amqpUrl`,
    /// which sees ready messages only.
    #[serde(default = "default_true")]
    pub include_unacked: bool,
    /// Prefetch tuning: recommend (or apply) a consumer prefetch that fits the measured
    /// processing speed. See docs/rabbitmq.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<PrefetchSpec>,
    /// Dead-lettering set up by nerite on the queue, and redrive of the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
}

/// Annotation that triggers a redrive like `deadLetter.redrive.requestId` does, on every
/// broker (the spec field wins when both are set). The value follows the same rule as
/// `requestId` ([`REQUEST_ID_PATTERN`]).
pub const REDRIVE_ANNOTATION: &str = "nerite.dev/redrive-request";

/// Annotation that cancels the redrive of the request id it names, whether the annotation or
/// `deadLetter.redrive.requestId` started it.
pub const REDRIVE_CANCEL_ANNOTATION: &str = "nerite.dev/redrive-cancel";

/// What a redrive `requestId` (and the annotations' values) must match, 1–63 characters.
pub const REQUEST_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";
/// Longest redrive `requestId`.
pub const REQUEST_ID_MAX: usize = 63;

/// How nerite treats the consumers' prefetch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PrefetchMode {
    /// Do nothing.
    #[default]
    Off,
    /// Compute and report a recommendation in status; change nothing.
    Recommend,
    /// Also deliver the recommendation to the consumers (`deliverTo`), with hysteresis.
    Apply,
}

/// Prefetch tuning for the consumers of the queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("prefetch.min must not exceed prefetch.max"))]
#[x_kube(validation = Rule::new("self.mode != 'Apply' || has(self.deliverTo)").message("prefetch.deliverTo is required when mode is Apply"))]
#[serde(rename_all = "camelCase")]
pub struct PrefetchSpec {
    /// `Off` (default), `Recommend` or `Apply`.
    #[serde(default)]
    pub mode: PrefetchMode,
    /// Lowest prefetch nerite recommends. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub min: Option<i32>,
    /// Highest prefetch nerite recommends. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max: Option<i32>,
    /// Where `Apply` writes the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_to: Option<PrefetchDelivery>,
    /// `Apply` changes the value only when the recommendation differs from the current
    /// prefetch by at least this many percent. Default 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_change_percent: Option<i32>,
    /// `Apply` changes the value at most once per this interval (a pod-template change
    /// restarts the consumers). Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("prefetch.minInterval must be at least 1s"))]
    pub min_interval: Option<String>,
}

/// Where the prefetch value goes. Exactly one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.env), has(self.configMap)].filter(x, x).size() == 1").message("exactly one of deliverTo.env and deliverTo.configMap must be set"))]
#[serde(rename_all = "camelCase")]
pub struct PrefetchDelivery {
    /// An environment variable on a container of the target's pod template (changing it
    /// rolls the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<PrefetchEnv>,
    /// A key in a ConfigMap in the same namespace, for consumers that reload it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<PrefetchConfigMapKey>,
}

/// An environment variable of one container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchEnv {
    /// Container name in the pod template.
    #[schemars(length(min = 1, max = 63))]
    pub container: String,
    /// Variable name, e.g. `PREFETCH_COUNT`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchConfigMapKey {
    /// ConfigMap name (created when missing).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the prefetch, e.g. `prefetch`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Dead-lettering of the source queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Dead-letter queue. Default `<queue>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: Option<String>,
    /// Dead-letter exchange (a durable direct exchange). Default `<queue>.dlx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exchange: Option<String>,
    /// Routing key used for dead-lettered messages and the DLQ binding. Default: the DLQ
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub routing_key: Option<String>,
    /// Quorum queues only: deliveries after which a message is dead-lettered
    /// (`delivery-limit`). Ignored (with a status note) for classic queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deliveries: Option<i32>,
    /// Move dead-lettered messages back to the source queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveSpec>,
}

/// A redrive request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveSpec {
    /// Each new value starts exactly one redrive of the DLQ's current content (never two
    /// for the same value): a date, a ticket number, a counter. 1–63 characters: letters,
    /// digits, `.`, `_`, `-`, starting with a letter or digit.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub request_id: String,
    /// Most messages in flight (unconfirmed) at once; throttles the move. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_in_flight: Option<i32>,
    /// Rate limit: move at most this many messages a second. The move then runs in
    /// batches, one shovel each moving exactly `rate × pollInterval` messages, started no
    /// sooner than the rate allows. Unset: one shovel moves everything as fast as confirms
    /// come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_messages_per_second: Option<i32>,
    /// Stop the redrive of this `requestId`: its shovel is removed (a rate-limited batch in
    /// progress may finish first) and `moved` reports what left the dead-letter queue.
    /// Messages already moved stay moved.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cancel: bool,
}

fn default_vhost() -> String {
    "/".to_string()
}

fn default_true() -> bool {
    true
}

/// Keys of a Secret in the ScaledConsumer's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeysRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the user name. Default `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key holding the password. Default `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_string()
}

fn default_password_key() -> String {
    "password".to_string()
}

/// The scaling objective.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveSpec {
    /// Messages one replica should hold (KEDA's `value` for queue length): the count is
    /// at least `ceil(backlog / backlogPerReplica)`.
    #[schemars(range(min = 1))]
    pub backlog_per_replica: i64,
    /// Optional drain-time objective (e.g. `2m`): enough replicas to keep up with the
    /// arrival rate and clear the backlog within this time, using measured per-replica
    /// throughput once known. The larger of the two objectives wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("maxDrainTime must be at least 1s"))]
    pub max_drain_time: Option<String>,
    /// Optional message-wait objective (e.g. `90s`): size the fleet so that messages wait
    /// at most this long, from the measured per-replica throughput, the smoothed arrival
    /// rate and its trend. Once the throughput is measured it replaces the backlog
    /// objective, so the queue may hold work instead of idle replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('24h')").message("maxMessageWait must be between 10s and 24h"))]
    pub max_message_wait: Option<String>,
}

/// Timing and step limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorSpec {
    /// How often the source is read. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("pollInterval must be between 1s and 1h"))]
    pub poll_interval: Option<String>,
    /// Limits on increases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Limits on decreases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
    /// At zero replicas, scale to one only when the backlog exceeds this. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub activation_backlog: Option<i64>,
    /// With `minReplicas: 0`, scale to zero only after the backlog has been at or below
    /// `activationBacklog` this long. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("scaleToZeroCooldown must be a duration"))]
    pub scale_to_zero_cooldown: Option<String>,
    /// How long a new replica takes to start consuming. `maxMessageWait` looks this far
    /// ahead. Default `20s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1h')").message("startupDelay must be at most 1h"))]
    pub startup_delay: Option<String>,
}

/// Stabilization and step limit for one direction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Window over which recommendations are considered before changing the count:
    /// scale-up uses the lowest recommendation of the window, scale-down the highest.
    /// Defaults: `0s` up, `5m` down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1h')").message("stabilizationWindow must be at most 1h"))]
    pub stabilization_window: Option<String>,
    /// Largest change in replicas per scaling action. Unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step: Option<i32>,
}

/// Behaviour while the source cannot be read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.mode != 'Fixed' || has(self.replicas)").message("fallback.replicas is required when mode is Fixed"))]
#[serde(rename_all = "camelCase")]
pub struct FallbackSpec {
    /// `Hold` (default) keeps the current count; `Fixed` raises the count to `replicas`
    /// after `afterFailures` consecutive failed reads (it never lowers it).
    #[serde(default)]
    pub mode: FallbackMode,
    /// Replica floor used by `Fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Consecutive failed reads before `Fixed` applies. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub after_failures: Option<i32>,
}

/// Fallback mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FallbackMode {
    /// Keep the current replica count.
    #[default]
    Hold,
    /// Raise the count to `fallback.replicas` (never lower it).
    Fixed,
}

/// Observed state, written by nerite only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaledConsumerStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SourceReachable`, `ScalingLimited`; with the features in use also
    /// `DeadLetterReady`, `Redrive`, `Prefetch` and `PartitionGrowth`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Short description of the source, e.g. `rabbitmq:orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Replica count of the target when last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Replica count nerite wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When nerite last changed the count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// The last successful read of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observation: Option<ObservationStatus>,
    /// One-line explanation of the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Consecutive failed reads of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<i32>,
    /// Smoothed messages per second one replica processes, once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_replica_throughput: Option<f64>,
    /// RabbitMQ extras: prefetch, dead-lettering, redrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqStatus>,
    /// SQS source details: depth parts, the dead-letter policy nerite manages, redrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsStatus>,
    /// Kafka source details: lag per partition, rates, partition growth, dead-letter topic
    /// and redrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaStatus>,
}

/// What nerite manages on the RabbitMQ side.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<PrefetchStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveStatus>,
}

/// Prefetch as measured and recommended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchStatus {
    /// Prefetch the queue's consumers use, as the broker reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<i32>,
    /// nerite's recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended: Option<i32>,
    /// Why (the measurements behind the recommendation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Value nerite last delivered (`Apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<i32>,
    /// When nerite last delivered a value (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<String>,
}

/// The dead-letter set-up in force.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterStatus {
    /// Dead-letter queue.
    pub queue: String,
    /// Dead-letter exchange.
    pub exchange: String,
    /// Routing key of dead-lettered messages.
    pub routing_key: String,
    /// Type of the source queue (`classic`, `quorum`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_type: Option<String>,
    /// Name of nerite's policy on the source queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy's definition, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_definition: Option<String>,
    /// Messages in the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    /// Notes (e.g. `maxDeliveries` ignored on a classic queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a redrive, the same on every broker.
///
/// Statuses written by earlier versions are read with their old names mapped: `Starting` →
/// `Pending`, `Completed` → `Succeeded`, `Interrupted` → `Failed`.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RedrivePhase {
    /// Recorded; nothing moved yet.
    #[default]
    Pending,
    /// Messages are moving.
    Running,
    /// Ended: everything the request covered was moved (see `message` for what was left).
    Succeeded,
    /// Ended early; `reason` and `message` say why. Unmoved messages stay dead-lettered.
    Failed,
    /// Stopped by `cancel` or the `nerite.dev/redrive-cancel` annotation.
    Cancelled,
}

impl RedrivePhase {
    pub const ALL: [RedrivePhase; 5] = [
        RedrivePhase::Pending,
        RedrivePhase::Running,
        RedrivePhase::Succeeded,
        RedrivePhase::Failed,
        RedrivePhase::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedrivePhase::Pending => "Pending",
            RedrivePhase::Running => "Running",
            RedrivePhase::Succeeded => "Succeeded",
            RedrivePhase::Failed => "Failed",
            RedrivePhase::Cancelled => "Cancelled",
        }
    }

    /// Pending or Running: the request is not finished (a restart resumes or follows it).
    pub fn is_active(self) -> bool {
        matches!(self, RedrivePhase::Pending | RedrivePhase::Running)
    }

    /// A recorded phase, including the names earlier versions wrote. Anything unknown reads
    /// as `Failed`: a finished request is never started again by mistake.
    pub fn from_recorded(s: &str) -> RedrivePhase {
        match s {
            "Pending" | "Starting" => RedrivePhase::Pending,
            "Running" => RedrivePhase::Running,
            "Succeeded" | "Completed" => RedrivePhase::Succeeded,
            "Cancelled" => RedrivePhase::Cancelled,
            _ => RedrivePhase::Failed,
        }
    }

    /// A status without a phase (an older status whose `state` the API server pruned): read
    /// as finished, so it is never resumed or run twice.
    fn missing() -> RedrivePhase {
        RedrivePhase::Failed
    }
}

impl std::fmt::Display for RedrivePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RedrivePhase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RedrivePhase::from_recorded(&s))
    }
}

/// What every broker's redrive status has, flattened into `status.rabbitmq.redrive`,
/// `status.sqs.redrive` and `status.kafka.redrive` (broker-specific fields sit beside it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveProgress {
    /// The request this describes (`deadLetter.redrive.requestId` or the
    /// `nerite.dev/redrive-request` annotation).
    pub request_id: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Cancelled`. (A status from an older
    /// version without one reads as `Failed`: never resumed, never run twice.)
    #[serde(default = "RedrivePhase::missing", alias = "state")]
    pub phase: RedrivePhase,
    /// When it was recorded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Messages (Kafka: records) moved back so far.
    #[serde(default)]
    pub moved: i64,
    /// One line on the outcome or the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Failed`: why, in CamelCase (the `Redrive` condition's reason), e.g.
    /// `ShovelPluginMissing`, `RedriveInterrupted`, `QueueNotFound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RedriveProgress {
    /// A request just recorded: `Pending`, started now.
    pub fn pending(request_id: &str, now: &str) -> RedriveProgress {
        RedriveProgress {
            request_id: request_id.to_owned(),
            phase: RedrivePhase::Pending,
            started_at: Some(now.to_owned()),
            ..RedriveProgress::default()
        }
    }
}

/// Progress and result of the last redrive request (RabbitMQ).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveStatus {
    #[serde(flatten)]
    pub progress: RedriveProgress,
    /// Name of the dynamic shovel doing the move (absent when none runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shovel: Option<String>,
    /// The shovel in `shovel` is recorded but its creation not yet confirmed: a restart that
    /// finds no such shovel cannot tell whether it ran, and ends the request `Failed`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub creating: bool,
    /// Messages in the DLQ when the request started (what the shovel moves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_depth_at_start: Option<i64>,
    /// Messages left in the DLQ when the request ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_depth_at_end: Option<i64>,
    /// Rate-limited redrive: the number of the current (or last) batch, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
    /// Rate-limited redrive: messages the current batch's shovel moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
    /// Rate-limited redrive: when the current batch started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_started_at: Option<String>,
}

pub use crate::core::conditions::Condition;

/// What the last successful read of the source saw.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservationStatus {
    /// Messages counted toward the objective (ready, plus unacked when included).
    pub backlog: i64,
    /// Messages ready for delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i64>,
    /// Messages delivered but not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacked: Option<i64>,
    /// Consumers attached to the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// Messages published per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<f64>,
    /// Messages delivered per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_rate: Option<f64>,
    /// Messages acknowledged per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_rate: Option<f64>,
    /// Fraction of time the queue could deliver to its consumers (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_utilisation: Option<f64>,
    /// When the broker was read (RFC 3339).
    pub observed_at: String,
}

// ---------------------------------------------------------------------------------------
// Amazon SQS

/// An Amazon SQS queue. Depth is read with one `GetQueueAttributes` per poll, counted as
/// KEDA does: visible + in-flight (`includeInFlight`, default true) + delayed
/// (`includeDelayed`, default false).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.queueUrl.startsWith('https://') || self.queueUrl.startsWith('http://')").message("queueUrl must be an http:// or https:// URL"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || self.endpoint.startsWith('https://') || self.endpoint.startsWith('http://')").message("endpoint must be an http:// or https:// URL"))]
#[serde(rename_all = "camelCase")]
pub struct SqsSource {
    /// Queue URL, e.g. `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`.
    #[schemars(length(min = 1, max = 1024))]
    pub queue_url: String,
    /// AWS region of the queue, e.g. `eu-west-1`.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// Endpoint override (VPC endpoint, a local SQS-compatible server). Default: the
    /// region's public endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Static credentials from a Secret in the ScaledConsumer's namespace. When unset, the
    /// default AWS chain is used (environment, IRSA web identity, ECS/EC2 instance roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<AwsCredentialsRef>,
    /// Count in-flight (received, not yet deleted) messages. Default true (KEDA's
    /// `scaleOnInFlight`).
    #[serde(default = "default_true")]
    pub include_in_flight: bool,
    /// Count delayed messages. Default false (KEDA's `scaleOnDelayed`).
    #[serde(default)]
    pub include_delayed: bool,
    /// Dead-letter queue and redrive policy managed by nerite. Removing this section
    /// removes the policy nerite set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SqsDeadLetter>,
}

/// Keys of a Secret holding an AWS access key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentialsRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the access key id. Default `accessKeyId`.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key. Default `secretAccessKey`.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "accessKeyId".to_string()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".to_string()
}

/// The dead-letter queue of an SQS source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(r"self.queue.startsWith('arn:') ? self.queue.matches('^arn:aws[a-z-]*:sqs:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}(\\.fifo)?$') : self.queue.matches('^[A-Za-z0-9_-]{1,80}(\\.fifo)?$')").message("deadLetter.queue must be a queue name or an SQS ARN (arn:aws:sqs:REGION:ACCOUNT:NAME)"))]
#[serde(rename_all = "camelCase")]
pub struct SqsDeadLetter {
    /// The DLQ: a queue name (same account and region as the source) or an ARN.
    #[schemars(length(min = 1, max = 256))]
    pub queue: String,
    /// Create the DLQ when it does not exist (FIFO when the source is FIFO). Default false.
    #[serde(default)]
    pub create: bool,
    /// Receives after which SQS moves a message to the DLQ (1–1000).
    #[schemars(range(min = 1, max = 1000))]
    pub max_receive_count: i32,
    /// Move the DLQ's messages back to the source, once per `requestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<SqsRedrive>,
}

/// A declarative redrive request: each new `requestId` moves the DLQ's messages back to
/// the source once; progress is kept in `status.sqs.redrive`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsRedrive {
    /// Identifies one redrive. A redrive runs once per id; set a new id to run another.
    /// 1–63 characters: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub request_id: String,
    /// `Aws` (StartMessageMoveTask) or `Client` (receive → send → delete by nerite).
    /// Default: `Aws` on AWS endpoints, `Client` elsewhere. `Aws` falls back to `Client`
    /// when the endpoint refuses or does not implement move tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SqsRedriveMode>,
    /// Upper bound on messages moved per second (1–500). Default: `Aws` lets SQS choose,
    /// `Client` moves up to 500/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 500))]
    pub max_messages_per_second: Option<i32>,
    /// Stop the redrive of this `requestId` (messages already moved stay moved).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cancel: bool,
}

/// How a redrive moves messages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SqsRedriveMode {
    /// SQS moves the messages itself (StartMessageMoveTask).
    Aws,
    /// nerite receives from the DLQ, sends to the source, deletes what was sent.
    Client,
}

/// What nerite sees and manages on an SQS source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsStatus {
    /// `ApproximateNumberOfMessages` at the last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible: Option<i64>,
    /// `ApproximateNumberOfMessagesNotVisible` (received, not yet deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// `ApproximateNumberOfMessagesDelayed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<i64>,
    /// The source queue's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_arn: Option<String>,
    /// The dead-letter policy nerite manages (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SqsDeadLetterStatus>,
    /// The last redrive (written by the redrive itself as it progresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<SqsRedriveStatus>,
}

/// The dead-letter setup in effect.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsDeadLetterStatus {
    /// The DLQ's URL.
    pub queue_url: String,
    /// The DLQ's ARN.
    pub queue_arn: String,
    /// The source's `RedrivePolicy` as SQS reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_policy: Option<String>,
    /// The DLQ's `RedriveAllowPolicy` as nerite last set or read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_allow_policy: Option<String>,
    /// How often nerite restored a policy someone else changed.
    #[serde(default)]
    pub drift_repairs: i64,
    /// When nerite last restored a changed policy (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair_time: Option<String>,
}

/// Progress of a redrive, persisted as it goes so a restarted nerite resumes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsRedriveStatus {
    #[serde(flatten)]
    pub progress: RedriveProgress,
    /// `Aws` or `Client`: how the messages are being moved.
    pub mode: String,
    /// Messages that could not be sent (left in the DLQ).
    #[serde(default)]
    pub failed: i64,
    /// Messages sent again after an interruption left it unknown whether an earlier send
    /// went through: at most this many duplicates reached the source.
    #[serde(default)]
    pub duplicates: i64,
    /// The SQS move task handle (`Aws` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_handle: Option<String>,
    /// The batch in progress (`Client` mode): DLQ message ids about to be sent
    /// (`Sending`) or sent but not yet deleted from the DLQ (`Sent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<SqsRedriveJournal>,
    /// DLQ message ids that could not be sent (at most 100 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_message_ids: Vec<String>,
}

/// The batch a client-mode redrive is working on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsRedriveJournal {
    /// `Sending` or `Sent`.
    pub phase: String,
    /// DLQ message ids of the batch.
    pub message_ids: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Kafka

/// Topic names Kafka accepts.
pub const KAFKA_TOPIC_PATTERN: &str = r"^[A-Za-z0-9._-]{1,249}$";

/// A Kafka consumer group and its topics. nerite reads the group's committed offsets and
/// the partitions' log-start and log-end offsets; lag is log-end minus committed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.topic), has(self.topics)].filter(x, x).size() == 1").message("exactly one of topic and topics must be set"))]
#[x_kube(validation = Rule::new("!(has(self.allowIdleConsumers) && self.allowIdleConsumers && has(self.limitToPartitionsWithLag) && self.limitToPartitionsWithLag)").message("allowIdleConsumers and limitToPartitionsWithLag exclude each other"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// Brokers to bootstrap from, `host:port`.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")))]
    pub bootstrap_servers: Vec<String>,
    /// The topic the group consumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub topic: Option<String>,
    /// Several topics consumed by the group (lag and partitions are summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$")))]
    pub topics: Option<Vec<String>>,
    /// The consumer group whose committed offsets measure the lag.
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: String,
    /// Partitions without a committed offset: `Latest` (default, as Kafka's
    /// `auto.offset.reset`) counts no lag, `Earliest` counts every retained record.
    #[serde(default)]
    pub offset_reset_policy: KafkaOffsetReset,
    /// Allow more replicas than partitions (they would idle). Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_idle_consumers: bool,
    /// Cap replicas at the number of partitions that have lag. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub limit_to_partitions_with_lag: bool,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Grow the topic's partitions when replicas would otherwise be capped and the lag does
    /// not drain (opt-in; without it nerite only recommends). See docs/kafka.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_growth: Option<KafkaPartitionGrowth>,
    /// A dead-letter topic: its depth in status, and redrive back to the source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<KafkaDeadLetter>,
}

impl KafkaSource {
    /// The topics, from `topic` or `topics`.
    pub fn topic_names(&self) -> Vec<String> {
        match (&self.topic, &self.topics) {
            (Some(t), _) => vec![t.clone()],
            (None, Some(ts)) => ts.clone(),
            (None, None) => Vec::new(),
        }
    }
}

/// Where a group without a committed offset starts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KafkaOffsetReset {
    #[default]
    Latest,
    Earliest,
}

/// TLS settings. Without `caSecretRef` the public web PKI roots are trusted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// CA bundle (PEM) in a Secret key, e.g. `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate and key (PEM) for mutual TLS, e.g. a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<ClientCertRef>,
    /// Name to verify in the brokers' certificates. Default: the host dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// One key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret holding a client certificate and its key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default `tls.crt`.
    #[serde(default = "default_cert_key")]
    pub cert_key: String,
    /// Default `tls.key`.
    #[serde(default = "default_key_key")]
    pub key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".to_string()
}

fn default_key_key() -> String {
    "tls.key".to_string()
}

/// SASL login.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// `Plain`, `ScramSha256` or `ScramSha512`.
    pub mechanism: KafkaSaslMechanism,
    /// Secret with the user name and password (keys `username`, `password` by default).
    pub credentials_secret_ref: SecretKeysRef,
}

/// SASL mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KafkaSaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

/// Opt-in partition growth.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaPartitionGrowth {
    /// Let nerite increase the partition count (CreatePartitions). Default false: only
    /// recommend in status.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_increase: bool,
    /// Never more partitions per topic than this.
    #[schemars(range(min = 1, max = 10000))]
    pub max_partitions: i32,
    /// At most one increase per this long. Default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("partitionGrowth.cooldown must be at least 1m"))]
    pub cooldown: Option<String>,
}

/// The dead-letter topic of a Kafka source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaDeadLetter {
    /// The dead-letter topic (must exist).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Copy its records back to the source topic, once per `requestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<KafkaRedrive>,
}

/// A declarative redrive of the dead-letter topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRedrive {
    /// Each new value copies the records that reached the dead-letter topic since the
    /// previous request (all retained ones for the first) back once, never twice for the
    /// same value. 1–63 characters: letters, digits, `.`, `_`, `-`, starting with a letter
    /// or digit.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub request_id: String,
    /// Where records go. Default: the source topic (required with several topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub target_topic: Option<String>,
    /// Most records copied per second (1–1000000; the same field name as on the other
    /// brokers). Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_messages_per_second: Option<i32>,
    /// Stop the running redrive of this `requestId` (records already copied stay).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cancel: bool,
}

/// What nerite sees on a Kafka source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaStatus {
    /// Partitions of the source topics.
    #[serde(default)]
    pub partitions: i32,
    /// Partitions with lag.
    #[serde(default)]
    pub lagging_partitions: i32,
    /// Σ lag.
    #[serde(default)]
    pub total_lag: i64,
    /// Partitions without a committed offset.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub partitions_without_commit: i32,
    /// Records deleted by retention before the group read them (not counted as lag).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub retention_skipped: i64,
    /// Records produced per second (log-end progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_rate: Option<f64>,
    /// Records consumed per second (committed-offset progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_rate: Option<f64>,
    /// Lag ÷ consume rate, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_time_lag_seconds: Option<f64>,
    /// Per partition (the first 64 by topic and partition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_partition: Vec<KafkaPartitionStatus>,
    /// True when `perPartition` lists only some partitions.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_partition_truncated: bool,
    /// Partition growth: recommendation and increases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_growth: Option<KafkaPartitionGrowthStatus>,
    /// The dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<KafkaDeadLetterStatus>,
    /// The last redrive (written by the redrive itself as it progresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<KafkaRedriveStatus>,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// One partition's offsets and lag.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaPartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// Absent when the group has no committed offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    pub lag: i64,
}

/// Partition growth as decided and done.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaPartitionGrowthStatus {
    /// Total partitions nerite recommends (absent when enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended: Option<i32>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last increase, e.g. `orders 4 → 8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_increase: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_increase_time: Option<String>,
    /// Increases made by nerite.
    #[serde(default)]
    pub increases: i64,
}

/// The dead-letter topic as last read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaDeadLetterStatus {
    pub topic: String,
    /// Records retained (Σ log-end − log-start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
}

/// Progress of a redrive, persisted as it goes so a restarted nerite resumes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRedriveStatus {
    #[serde(flatten)]
    pub progress: RedriveProgress,
    /// The topic records are copied to.
    pub target_topic: String,
    /// The consumer group (owned by nerite) holding the progress.
    pub group: String,
    /// Records in the dead-letter topic when the request started (what is copied).
    #[serde(default)]
    pub to_copy: i64,
    /// Records the target refused (they stay in the dead-letter topic; offsets listed in
    /// `failedOffsets`).
    #[serde(default)]
    pub failed: i64,
    /// Records copied again after an interruption left unknown whether an earlier copy
    /// went through (found on the target and therefore skipped are not counted).
    #[serde(default)]
    pub duplicates: i64,
    /// Records found already copied after an interruption, and skipped.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub skipped_already_copied: i64,
    /// Per dead-letter partition, where this request starts: the previous request's stop
    /// offset (records redriven before are not copied again), else the log start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub start_offsets: BTreeMap<String, i64>,
    /// Per dead-letter partition, the end offset at the start (copy up to it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stop_offsets: BTreeMap<String, i64>,
    /// The batch in progress: records being written and the target's end offsets before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<KafkaRedriveJournal>,
    /// `partition:offset` of refused records (at most 100 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_offsets: Vec<String>,
}

/// A batch that may or may not have reached the target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRedriveJournal {
    /// Dead-letter partition of the batch.
    pub partition: i32,
    /// Offsets `[from, to)` of the batch.
    pub from: i64,
    pub to: i64,
    /// Target partition → its end offset before the batch was written.
    #[serde(default)]
    pub target_ends: BTreeMap<String, i64>,
}
