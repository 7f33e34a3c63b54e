//! Every line shape — including those the golden transcripts never show (partial completes, stream
//! errors, removed buckets, MOVE/CLEAR) — survives JSON and BSON round trips; property tests for the
//! string-int and checksum arithmetic.

use proptest::prelude::*;
use syncgate_protocol::bson::NumberPolicy;
use syncgate_protocol::{
    BucketChecksum, BucketName, BucketPriority, BucketSubscription, Checkpoint, CheckpointComplete,
    CheckpointDiff, Checksum, DataLine, OpId, OpType, OplogEntry, PartialCheckpointComplete,
    StreamDescription, StreamError, Subkey, SubscriptionRef, SyncLine, WriteCheckpointId,
};

fn id(v: u64) -> OpId {
    OpId::new(v).expect("small test id")
}

fn bucket(name: &str, checksum: u32, priority: u8) -> BucketChecksum {
    BucketChecksum {
        bucket: BucketName::new(name),
        checksum: Checksum::from_u32(checksum),
        count: 3,
        priority: BucketPriority::new(i64::from(priority)).expect("0..=3"),
        subscriptions: vec![BucketSubscription::Default(0), BucketSubscription::Sub(2)],
    }
}

fn all_shapes() -> Vec<SyncLine> {
    vec![
        SyncLine::Checkpoint(Checkpoint {
            last_op_id: id(1212),
            write_checkpoint: Some(WriteCheckpointId::new(88).expect("small")),
            buckets: vec![bucket("global[]", 3890466206, 3), bucket("by_list[\"l1\"]", 0, 1)],
            streams: vec![StreamDescription {
                name: "by_list".into(),
                is_default: false,
                errors: vec![
                    StreamError {
                        subscription: SubscriptionRef::Default,
                        message: "m".into(),
                    },
                    StreamError {
                        subscription: SubscriptionRef::Explicit(1),
                        message: "n".into(),
                    },
                ],
            }],
        }),
        SyncLine::CheckpointDiff(CheckpointDiff {
            last_op_id: id(1215),
            write_checkpoint: None,
            removed_buckets: vec![BucketName::new("by_list[\"l1\"]")],
            updated_buckets: vec![bucket("global[]", 2449249303, 0)],
        }),
        SyncLine::Data(DataLine {
            bucket: BucketName::new("global[]"),
            after: id(1200),
            has_more: true,
            data: vec![
                OplogEntry::compacted(id(1201), OpType::Move, Checksum::from_u32(3377212916)),
                OplogEntry::compacted(id(1202), OpType::Clear, Checksum::from_u32(5)),
                OplogEntry::put(
                    id(1210),
                    "todos".into(),
                    "t1".into(),
                    Subkey("src1".into()),
                    "{}".into(),
                ),
                OplogEntry::remove(id(1212), "todos".into(), "t1".into(), Subkey("src1".into())),
            ],
            next_after: id(1212),
        }),
        SyncLine::CheckpointComplete(CheckpointComplete { last_op_id: id(1212) }),
        SyncLine::PartialCheckpointComplete(PartialCheckpointComplete {
            last_op_id: id(1212),
            priority: BucketPriority::new(1).expect("0..=3"),
        }),
        SyncLine::TokenExpiresIn(0),
    ]
}

#[test]
fn every_shape_round_trips_through_json_and_bson() {
    for line in all_shapes() {
        let json = line.to_json();
        assert_eq!(SyncLine::from_json(&json).unwrap(), Some(line.clone()), "{json}");
        for policy in [NumberPolicy::Syncgate, NumberPolicy::Reference] {
            let mut bson = Vec::new();
            line.write_bson(policy, &mut bson);
            assert_eq!(
                SyncLine::from_bson(&bson).unwrap(),
                Some(line.clone()),
                "{policy:?} {json}"
            );
        }
    }
}

#[test]
fn spec_examples_parse() {
    let diff = r#"{"checkpoint_diff": {"last_op_id": "1215", "write_checkpoint": "89",
        "updated_buckets": [{"bucket": "global[]", "checksum": 2449249303, "count": 4, "priority": 3,
        "subscriptions": [{"default": 0}]}], "removed_buckets": ["by_list[\"l1\"]"]}}"#;
    let Some(SyncLine::CheckpointDiff(diff)) = SyncLine::from_json(diff).unwrap() else {
        panic!("a diff")
    };
    assert_eq!(diff.updated_buckets[0].checksum.as_u32(), 2449249303);
    // Optional fields of a bucket entry take the spec's defaults; unknown inner fields are ignored.
    let cp = r#"{"checkpoint":{"last_op_id":"0","buckets":[{"bucket":"b","checksum":0,"extra":1}]}}"#;
    let Some(SyncLine::Checkpoint(cp)) = SyncLine::from_json(cp).unwrap() else {
        panic!("a checkpoint")
    };
    assert_eq!(cp.buckets[0].priority, BucketPriority::DEFAULT);
    assert!(cp.streams.is_empty() && cp.write_checkpoint.is_none());
}

proptest! {
    #[test]
    fn op_id_text_round_trips(v in 0..=i64::MAX) {
        let id = OpId::from_i64(v).expect("non-negative");
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(json.clone(), format!("\"{v}\""));
        prop_assert_eq!(serde_json::from_str::<OpId>(&json).unwrap(), id);
    }

    #[test]
    fn signed_op_ids_are_rejected(v in i64::MIN..0) {
        prop_assert!(v.to_string().parse::<OpId>().is_err());
    }

    /// Bucket checksums do not depend on op order and equal the sum mod 2^32.
    #[test]
    fn checksum_sum_is_order_independent_mod_2_32(values in prop::collection::vec(any::<u32>(), 0..50)) {
        let forward: Checksum = values.iter().copied().map(Checksum::from_u32).sum();
        let backward: Checksum = values.iter().rev().copied().map(Checksum::from_u32).sum();
        let wide: u64 = values.iter().map(|v| u64::from(*v)).sum();
        prop_assert_eq!(forward, backward);
        prop_assert_eq!(u64::from(forward.as_u32()), wide % (1 << 32));
        prop_assert_eq!(Checksum::from_i32(forward.as_i32()), forward);
    }
}
