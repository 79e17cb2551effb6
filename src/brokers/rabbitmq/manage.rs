//! Management-API operations beyond reading depths: queue details, the dead-letter topology
//! (exchange, queue, binding), policies, dynamic shovels and consumer prefetch.
//!
//! Every call goes through the same per-endpoint client and counters as the reads, and every
//! failure is typed: a refusal the user must fix ([`ManageError::Conflict`],
//! [`ManageError::PluginMissing`], [`ManageError::Refused`]) is told apart from a broker that
//! cannot be reached ([`ManageError::Source`]).

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Endpoint, ManagementApi, RabbitMqTarget, api_reason, classify_status, encode_segment, scrub,
};
use crate::core::error::SourceError;
use crate::core::observation::Credentials;

/// Why a management operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManageError {
    /// Transport, authentication or an unexpected answer.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An object exists with different properties (`inequivalent arg ...`).
    #[error("{what} exists with different settings: {reason}")]
    Conflict { what: String, reason: String },
    /// A plugin the operation needs is not enabled (e.g. `rabbitmq_shovel`).
    #[error("the {plugin} plugin is not enabled on the broker: {reason}")]
    PluginMissing {
        plugin: &'static str,
        reason: String,
    },
    /// The broker refused the request (permissions, validation).
    #[error("{what} refused (HTTP {status}): {reason}")]
    Refused {
        what: String,
        status: u16,
        reason: String,
    },
}

impl ManageError {
    /// CamelCase reason for conditions and Events; `conflict` names the object kind.
    pub fn reason(&self, conflict: &'static str) -> &'static str {
        match self {
            ManageError::Source(e) => e.reason(),
            ManageError::Conflict { .. } => conflict,
            ManageError::PluginMissing { .. } => "ShovelPluginMissing",
            ManageError::Refused {
                status: 401 | 403, ..
            } => "ManagementForbidden",
            ManageError::Refused { .. } => "ManagementRefused",
        }
    }
}

/// A source queue's type and arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDetails {
    /// `classic`, `quorum`, `stream`.
    pub queue_type: String,
    /// Name of the policy in effect (empty when none).
    pub policy: Option<String>,
}

/// A policy of a vhost.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Policy {
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub definition: serde_json::Map<String, Value>,
}

/// State of a dynamic shovel as `GET /api/shovels/{vhost}` shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum ShovelState {
    /// No shovel parameter by that name (never created, or finished and deleted itself).
    Absent,
    /// `starting` or `running`.
    Running,
    /// `terminated` (with the broker's reason).
    Terminated(String),
}

/// One management endpoint and vhost, with credentials.
pub struct Vhost<'a> {
    api: &'a ManagementApi,
    endpoint: Endpoint,
    vhost: String,
    credentials: Credentials,
}

impl<'a> Vhost<'a> {
    pub fn new(api: &'a ManagementApi, target: &RabbitMqTarget) -> Result<Self, SourceError> {
        Ok(Self {
            api,
            endpoint: Endpoint::parse(&target.management_url)?,
            vhost: target.vhost.clone(),
            credentials: target.credentials.clone(),
        })
    }

    fn v(&self) -> String {
        encode_segment(&self.vhost)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>), SourceError> {
        let client = self.api.client(&self.endpoint)?;
        let url = self.endpoint.api_url(path, query);
        let deadline = Instant::now() + self.api.timeout;
        self.api
            .request(
                &client,
                &self.endpoint,
                method,
                url,
                body,
                &self.credentials,
                deadline,
            )
            .await
    }

    /// Turn a non-success answer into a typed error about `what`.
    fn refusal(&self, what: &str, status: StatusCode, body: &[u8]) -> ManageError {
        let reason = scrub(
            api_reason(body).unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            &self.credentials,
        );
        let lower = reason.to_ascii_lowercase();
        if status == StatusCode::UNAUTHORIZED && lower.contains("login failed") {
            return ManageError::Source(SourceError::Unauthorized {
                endpoint: self.endpoint.key.clone(),
            });
        }
        if lower.contains("inequivalent arg") || lower.contains("precondition_failed") {
            return ManageError::Conflict {
                what: what.to_owned(),
                reason,
            };
        }
        if lower.contains("component shovel not found") {
            return ManageError::PluginMissing {
                plugin: "rabbitmq_shovel",
                reason,
            };
        }
        if status.is_server_error() {
            let probe = RabbitMqTarget {
                management_url: String::new(),
                vhost: self.vhost.clone(),
                queue: String::new(),
                include_unacked: true,
                credentials: self.credentials.clone(),
            };
            return ManageError::Source(classify_status(
                status,
                body,
                &self.endpoint.key,
                &probe,
                &self.credentials,
            ));
        }
        ManageError::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            reason,
        }
    }

    fn json(&self, what: &str, body: &[u8]) -> Result<Value, ManageError> {
        serde_json::from_slice(body).map_err(|e| {
            ManageError::Source(SourceError::Protocol {
                endpoint: self.endpoint.key.clone(),
                detail: format!("{what}: the answer is not JSON: {e}"),
            })
        })
    }

    /// Type and policy of a queue; `None` when it does not exist.
    pub async fn queue(&self, queue: &str) -> Result<Option<QueueDetails>, ManageError> {
        let what = format!("queue {queue:?}");
        let (status, body) = self
            .call(
                Method::GET,
                &format!("queues/{}/{}", self.v(), encode_segment(queue)),
                "columns=name,type,arguments,policy",
                None,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.refusal(&what, status, &body));
        }
        let v = self.json(&what, &body)?;
        let queue_type = v
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| v.pointer("/arguments/x-queue-type").and_then(Value::as_str))
            .unwrap_or("classic")
            .to_owned();
        let policy = v
            .get("policy")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        Ok(Some(QueueDetails { queue_type, policy }))
    }

    /// Declare a durable direct exchange (idempotent; a different existing one is a conflict).
    pub async fn declare_exchange(&self, name: &str) -> Result<(), ManageError> {
        let what = format!("dead-letter exchange {name:?}");
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("exchanges/{}/{}", self.v(), encode_segment(name)),
                "",
                Some(&json!({"type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}})),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refusal(&what, status, &body))
        }
    }

    /// Declare a durable queue of `queue_type` (idempotent; a different existing one is a
    /// conflict).
    pub async fn declare_queue(&self, name: &str, queue_type: &str) -> Result<(), ManageError> {
        let what = format!("dead-letter queue {name:?}");
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("queues/{}/{}", self.v(), encode_segment(name)),
                "",
                Some(&json!({"durable": true, "auto_delete": false, "arguments": {"x-queue-type": queue_type}})),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refusal(&what, status, &body))
        }
    }

    /// Bind `queue` to `exchange` with `routing_key` unless that binding exists.
    pub async fn ensure_binding(
        &self,
        exchange: &str,
        queue: &str,
        routing_key: &str,
    ) -> Result<(), ManageError> {
        let what = format!("binding of {queue:?} to {exchange:?}");
        let path = format!(
            "bindings/{}/e/{}/q/{}",
            self.v(),
            encode_segment(exchange),
            encode_segment(queue)
        );
        let (status, body) = self.call(Method::GET, &path, "", None).await?;
        if !status.is_success() {
            return Err(self.refusal(&what, status, &body));
        }
        let existing = self.json(&what, &body)?;
        let bound = existing.as_array().is_some_and(|list| {
            list.iter()
                .any(|b| b.get("routing_key").and_then(Value::as_str) == Some(routing_key))
        });
        if bound {
            return Ok(());
        }
        let (status, body) = self
            .call(
                Method::POST,
                &path,
                "",
                Some(&json!({"routing_key": routing_key, "arguments": {}})),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refusal(&what, status, &body))
        }
    }

    /// Policies of the vhost.
    pub async fn policies(&self) -> Result<Vec<Policy>, ManageError> {
        let (status, body) = self
            .call(Method::GET, &format!("policies/{}", self.v()), "", None)
            .await?;
        if !status.is_success() {
            return Err(self.refusal("policy list", status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ManageError::Source(SourceError::Protocol {
                endpoint: self.endpoint.key.clone(),
                detail: format!("the policy list is not the expected JSON: {e}"),
            })
        })
    }

    pub async fn put_policy(&self, p: &Policy) -> Result<(), ManageError> {
        let what = format!("policy {:?}", p.name);
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("policies/{}/{}", self.v(), encode_segment(&p.name)),
                "",
                Some(&json!({
                    "pattern": p.pattern,
                    "apply-to": p.apply_to,
                    "priority": p.priority,
                    "definition": p.definition,
                })),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refusal(&what, status, &body))
        }
    }

    /// Delete a policy; a missing one is fine.
    pub async fn delete_policy(&self, name: &str) -> Result<(), ManageError> {
        self.delete(
            &format!("policy {name:?}"),
            &format!("policies/{}/{}", self.v(), encode_segment(name)),
        )
        .await
    }

    async fn delete(&self, what: &str, path: &str) -> Result<(), ManageError> {
        let (status, body) = self.call(Method::DELETE, path, "", None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.refusal(what, status, &body))
        }
    }

    /// Create a dynamic shovel (`PUT /api/parameters/shovel/{vhost}/{name}`).
    pub async fn put_shovel(&self, name: &str, value: &Value) -> Result<(), ManageError> {
        let what = format!("shovel {name:?}");
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("parameters/shovel/{}/{}", self.v(), encode_segment(name)),
                "",
                Some(&json!({"value": value})),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refusal(&what, status, &body))
        }
    }

    pub async fn delete_shovel(&self, name: &str) -> Result<(), ManageError> {
        self.delete(
            &format!("shovel {name:?}"),
            &format!("parameters/shovel/{}/{}", self.v(), encode_segment(name)),
        )
        .await
    }

    /// Whether the shovel exists and how it runs.
    pub async fn shovel_state(&self, name: &str) -> Result<ShovelState, ManageError> {
        let what = format!("shovel {name:?}");
        let (status, body) = self
            .call(
                Method::GET,
                &format!("parameters/shovel/{}/{}", self.v(), encode_segment(name)),
                "",
                None,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            let reason = api_reason(&body).unwrap_or_default().to_ascii_lowercase();
            if reason.contains("component") {
                return Err(ManageError::PluginMissing {
                    plugin: "rabbitmq_shovel",
                    reason,
                });
            }
            return Ok(ShovelState::Absent);
        }
        if !status.is_success() {
            return Err(self.refusal(&what, status, &body));
        }
        // The parameter exists; its runtime state comes from the shovel status list.
        let (status, body) = self
            .call(Method::GET, &format!("shovels/{}", self.v()), "", None)
            .await?;
        if !status.is_success() {
            // Without rabbitmq_shovel_management the state is unknown; the parameter exists.
            return Ok(ShovelState::Running);
        }
        let list = self.json(&what, &body)?;
        let entry = list.as_array().and_then(|l| {
            l.iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        });
        Ok(match entry {
            Some(s) if s.get("state").and_then(Value::as_str) == Some("terminated") => {
                ShovelState::Terminated(
                    s.get("reason")
                        .map(|r| match r {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_else(|| "terminated".into()),
                )
            }
            _ => ShovelState::Running,
        })
    }

    /// Prefetch counts of the consumers of `queue` (`GET /api/consumers/{vhost}`).
    pub async fn consumer_prefetch(&self, queue: &str) -> Result<Vec<u32>, ManageError> {
        let (status, body) = self
            .call(Method::GET, &format!("consumers/{}", self.v()), "", None)
            .await?;
        if !status.is_success() {
            return Err(self.refusal("consumer list", status, &body));
        }
        let list = self.json("consumer list", &body)?;
        Ok(list
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|c| c.pointer("/queue/name").and_then(Value::as_str) == Some(queue))
                    .filter_map(|c| c.get("prefetch_count").and_then(Value::as_u64))
                    .filter_map(|p| u32::try_from(p).ok())
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() -> Result<(), serde_json::Error> {
        let body = r#"[{"vhost":"/","name":"ttl","pattern":"^orders$","apply-to":"queues",
            "definition":{"message-ttl":60000},"priority":5}]"#;
        let p: Vec<Policy> = serde_json::from_str(body)?;
        assert_eq!(p[0].priority, 5);
        assert_eq!(p[0].definition["message-ttl"], 60000);
        Ok(())
    }

    #[test]
    fn conflict_reasons() {
        let e = ManageError::Conflict {
            what: "q".into(),
            reason: "inequivalent arg".into(),
        };
        assert_eq!(
            e.reason("DeadLetterQueueConflict"),
            "DeadLetterQueueConflict"
        );
        let e = ManageError::PluginMissing {
            plugin: "rabbitmq_shovel",
            reason: String::new(),
        };
        assert_eq!(e.reason("x"), "ShovelPluginMissing");
    }
}
