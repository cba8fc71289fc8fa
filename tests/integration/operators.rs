//! The operator commands, run as the binary: status, audit, replay and dead-letters.

use erp_sync::simulator::{DEFAULT_TOKEN, LinkCase};
use serde_json::{Value, json};

use crate::binary::{command, output_of, pipeline_env};
use crate::support::{TestEnv, envelope, id_of};

/// Runs `erp-sync ARGS` against the test's database and queues.
async fn run(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let mut vars = pipeline_env(env, DEFAULT_TOKEN);
    vars.push(("USER".into(), "night-operator".into()));
    vars.push(("RUST_LOG".into(), "warn".into()));
    output_of(command(&vars, args).spawn().expect("erp-sync starts")).await
}

/// A test pipeline with one rejected block: the link has an Active licensee.
async fn with_parked_block() -> (TestEnv, Value, String) {
    let env = TestEnv::start().await;
    let link = env.pick(|data| {
        data.find_link(LinkCase::WithActiveLicensee)
            .unwrap()
            .id
            .clone()
    });
    let event = envelope(
        "ErpLink",
        Some(&link),
        "blocked",
        Some(json!({ "reason": "Credit limit exceeded" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("permanent_failure")
    );
    (env, event, link)
}

#[tokio::test]
async fn status_reports_parked_work_as_table_and_json() {
    let (env, _, _) = with_parked_block().await;

    let (code, table) = run(&env, &["status"]).await;
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("permanent_failure"), "{table}");
    assert!(table.contains("dead letters waiting"), "{table}");

    let (code, output) = run(&env, &["status", "--json"]).await;
    assert_eq!(code, Some(0), "{output}");
    let report: Value = serde_json::from_str(&output).expect("status --json prints JSON");
    assert_eq!(report["commands"]["parked"], 1);
    assert_eq!(report["parkedByReason"]["permanent_failure"], 1);
    assert_eq!(report["unsettledEvents"], 0);
    env.finish().await;
}

#[tokio::test]
async fn audit_shows_the_whole_timeline_of_an_id() {
    let (env, event, link) = with_parked_block().await;

    for id in [id_of(&event).to_string(), link.clone()] {
        let (code, timeline) = run(&env, &["audit", &id]).await;
        assert_eq!(code, Some(0), "{timeline}");
        for step in [
            "received",
            "command_planned",
            "attempt_started",
            "attempt_finished",
            "parked",
        ] {
            assert!(
                timeline.contains(step),
                "{step} missing for {id}:\n{timeline}"
            );
        }
        assert!(
            timeline.contains("POST /erp-links/"),
            "the calls are shown:\n{timeline}"
        );
        let received = timeline.find("received").unwrap();
        let parked = timeline.rfind("parked").unwrap();
        assert!(received < parked, "newest last:\n{timeline}");
    }

    let (code, output) = run(&env, &["audit", "ERP-0000-0000-0000"]).await;
    assert_eq!(code, Some(1), "an unknown id is an error: {output}");
    env.finish().await;
}

#[tokio::test]
async fn replay_dry_run_shows_requests_and_changes_nothing() {
    let (env, event, link) = with_parked_block().await;

    let (code, output) = run(
        &env,
        &["replay", "--event", &id_of(&event).to_string(), "--dry-run"],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("would send now"), "{output}");
    assert!(
        output.contains(&format!(
            "POST /erp-links/{link}/block {{\"note\":\"Credit limit exceeded\"}}"
        )),
        "{output}"
    );
    assert!(output.contains("sent last time"), "{output}");
    assert!(
        output.contains("(answered 400)"),
        "the recorded request and its answer are shown: {output}"
    );
    assert!(output.contains("nothing was changed"), "{output}");
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("parked"),
        "a dry run changes nothing"
    );
    env.finish().await;
}

#[tokio::test]
async fn replay_puts_a_fixed_command_back_in_line() {
    let (env, event, link) = with_parked_block().await;
    let licensees: Vec<String> = env.pick(|data| {
        let link = data.erp_link(&link).unwrap();
        data.licensees_of_pair(&link.buyer.id, &link.seller.id)
            .map(|licensee| licensee.id.clone())
            .collect()
    });
    for licensee in &licensees {
        env.simulator
            .control()
            .patch_object(licensee, &json!({ "status": "Disabled" }))
            .expect("licensee patched");
    }

    let (code, output) = run(
        &env,
        &[
            "replay",
            "--object",
            &link,
            "--reason",
            "licensee disabled in the ERP",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("replayed 1 command(s)"), "{output}");
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let (actor, detail): (Option<String>, Value) =
        sqlx::query_as("SELECT actor, detail FROM audit WHERE step = 'replayed'")
            .fetch_one(env.database.pool())
            .await
            .unwrap();
    assert_eq!(actor.as_deref(), Some("night-operator"));
    assert_eq!(detail["reason"], "licensee disabled in the ERP");
    let blocks = env.calls(format!("/public/v1/accounts/erp-links/{link}/block"));
    let keys: Vec<Option<&str>> = blocks
        .iter()
        .map(|call| call.header("idempotency-key"))
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "a replay keeps the command's idempotency key"
    );
    env.finish().await;
}

#[tokio::test]
async fn replay_without_selector_is_refused() {
    let env = TestEnv::start().await;
    let (code, output) = run(&env, &["replay", "--reason", "everything"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("--command"), "{output}");
    env.finish().await;
}

#[tokio::test]
async fn dead_letters_are_listed_and_republished() {
    let env = TestEnv::start().await;
    let mut unsupported = envelope("Buyer", Some("BUY-12"), "updated", None);
    unsupported["object"]["id"] = json!("BUY-12");
    env.publish(&unsupported).await;
    env.publish_raw(b"not json", "accounts.buyer.updated").await;
    env.wait_until_settled(2).await;

    let (code, listing) = run(&env, &["dead-letters", "list"]).await;
    assert_eq!(code, Some(0), "{listing}");
    assert!(
        listing.contains("invalid_id") && listing.contains("malformed_json"),
        "{listing}"
    );
    assert!(listing.contains("2 dead letter(s)"), "{listing}");

    let (code, output) = run(
        &env,
        &[
            "dead-letters",
            "republish",
            "--dead-letter-reason",
            "malformed_json",
            "--reason",
            "producer fixed",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("published again"), "{output}");
    env.wait_until_settled(3).await;
    let counts = env.database.outcome_counts().await.unwrap();
    assert_eq!(
        counts.dead_lettered, 3,
        "the republished body is dead-lettered again, still malformed"
    );

    let (actor, reason): (Option<String>, String) =
        sqlx::query_as("SELECT actor, detail ->> 'reason' FROM audit WHERE step = 'republished'")
            .fetch_one(env.database.pool())
            .await
            .unwrap();
    assert_eq!(actor.as_deref(), Some("night-operator"));
    assert_eq!(reason, "producer fixed");
    env.finish().await;
}
