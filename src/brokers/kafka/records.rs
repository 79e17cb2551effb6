//! Reading and writing records: `Fetch` with committed-read semantics, idempotent
//! `Produce`, and simple (memberless) `OffsetCommit` for a group nerite owns.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::{
    FetchRequest, GroupId, InitProducerIdRequest, OffsetCommitRequest, ProduceRequest, TopicName,
    fetch_request::{FetchPartition, FetchTopic},
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::wire::{Cluster, Route, WireError, sb};
use super::{code_name, source_error};
use crate::core::error::SourceError;

/// One record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Header keys are unique here (the codec keeps the last value of a repeated key).
    pub headers: IndexMap<StrBytes, Option<Bytes>>,
}

/// What one fetch of one partition gave.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub records: Vec<Rec>,
    /// First offset after everything this answer covered (records, control markers,
    /// aborted records): where the next fetch starts.
    pub next: i64,
    pub high_watermark: i64,
    pub last_stable: i64,
    pub log_start: i64,
}

/// Fetch one partition from `offset` (committed records only: aborted transactional records
/// and control markers are skipped).
pub async fn fetch(
    cluster: &Cluster,
    leader: i32,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
) -> Result<Fetched, SourceError> {
    let endpoint = cluster.settings().label();
    let mut req = FetchRequest::default();
    req.max_wait_ms = 200;
    req.min_bytes = 1;
    req.max_bytes = max_bytes;
    req.isolation_level = 1;
    let mut fp = FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = max_bytes;
    let mut ft = FetchTopic::default();
    ft.topic = TopicName(sb(topic));
    ft.partitions = vec![fp];
    req.topics = vec![ft];
    let (resp, _) = cluster
        .call(Route::Node(leader), &req)
        .await
        .map_err(|e| source_error(e, &endpoint))?;
    if resp.error_code != 0 {
        return Err(SourceError::Protocol {
            endpoint,
            detail: format!("fetch {topic}/{partition}: {}", code_name(resp.error_code)),
        });
    }
    let part = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| SourceError::Protocol {
            endpoint: endpoint.clone(),
            detail: format!("fetch {topic}/{partition}: partition missing from the answer"),
        })?;
    if part.error_code != 0 {
        return Err(partition_error(
            part.error_code,
            &endpoint,
            topic,
            partition,
        ));
    }
    let mut out = Fetched {
        records: Vec::new(),
        next: offset,
        high_watermark: part.high_watermark,
        last_stable: part.last_stable_offset,
        log_start: part.log_start_offset,
    };
    // Aborted transactions: producer id → first offset of its aborted data.
    let mut aborted: HashMap<i64, i64> = part
        .aborted_transactions
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    let Some(mut buf) = part.records else {
        return Ok(out);
    };
    let mut decoded_any = false;
    while !buf.is_empty() {
        let set = match RecordBatchDecoder::decode(&mut buf) {
            Ok(s) => s,
            // A batch cut off at the end of the answer: fetch it again next time.
            Err(_) if decoded_any => break,
            Err(e) => {
                return Err(SourceError::Protocol {
                    endpoint,
                    detail: format!("records of {topic}/{partition} cannot be decoded: {e}"),
                });
            }
        };
        decoded_any = true;
        for r in set.records {
            out.next = out.next.max(r.offset + 1);
            if r.offset < offset {
                continue;
            }
            if r.control {
                // The end marker of a transaction: later data of that producer is live.
                aborted.remove(&r.producer_id);
                continue;
            }
            if r.transactional
                && aborted
                    .get(&r.producer_id)
                    .is_some_and(|first| r.offset >= *first)
            {
                continue;
            }
            out.records.push(Rec {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
    }
    Ok(out)
}

fn partition_error(code: i16, endpoint: &str, topic: &str, partition: i32) -> SourceError {
    match code {
        3 => SourceError::KafkaTopicNotFound {
            endpoint: endpoint.to_string(),
            topic: topic.to_string(),
        },
        29 => SourceError::Forbidden {
            endpoint: endpoint.to_string(),
            detail: format!("not authorized for topic {topic:?}"),
        },
        _ => SourceError::Protocol {
            endpoint: endpoint.to_string(),
            detail: format!("{topic}/{partition}: {}", code_name(code)),
        },
    }
}

/// An idempotent producer: one producer id, a sequence per partition. Retrying a batch with
/// the same sequence cannot write it twice.
pub struct Producer {
    pub producer_id: i64,
    pub epoch: i16,
    sequences: HashMap<(String, i32), i32>,
}

impl Producer {
    /// `InitProducerId` without a transactional id.
    pub async fn init(cluster: &Cluster) -> Result<Producer, SourceError> {
        let endpoint = cluster.settings().label();
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        req.transaction_timeout_ms = -1;
        let (resp, _) = cluster
            .call(Route::Any, &req)
            .await
            .map_err(|e| source_error(e, &endpoint))?;
        if resp.error_code != 0 {
            return Err(SourceError::Protocol {
                endpoint,
                detail: format!("InitProducerId: {}", code_name(resp.error_code)),
            });
        }
        Ok(Producer {
            producer_id: resp.producer_id.0,
            epoch: resp.producer_epoch,
            sequences: HashMap::new(),
        })
    }
}

/// How one produce attempt of a batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Produced {
    /// Written (or already written by an earlier attempt with the same sequence).
    Ok,
    /// Refused for what the records are (too large, invalid): retrying cannot help.
    Refused(String),
    /// Failed for a reason that may pass (leader moved, timeout).
    Retry(String),
}

/// Records to write to one partition, in order: `(key, value, headers, timestamp)`.
pub type Outgoing = Vec<(
    Option<Bytes>,
    Option<Bytes>,
    IndexMap<StrBytes, Option<Bytes>>,
    i64,
)>;

/// Write one batch to `topic`/`partition` through its leader, `acks=all`. The batch keeps
/// its sequence numbers across retries; the sequence advances only once it is written.
pub async fn produce(
    cluster: &Cluster,
    producer: &mut Producer,
    leader: i32,
    topic: &str,
    partition: i32,
    records: &Outgoing,
) -> Result<Produced, WireError> {
    let key = (topic.to_string(), partition);
    let base = *producer.sequences.get(&key).unwrap_or(&0);
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v, h, ts))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.producer_id,
            producer_epoch: producer.epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base.wrapping_add(i as i32),
            timestamp: *ts,
            key: k.clone(),
            value: v.clone(),
            headers: h.clone(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| WireError::Codec {
        addr: topic.to_string(),
        detail: format!("encoding records: {e}"),
    })?;
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(buf.freeze());
    let mut td = TopicProduceData::default();
    td.name = TopicName(sb(topic));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.transactional_id = None;
    req.acks = -1;
    req.timeout_ms = i32::try_from(cluster.settings().timeout.as_millis()).unwrap_or(30_000);
    req.topic_data = vec![td];
    let (resp, _) = cluster.call(Route::Node(leader), &req).await?;
    let code = resp
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .map(|p| {
            (
                p.error_code,
                p.error_message.as_ref().map(|m| m.as_str().to_string()),
            )
        });
    let Some((code, message)) = code else {
        return Ok(Produced::Retry("partition missing from the answer".into()));
    };
    let why = || {
        format!(
            "{}{}",
            code_name(code),
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    };
    Ok(match code {
        // Written now, or by an earlier attempt of the same sequence.
        0 | 46 => {
            let n = i32::try_from(records.len()).unwrap_or(i32::MAX);
            producer.sequences.insert(key, base.wrapping_add(n));
            Produced::Ok
        }
        // Too large, corrupt or invalid records; a policy violation.
        2 | 10 | 18 | 44 | 87 => Produced::Refused(why()),
        _ => Produced::Retry(why()),
    })
}

/// Commit offsets for a group nerite owns (no members: generation −1).
pub async fn commit(
    cluster: &Cluster,
    coordinator: i32,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), SourceError> {
    let endpoint = cluster.settings().label();
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(sb(group));
    req.generation_id_or_member_epoch = -1;
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(sb(topic));
    t.partitions = offsets
        .iter()
        .map(|(p, o)| {
            let mut rp = OffsetCommitRequestPartition::default();
            rp.partition_index = *p;
            rp.committed_offset = *o;
            rp.committed_leader_epoch = -1;
            rp
        })
        .collect();
    req.topics = vec![t];
    let v = cluster
        .version::<OffsetCommitRequest>(Route::Node(coordinator))
        .await
        .map_err(|e| source_error(e, &endpoint))?;
    if v > 4 {
        // retention_time_ms exists only in v2–v4.
        req.retention_time_ms = -1;
    }
    let (resp, _) = cluster
        .call(Route::Node(coordinator), &req)
        .await
        .map_err(|e| source_error(e, &endpoint))?;
    let failed: HashSet<String> = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.error_code != 0)
        .map(|p| format!("{}: {}", p.partition_index, code_name(p.error_code)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Protocol {
            endpoint,
            detail: format!(
                "commit of group {group:?} failed for partitions {}",
                failed.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })
    }
}
