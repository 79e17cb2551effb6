//! One dead-letter and redrive vocabulary for the three brokers: the condition types, the
//! Event reasons, the request-id rule, the two annotations, and how a redrive's phase shows
//! as the `Redrive` condition. RabbitMQ (`brokers::rabbitmq`), SQS (`brokers::sqs`) and Kafka
//! (`brokers::kafka`) each move messages their own way but describe it only through this
//! module, so the names cannot drift apart again.
//!
//! | phase (`status.<broker>.redrive.phase`) | `Redrive` condition | Event on entering it |
//! |---|---|---|
//! | `Pending` (recorded, nothing moved yet) | `True`, `Pending` | — |
//! | `Running` | `True`, `Running` | `RedriveStarted` (`RedriveResumed` after a restart or an interruption) |
//! | `Succeeded` | `True`, `Succeeded` | `RedriveSucceeded` |
//! | `Cancelled` | `True`, `Cancelled` | `RedriveCancelled` |
//! | `Failed` | `False`, the recorded `reason` (default `RedriveFailed`) | `RedriveFailed` (Warning) |
//!
//! A request that cannot be carried out at all is `Redrive=False` with a reason of its own:
//! [`NO_DEAD_LETTER`] (no `deadLetter` section), [`INVALID_ANNOTATION`] (an annotation value
//! that breaks the request-id rule; also a Warning Event of that reason).

use std::collections::BTreeMap;

use crate::core::conditions::CondUpdate;
use crate::spec::api::{
    Condition, REDRIVE_ANNOTATION, REDRIVE_CANCEL_ANNOTATION, REQUEST_ID_MAX, RedrivePhase,
    RedriveProgress,
};

/// Condition type of the dead-letter set-up, on every broker.
pub const DEAD_LETTER_READY: &str = "DeadLetterReady";
/// Condition type of the last redrive request, on every broker.
pub const REDRIVE: &str = "Redrive";
/// Condition type RabbitMQ sources used for [`DEAD_LETTER_READY`] before; removed on sight.
pub const LEGACY_DEAD_LETTERING: &str = "DeadLettering";

/// Event: a request started moving messages.
pub const EVENT_STARTED: &str = "RedriveStarted";
/// Event: a request recorded as running is continued (after a restart or an interruption).
pub const EVENT_RESUMED: &str = "RedriveResumed";
/// Event: a request ended `Succeeded`.
pub const EVENT_SUCCEEDED: &str = "RedriveSucceeded";
/// Event (Warning): a request ended `Failed`.
pub const EVENT_FAILED: &str = "RedriveFailed";
/// Event: a request ended `Cancelled`.
pub const EVENT_CANCELLED: &str = "RedriveCancelled";
/// Event action of every redrive Event.
pub const EVENT_ACTION: &str = "Redrive";

/// `Redrive=False` (and a Warning Event): an annotation value breaks the request-id rule.
pub const INVALID_ANNOTATION: &str = "InvalidRedriveAnnotation";
/// `Redrive=False`: a redrive was requested on a source without a `deadLetter` section.
pub const NO_DEAD_LETTER: &str = "NoDeadLetter";
/// `Redrive=False`: the reason of a `Failed` request that recorded none more specific.
pub const REASON_FAILED: &str = "RedriveFailed";

/// Why `id` is not a valid request id (`None`: it is), phrased to follow the field name.
/// The rule of the CRD's `requestId` ([`crate::spec::api::REQUEST_ID_PATTERN`]).
pub fn request_id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= REQUEST_ID_MAX
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| {
        format!(
            "must be 1-{REQUEST_ID_MAX} characters: letters, digits, '.', '_', '-', starting \
             with a letter or digit"
        )
    })
}

pub use crate::core::text::quote;

/// Where the request in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `deadLetter.redrive.requestId`.
    Spec,
    /// The `nerite.dev/redrive-request` annotation.
    Annotation,
    /// Neither: the recorded request is still `Pending` or `Running` and is seen through
    /// (removing the trigger never orphans a running redrive).
    Recorded,
}

/// The redrive request in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_id: String,
    /// `cancel` in the spec, or the cancel annotation names this id.
    pub cancel: bool,
    pub origin: Origin,
}

/// What the spec, the annotations and the recorded status ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub request: Option<Request>,
    /// Annotations whose value could not be used, with why (one message).
    pub invalid: Option<String>,
}

impl Requested {
    /// The request id in force, if any.
    pub fn id(&self) -> Option<&str> {
        self.request.as_ref().map(|r| r.request_id.as_str())
    }

    /// A trigger (spec or annotation) asks for a redrive: a source without a dead-letter
    /// section refuses it.
    pub fn triggered(&self) -> bool {
        self.request
            .as_ref()
            .is_some_and(|r| r.origin != Origin::Recorded)
    }
}

/// The request in force. The spec's `(requestId, cancel)` wins over the
/// `nerite.dev/redrive-request` annotation; without either, a recorded request that is still
/// active is seen through. `nerite.dev/redrive-cancel: <id>` cancels the request of that id,
/// whatever started it. Empty annotation values count as absent; values that break the
/// request-id rule are ignored and reported in [`Requested::invalid`].
pub fn requested(
    spec: Option<(&str, bool)>,
    annotations: &BTreeMap<String, String>,
    recorded: Option<(&str, RedrivePhase)>,
) -> Requested {
    let mut invalid = Vec::new();
    let mut annotation = |key: &str| -> Option<String> {
        let v = annotations.get(key).filter(|v| !v.is_empty())?;
        match request_id_problem(v) {
            None => Some(v.clone()),
            Some(problem) => {
                invalid.push(format!("annotation {key} ({}) {problem}", quote(v)));
                None
            }
        }
    };
    let cancel_id = annotation(REDRIVE_CANCEL_ANNOTATION);
    let from_annotation = annotation(REDRIVE_ANNOTATION);
    let cancels = |id: &str| cancel_id.as_deref() == Some(id);
    let request = match spec {
        Some((id, cancel)) => Some(Request {
            request_id: id.to_owned(),
            cancel: cancel || cancels(id),
            origin: Origin::Spec,
        }),
        None => from_annotation
            .map(|id| Request {
                cancel: cancels(&id),
                request_id: id,
                origin: Origin::Annotation,
            })
            .or_else(|| {
                recorded
                    .filter(|(_, phase)| phase.is_active())
                    .map(|(id, _)| Request {
                        request_id: id.to_owned(),
                        cancel: cancels(id),
                        origin: Origin::Recorded,
                    })
            }),
    };
    Requested {
        request,
        invalid: (!invalid.is_empty()).then(|| format!("{}; ignored", invalid.join("; "))),
    }
}

/// One line on a redrive: its id, phase, count and message.
pub fn describe(p: &RedriveProgress) -> String {
    let mut line = format!(
        "redrive {}: {}, {} moved",
        quote(&p.request_id),
        p.phase,
        p.moved
    );
    if let Some(m) = p.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str("; ");
        line.push_str(m);
    }
    line
}

/// The `Redrive` condition for a recorded redrive: `True` with the phase as reason while
/// `Pending`, `Running`, `Succeeded` or `Cancelled`; `False` with the recorded reason when
/// `Failed`.
pub fn condition(p: &RedriveProgress) -> CondUpdate {
    match p.phase {
        RedrivePhase::Failed => CondUpdate::new(
            REDRIVE,
            false,
            p.reason.as_deref().unwrap_or(REASON_FAILED),
            describe(p),
        ),
        phase => CondUpdate::new(REDRIVE, true, phase.as_str(), describe(p)),
    }
}

/// The Event reason for a phase reached (`None` unless an outcome: Started and Resumed are
/// emitted where the move begins), and whether it is a Warning.
pub fn outcome_event(phase: RedrivePhase) -> Option<(&'static str, bool)> {
    match phase {
        RedrivePhase::Succeeded => Some((EVENT_SUCCEEDED, false)),
        RedrivePhase::Failed => Some((EVENT_FAILED, true)),
        RedrivePhase::Cancelled => Some((EVENT_CANCELLED, false)),
        RedrivePhase::Pending | RedrivePhase::Running => None,
    }
}

/// `Redrive=False`, [`NO_DEAD_LETTER`]: the request needs `field` (e.g.
/// `spec.source.sqs.deadLetter`).
pub fn no_dead_letter(request_id: &str, field: &str) -> CondUpdate {
    CondUpdate::new(
        REDRIVE,
        false,
        NO_DEAD_LETTER,
        format!(
            "redrive request {} not carried out: a redrive needs {field}",
            quote(request_id)
        ),
    )
}

/// `Redrive=False`, [`INVALID_ANNOTATION`], naming the redrive that goes on (if any).
pub fn invalid_annotation(problem: &str, recorded: Option<&RedriveProgress>) -> CondUpdate {
    let mut message = problem.to_owned();
    if let Some(p) = recorded {
        message.push_str("; last ");
        message.push_str(&describe(p));
    }
    CondUpdate::new(REDRIVE, false, INVALID_ANNOTATION, message)
}

/// The `Redrive` condition of a tick where the redrive writes only its own status (SQS,
/// Kafka): refusals first, then the recorded redrive; without either, a condition left from
/// before is removed. `dead_letter_field` names the section a redrive needs.
pub fn tick_condition(
    requested: &Requested,
    has_dead_letter: bool,
    dead_letter_field: &str,
    recorded: Option<&RedriveProgress>,
    previous: Option<&Condition>,
) -> Option<CondUpdate> {
    if let Some(problem) = &requested.invalid {
        return Some(invalid_annotation(problem, recorded));
    }
    if let Some(r) = requested.request.as_ref().filter(|_| !has_dead_letter)
        && requested.triggered()
    {
        return Some(no_dead_letter(&r.request_id, dead_letter_field));
    }
    match (recorded, previous) {
        (Some(p), _) => Some(condition(p)),
        (None, Some(_)) => Some(CondUpdate::removed(REDRIVE)),
        (None, None) => None,
    }
}

/// Whether `c` is a problem not reported before (the previous condition of its type differs):
/// a Warning Event is due.
pub fn is_new_problem(previous: Option<&Condition>, c: &CondUpdate) -> bool {
    !c.status
        && !c.remove
        && previous
            .is_none_or(|p| p.status != "False" || p.reason != c.reason || p.message != c.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn progress(id: &str, phase: RedrivePhase) -> RedriveProgress {
        RedriveProgress {
            request_id: id.into(),
            phase,
            moved: 7,
            ..RedriveProgress::default()
        }
    }

    #[test]
    fn request_ids_follow_the_crd_rule() {
        for ok in ["r1", "2024-06-01", "ticket_42.b", &"a".repeat(63)] {
            assert_eq!(request_id_problem(ok), None, "{ok}");
        }
        for bad in ["", "-r1", ".r", "r 1", "r/1", "ü", &"a".repeat(64)] {
            assert!(request_id_problem(bad).is_some(), "{bad:?} accepted");
        }
        // The CRD pattern says the same.
        let re = regex::Regex::new(crate::spec::api::REQUEST_ID_PATTERN).expect("pattern compiles");
        for id in ["r1", "-r1", "r 1", "a.b_c-d"] {
            assert_eq!(re.is_match(id), request_id_problem(id).is_none(), "{id}");
        }
    }

    #[test]
    fn the_spec_wins_over_the_annotation() {
        let a = annotations(&[(REDRIVE_ANNOTATION, "from-annotation")]);
        let r = requested(Some(("from-spec", false)), &a, None);
        assert_eq!(r.id(), Some("from-spec"));
        assert_eq!(r.request.map(|r| r.origin), Some(Origin::Spec));
        let r = requested(None, &a, None);
        assert_eq!(r.id(), Some("from-annotation"));
        assert!(r.triggered());
        assert_eq!(r.invalid, None);
        // Empty values are no request.
        let empty = annotations(&[(REDRIVE_ANNOTATION, ""), (REDRIVE_CANCEL_ANNOTATION, "")]);
        assert_eq!(requested(None, &empty, None), Requested::default());
    }

    #[test]
    fn the_cancel_annotation_cancels_its_id_only() {
        let a = annotations(&[
            (REDRIVE_ANNOTATION, "r1"),
            (REDRIVE_CANCEL_ANNOTATION, "r1"),
        ]);
        assert!(requested(None, &a, None).request.is_some_and(|r| r.cancel));
        // It cancels a spec-triggered request of that id too, and no other id.
        let c = annotations(&[(REDRIVE_CANCEL_ANNOTATION, "r1")]);
        assert!(
            requested(Some(("r1", false)), &c, None)
                .request
                .is_some_and(|r| r.cancel)
        );
        assert!(
            requested(Some(("r2", false)), &c, None)
                .request
                .is_some_and(|r| !r.cancel)
        );
        // The trigger removed: the recorded running request is seen through, and can be
        // cancelled by the annotation.
        let r = requested(None, &c, Some(("r1", RedrivePhase::Running)));
        assert_eq!(
            r.request,
            Some(Request {
                request_id: "r1".into(),
                cancel: true,
                origin: Origin::Recorded
            })
        );
        assert!(!r.triggered());
        // A finished one is not.
        assert_eq!(
            requested(None, &c, Some(("r1", RedrivePhase::Succeeded))).request,
            None
        );
        // A cancel alone never starts anything.
        assert_eq!(requested(None, &c, None).request, None);
    }

    #[test]
    fn invalid_annotation_values_are_reported_never_used() {
        let a = annotations(&[(REDRIVE_ANNOTATION, "bad id!")]);
        let r = requested(None, &a, None);
        assert_eq!(r.request, None);
        let why = r.invalid.unwrap_or_default();
        assert!(
            why.contains(REDRIVE_ANNOTATION) && why.contains("\"bad id!\"") && why.contains("1-63"),
            "{why}"
        );
        // A running request goes on; a bad cancel value cancels nothing.
        let a = annotations(&[(REDRIVE_CANCEL_ANNOTATION, &"x".repeat(500))]);
        let r = requested(Some(("r1", false)), &a, None);
        assert!(r.request.is_some_and(|r| !r.cancel));
        let why = r.invalid.unwrap_or_default();
        assert!(
            why.contains(REDRIVE_CANCEL_ANNOTATION) && why.len() < 300,
            "{why}"
        );
    }

    #[test]
    fn phases_map_to_one_condition_each() {
        for phase in RedrivePhase::ALL {
            let c = condition(&progress("r1", phase));
            assert_eq!(c.type_, REDRIVE);
            assert!(c.message.contains("\"r1\"") && c.message.contains("7 moved"));
            match phase {
                RedrivePhase::Failed => {
                    assert_eq!((c.status, c.reason.as_str()), (false, REASON_FAILED));
                }
                other => assert_eq!((c.status, c.reason.as_str()), (true, other.as_str())),
            }
        }
        let mut failed = progress("r1", RedrivePhase::Failed);
        failed.reason = Some("ShovelPluginMissing".into());
        assert_eq!(condition(&failed).reason, "ShovelPluginMissing");
    }

    #[test]
    fn outcomes_have_one_event_reason_each() {
        assert_eq!(
            outcome_event(RedrivePhase::Succeeded),
            Some((EVENT_SUCCEEDED, false))
        );
        assert_eq!(
            outcome_event(RedrivePhase::Failed),
            Some((EVENT_FAILED, true))
        );
        assert_eq!(
            outcome_event(RedrivePhase::Cancelled),
            Some((EVENT_CANCELLED, false))
        );
        assert_eq!(outcome_event(RedrivePhase::Running), None);
        assert_eq!(outcome_event(RedrivePhase::Pending), None);
    }

    #[test]
    fn old_phase_names_are_read_as_the_new_ones() {
        let read =
            |v: serde_json::Value| -> RedriveProgress { serde_json::from_value(v).expect("reads") };
        for (old, new) in [
            ("Starting", RedrivePhase::Pending),
            ("Completed", RedrivePhase::Succeeded),
            ("Interrupted", RedrivePhase::Failed),
            ("Running", RedrivePhase::Running),
            ("Cancelled", RedrivePhase::Cancelled),
            ("SomethingNew", RedrivePhase::Failed),
        ] {
            assert_eq!(
                read(serde_json::json!({"requestId": "r", "phase": old})).phase,
                new
            );
            // SQS and Kafka called it `state`.
            assert_eq!(
                read(serde_json::json!({"requestId": "r", "state": old})).phase,
                new
            );
        }
        // No phase at all (pruned): finished, never resumed.
        assert_eq!(
            read(serde_json::json!({"requestId": "r"})).phase,
            RedrivePhase::Failed
        );
        assert_eq!(
            serde_json::to_value(progress("r", RedrivePhase::Pending)).expect("writes")["phase"],
            "Pending"
        );
    }

    #[test]
    fn tick_conditions_refuse_first_and_clean_up() {
        let none = Requested::default();
        let a = annotations(&[(REDRIVE_ANNOTATION, "r1")]);
        let asked = requested(None, &a, None);
        let field = "spec.source.sqs.deadLetter";
        let c = tick_condition(&asked, false, field, None, None).expect("a condition");
        assert_eq!((c.status, c.reason.as_str()), (false, NO_DEAD_LETTER));
        assert!(c.message.contains(field) && c.message.contains("\"r1\""));
        // With the section: the recorded redrive speaks.
        let rec = progress("r1", RedrivePhase::Running);
        let c = tick_condition(&asked, true, field, Some(&rec), None).expect("a condition");
        assert_eq!((c.status, c.reason.as_str()), (true, "Running"));
        // Nothing requested or recorded: nothing, and a left-over condition goes.
        assert_eq!(tick_condition(&none, true, field, None, None), None);
        let left = Condition {
            type_: REDRIVE.into(),
            status: "False".into(),
            reason: NO_DEAD_LETTER.into(),
            message: "m".into(),
            last_transition_time: "t".into(),
            observed_generation: None,
        };
        assert_eq!(
            tick_condition(&none, false, field, None, Some(&left)),
            Some(CondUpdate::removed(REDRIVE))
        );
        // An invalid annotation is reported, naming the redrive that goes on.
        let bad = requested(None, &annotations(&[(REDRIVE_ANNOTATION, "no!")]), None);
        let c = tick_condition(&bad, true, field, Some(&rec), Some(&left)).expect("a condition");
        assert_eq!((c.status, c.reason.as_str()), (false, INVALID_ANNOTATION));
        assert!(c.message.contains("Running"), "{}", c.message);
        assert!(is_new_problem(Some(&left), &c));
        let same = Condition {
            reason: c.reason.clone(),
            message: c.message.clone(),
            ..left.clone()
        };
        assert!(!is_new_problem(Some(&same), &c));
    }
}
