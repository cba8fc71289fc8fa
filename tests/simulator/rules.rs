//! Business rules of block, unblock, synchronize, seller and licensee actions.

use std::time::Duration;

use erp_sync::simulator::model::{ErpLinkStatus, LicenseeStatus, SellerStatus};
use erp_sync::simulator::{BuyerCase, LinkCase, RepeatedAction, SellerCase, SynchronizeResponse};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestSimulator, eventually, start, start_with};

/// Returns the `id` of the first business error of a Problem.
fn error_id(problem: &Value) -> &str {
    problem["errors"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no business error in {problem}"))
}

fn link_status(sim: &TestSimulator, link_id: &str) -> ErpLinkStatus {
    sim.control().data().erp_link(link_id).unwrap().status
}

/// Returns an Active link of the seller whose buyer is ERP-activated.
fn active_link_of_seller(sim: &TestSimulator, seller_id: &str) -> (String, String) {
    let data = sim.control().data();
    let link = data
        .links_of_seller(seller_id)
        .find(|link| {
            link.status == ErpLinkStatus::Active
                && data.buyer(&link.buyer.id).unwrap().is_erp_activated()
        })
        .expect("the seller has an Active link with an ERP-activated buyer");
    (link.id.clone(), link.buyer.id.clone())
}

#[tokio::test]
async fn block_sets_status_note_and_audit() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let revision = sim.control().data().erp_link(&link_id).unwrap().revision;

    let (status, link) = sim
        .post(
            &format!("/erp-links/{link_id}/block?select=+audit"),
            Some(json!({"note": "Credit limit exceeded"})),
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(link["status"], "Blocked");
    assert_eq!(link["note"], "Credit limit exceeded");
    assert_eq!(link["revision"], revision + 1);
    assert_eq!(link["audit"]["blocked"]["by"]["id"], "TKN-0000-0000");
    assert_eq!(
        link["audit"]["updated"]["at"],
        link["audit"]["blocked"]["at"]
    );
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Blocked);
}

#[tokio::test]
async fn block_accepts_missing_or_empty_body() {
    let sim = start().await;
    let links: Vec<String> = sim
        .control()
        .data()
        .find_links(LinkCase::Blockable)
        .take(3)
        .map(|link| link.id.clone())
        .collect();

    let (no_body, _) = sim
        .post(&format!("/erp-links/{}/block", links[0]), None)
        .await;
    let (empty_object, _) = sim
        .post(&format!("/erp-links/{}/block", links[1]), Some(json!({})))
        .await;
    let null_body = sim
        .request(Method::POST, &format!("/erp-links/{}/block", links[2]))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap()
        .status();

    assert_eq!(no_body, StatusCode::OK);
    assert_eq!(empty_object, StatusCode::OK);
    assert_eq!(null_body, StatusCode::OK);
}

#[tokio::test]
async fn block_rejects_invalid_body() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();

    let not_json = sim
        .request(Method::POST, &format!("/erp-links/{link_id}/block"))
        .body("{note:")
        .send()
        .await
        .unwrap();
    let (note_status, note_problem) = sim
        .post(
            &format!("/erp-links/{link_id}/block"),
            Some(json!({"note": 5})),
        )
        .await;

    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let problem: Value = not_json.json().await.unwrap();
    assert_eq!(problem["title"], "One or more validation errors occurred");
    assert!(problem["errors"]["body"][0].is_string());
    assert_eq!(note_status, StatusCode::BAD_REQUEST);
    assert!(note_problem["errors"]["note"][0].is_string());
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Active);
}

#[tokio::test]
async fn block_rejects_disabled_link() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Disabled)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "erp_link_disabled");
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Disabled);
}

#[tokio::test]
async fn block_rejects_buyer_without_erp_ids() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::OfEnabledBuyer)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "buyer_not_erp_activated");
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Active);
}

#[tokio::test]
async fn block_rejects_active_licensee() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::WithActiveLicensee)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "licensee_in_use");
    assert!(problem["detail"].as_str().unwrap().contains("Active"));
}

#[tokio::test]
async fn block_rejects_enabled_licensee() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::WithEnabledLicensee)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "licensee_in_use");
    assert!(problem["detail"].as_str().unwrap().contains("Enabled"));
}

#[tokio::test]
async fn block_allows_disabled_licensee() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::WithDisabledLicensee)
        .unwrap()
        .id
        .clone();

    let (status, link) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(link["status"], "Blocked");
}

#[tokio::test]
async fn block_rejects_disabled_seller() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let (link_id, _) = active_link_of_seller(&sim, &seller_id);

    let (disabled, _) = sim
        .post(&format!("/sellers/{seller_id}/disable"), None)
        .await;
    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(disabled, StatusCode::OK);
    assert_eq!(
        link_status(&sim, &link_id),
        ErpLinkStatus::Active,
        "links follow only at the next synchronize"
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_not_active");
}

#[tokio::test]
async fn block_rejects_deleted_seller() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let (link_id, _) = active_link_of_seller(&sim, &seller_id);

    let deleted = sim
        .request(Method::DELETE, &format!("/sellers/{seller_id}"))
        .send()
        .await
        .unwrap();
    let (status, problem) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_not_active");
    assert!(problem["detail"].as_str().unwrap().contains("Deleted"));
}

#[tokio::test]
async fn unblock_sets_status_and_audit() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .id
        .clone();
    let revision = sim.control().data().erp_link(&link_id).unwrap().revision;

    let (status, link) = sim
        .post(&format!("/erp-links/{link_id}/unblock?select=+audit"), None)
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(link["status"], "Active");
    assert_eq!(link["revision"], revision + 1);
    assert_eq!(
        link["audit"]["unblocked"]["at"],
        link["audit"]["updated"]["at"]
    );
    assert!(
        link["audit"]["blocked"].is_object(),
        "the earlier block stays in the audit"
    );
}

#[tokio::test]
async fn unblock_rejects_disabled_link() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::DisabledWasBlocked)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim
        .post(&format!("/erp-links/{link_id}/unblock"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "erp_link_disabled");
}

#[tokio::test]
async fn unblock_rejects_buyer_without_erp_ids() {
    let sim = start().await;
    let (link_id, buyer_id) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::Unblockable).unwrap();
        (link.id.clone(), link.buyer.id.clone())
    };
    sim.control()
        .patch_object(
            &buyer_id,
            &json!({"externalIds": null, "status": "Enabled"}),
        )
        .unwrap();

    let (status, problem) = sim
        .post(&format!("/erp-links/{link_id}/unblock"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "buyer_not_erp_activated");
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Blocked);
}

#[tokio::test]
async fn repeated_block_rejected_by_default() {
    let sim = start().await;
    let blocked = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .id
        .clone();
    let active = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();

    let (block_status, block_problem) =
        sim.post(&format!("/erp-links/{blocked}/block"), None).await;
    let (unblock_status, unblock_problem) = sim
        .post(&format!("/erp-links/{active}/unblock"), None)
        .await;

    assert_eq!(block_status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&block_problem), "erp_link_already_blocked");
    assert_eq!(unblock_status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&unblock_problem), "erp_link_already_active");
}

#[tokio::test]
async fn repeated_action_noop_keeps_revision() {
    let sim = start_with(|config| config.repeated_action = RepeatedAction::Noop).await;
    let blocked = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .clone();

    let (status, link) = sim
        .post(
            &format!("/erp-links/{}/block?select=+audit", blocked.id),
            None,
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(link["status"], "Blocked");
    assert_eq!(link["revision"], blocked.revision);
    assert_eq!(link["note"].as_str(), blocked.note.as_deref());
    assert_eq!(
        link["audit"]["updated"]["at"],
        json!(
            blocked
                .audit
                .updated
                .as_ref()
                .unwrap()
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    );
}

#[tokio::test]
async fn illegal_transition_status_409() {
    let sim = start_with(|config| config.illegal_transition_status = 409).await;
    let disabled = sim
        .control()
        .data()
        .find_link(LinkCase::Disabled)
        .unwrap()
        .id
        .clone();
    let blocked = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .id
        .clone();

    let (disabled_status, problem) = sim
        .post(&format!("/erp-links/{disabled}/block"), None)
        .await;
    let (repeated_status, _) = sim.post(&format!("/erp-links/{blocked}/block"), None).await;

    assert_eq!(disabled_status, StatusCode::CONFLICT);
    assert_eq!(problem["title"], "Conflict");
    assert_eq!(
        problem["type"],
        "https://tools.ietf.org/html/rfc9110#section-15.5.10"
    );
    assert_eq!(repeated_status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn synchronize_returns_buyer() {
    let sim = start().await;
    let buyer_id = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .id
        .clone();

    let (with_body, buyer) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), Some(json!({})))
        .await;
    let (without_body, again) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    assert_eq!(with_body, StatusCode::OK);
    assert_eq!(buyer["id"], buyer_id.as_str());
    assert_eq!(buyer["status"], "Active");
    assert_eq!(without_body, StatusCode::OK);
    assert_eq!(
        again["revision"], buyer["revision"],
        "synchronizing twice changes nothing more"
    );
}

#[tokio::test]
async fn synchronize_rejects_buyer_without_erp_ids() {
    let sim = start().await;
    let buyer_id = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Enabled)
        .unwrap()
        .id
        .clone();

    let (status, problem) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "buyer_not_erp_activated");
}

#[tokio::test]
async fn synchronize_disables_and_restores_links() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let (link_id, buyer_id) = active_link_of_seller(&sim, &seller_id);
    let revision = sim.control().data().erp_link(&link_id).unwrap().revision;

    sim.post(&format!("/sellers/{seller_id}/disable"), None)
        .await;
    let (status, _) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;
    let (_, disabled) = sim
        .get(&format!("/erp-links/{link_id}?select=+audit"))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(disabled["status"], "Disabled");
    assert_eq!(disabled["revision"], revision + 1);
    assert!(disabled["audit"]["disabled"].is_object());

    sim.post(&format!("/sellers/{seller_id}/activate"), None)
        .await;
    sim.post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;
    let (_, restored) = sim.get(&format!("/erp-links/{link_id}")).await;

    assert_eq!(restored["status"], "Active");
    assert_eq!(restored["revision"], revision + 2);
}

#[tokio::test]
async fn synchronize_restores_blocked_status() {
    let sim = start().await;
    let (link_id, buyer_id, seller_id) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::DisabledWasBlocked).unwrap();
        (
            link.id.clone(),
            link.buyer.id.clone(),
            link.seller.id.clone(),
        )
    };

    let (activated, seller) = sim
        .post(&format!("/sellers/{seller_id}/activate"), None)
        .await;
    let still_disabled = link_status(&sim, &link_id);
    sim.post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    assert_eq!(activated, StatusCode::OK);
    assert_eq!(seller["status"], "Active");
    assert_eq!(still_disabled, ErpLinkStatus::Disabled);
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Blocked);
    assert_eq!(
        sim.control()
            .data()
            .erp_link(&link_id)
            .unwrap()
            .status_before_disabled,
        None
    );
}

#[tokio::test]
async fn synchronize_mirrors_buyer_to_licensees() {
    let sim = start().await;
    let (buyer_id, licensee_id) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::WithEnabledLicensee).unwrap();
        let licensee = data
            .licensees_of_pair(&link.buyer.id, &link.seller.id)
            .find(|licensee| licensee.status == LicenseeStatus::Enabled)
            .unwrap();
        (link.buyer.id.clone(), licensee.id.clone())
    };

    sim.post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    let (_, licensee) = sim.get(&format!("/licensees/{licensee_id}")).await;
    assert_eq!(licensee["status"], "Active");
}

#[tokio::test]
async fn synchronize_accepted_answers_202() {
    let sim =
        start_with(|config| config.synchronize_response = SynchronizeResponse::Accepted).await;
    let buyer_id = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .id
        .clone();

    let response = sim
        .request(Method::POST, &format!("/buyers/{buyer_id}/synchronize"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn synchronize_delay_applies_later() {
    let sim = start_with(|config| config.synchronize_delay = Duration::from_millis(300)).await;
    let (link_id, buyer_id, seller_id) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::DisabledWasBlocked).unwrap();
        (
            link.id.clone(),
            link.buyer.id.clone(),
            link.seller.id.clone(),
        )
    };
    sim.post(&format!("/sellers/{seller_id}/activate"), None)
        .await;

    let (status, _) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;
    let right_after = link_status(&sim, &link_id);

    assert_eq!(status, StatusCode::OK);
    assert_eq!(right_after, ErpLinkStatus::Disabled);
    eventually("the delayed synchronize restores the link", || {
        link_status(&sim, &link_id) == ErpLinkStatus::Blocked
    })
    .await;
}

#[tokio::test]
async fn seller_state_machine() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let path = |action: &str| format!("/sellers/{seller_id}/{action}");

    let (deactivated, seller) = sim.post(&path("deactivate"), None).await;
    assert_eq!(deactivated, StatusCode::OK);
    assert_eq!(seller["status"], "Offline");

    let (disable_offline, problem) = sim.post(&path("disable"), None).await;
    assert_eq!(disable_offline, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_status_transition");

    let (activated, seller) = sim.post(&path("activate?select=+audit"), None).await;
    assert_eq!(activated, StatusCode::OK);
    assert_eq!(seller["status"], "Active");
    assert!(seller["audit"]["activated"].is_object());
    assert!(seller["audit"]["deactivated"].is_object());

    let (disabled, seller) = sim.post(&path("disable"), None).await;
    assert_eq!(disabled, StatusCode::OK);
    assert_eq!(seller["status"], "Disabled");

    let (deactivate_disabled, problem) = sim.post(&path("deactivate"), None).await;
    assert_eq!(deactivate_disabled, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_status_transition");

    let (repeated, problem) = sim.post(&path("disable"), None).await;
    assert_eq!(repeated, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_status_unchanged");

    let (reactivated, seller) = sim.post(&path("activate"), None).await;
    assert_eq!(reactivated, StatusCode::OK);
    assert_eq!(seller["status"], "Active");
    assert_eq!(
        sim.control().data().seller(&seller_id).unwrap().status,
        SellerStatus::Active
    );
}

#[tokio::test]
async fn seller_actions_rejected_with_licensee_in_use() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::WithLicenseeInUse)
        .unwrap()
        .id
        .clone();

    for action in ["disable", "deactivate"] {
        let (status, problem) = sim
            .post(&format!("/sellers/{seller_id}/{action}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{action}");
        assert_eq!(error_id(&problem), "licensee_in_use", "{action}");
    }
    let delete = sim
        .request(Method::DELETE, &format!("/sellers/{seller_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.control().data().seller(&seller_id).unwrap().status,
        SellerStatus::Active
    );
}

#[tokio::test]
async fn seller_activate_rejected_with_licensee_in_use() {
    let sim = start().await;
    let (seller_id, licensee_id) = {
        let data = sim.control().data();
        let seller = data.find_seller(SellerCase::Offline).unwrap();
        let licensee = data
            .licensees_of_seller(&seller.id)
            .next()
            .expect("the Offline seller has licensees");
        (seller.id.clone(), licensee.id.clone())
    };
    sim.control()
        .patch_object(&licensee_id, &json!({"status": "Enabled"}))
        .unwrap();

    let (status, problem) = sim
        .post(&format!("/sellers/{seller_id}/activate"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "licensee_in_use");
}

#[tokio::test]
async fn licensee_disable_then_enable() {
    let sim = start().await;
    let licensee = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::WithActiveLicensee).unwrap();
        data.licensees_of_pair(&link.buyer.id, &link.seller.id)
            .find(|licensee| licensee.status == LicenseeStatus::Active)
            .unwrap()
            .clone()
    };

    let (disabled, body) = sim
        .post(
            &format!("/licensees/{}/disable?select=+audit", licensee.id),
            None,
        )
        .await;
    assert_eq!(disabled, StatusCode::OK);
    assert_eq!(body["status"], "Disabled");
    assert_eq!(body["revision"], licensee.revision + 1);
    assert!(body["audit"]["disabled"].is_object());

    let (repeated, problem) = sim
        .post(&format!("/licensees/{}/disable", licensee.id), None)
        .await;
    assert_eq!(repeated, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "licensee_status_unchanged");

    let (enabled, body) = sim
        .post(&format!("/licensees/{}/enable", licensee.id), None)
        .await;
    assert_eq!(enabled, StatusCode::OK);
    assert_eq!(body["status"], "Active");
}

#[tokio::test]
async fn licensee_enable_follows_buyer_without_erp_ids() {
    let sim = start().await;
    let licensee_id = {
        let data = sim.control().data();
        data.find_links(LinkCase::OfEnabledBuyer)
            .flat_map(|link| data.licensees_of_pair(&link.buyer.id, &link.seller.id))
            .find(|licensee| licensee.status == LicenseeStatus::Disabled)
            .expect("a Disabled licensee of an Enabled buyer")
            .id
            .clone()
    };

    let (status, body) = sim
        .post(&format!("/licensees/{licensee_id}/enable"), None)
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "Enabled");
}

#[tokio::test]
async fn licensee_enable_rejected_on_blocked_link() {
    let sim = start().await;
    let licensee_id = {
        let data = sim.control().data();
        data.find_links(LinkCase::Unblockable)
            .flat_map(|link| data.licensees_of_pair(&link.buyer.id, &link.seller.id))
            .find(|licensee| licensee.status == LicenseeStatus::Disabled)
            .expect("a Disabled licensee on a Blocked link")
            .id
            .clone()
    };

    let (status, problem) = sim
        .post(&format!("/licensees/{licensee_id}/enable"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "erp_link_not_active");
}

#[tokio::test]
async fn licensee_enable_rejected_for_disabled_seller() {
    let sim = start().await;
    let licensee_id = {
        let data = sim.control().data();
        let seller = data.find_seller(SellerCase::Disabled).unwrap();
        data.licensees_of_seller(&seller.id)
            .next()
            .expect("the Disabled seller has licensees")
            .id
            .clone()
    };

    let (status, problem) = sim
        .post(&format!("/licensees/{licensee_id}/enable"), None)
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_id(&problem), "seller_not_active");
}

#[tokio::test]
async fn licensee_actions_allowed_for_client_token() {
    let client_token = "idt:TKN-5555-6666:client";
    let sim = start_with(|config| config.client_tokens = vec![client_token.into()]).await;
    let licensee_id = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::WithActiveLicensee).unwrap();
        data.licensees_of_pair(&link.buyer.id, &link.seller.id)
            .find(|licensee| licensee.status == LicenseeStatus::Active)
            .unwrap()
            .id
            .clone()
    };

    let response = sim
        .client
        .post(sim.url(&format!("/licensees/{licensee_id}/disable")))
        .bearer_auth(client_token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn auto_sync_follows_seller_disable() {
    let sim = start_with(|config| config.auto_sync = Some(Duration::from_millis(50))).await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let (link_id, _) = active_link_of_seller(&sim, &seller_id);

    let (status, _) = sim
        .post(&format!("/sellers/{seller_id}/disable"), None)
        .await;

    assert_eq!(status, StatusCode::OK);
    eventually("the seller's links become Disabled", || {
        link_status(&sim, &link_id) == ErpLinkStatus::Disabled
    })
    .await;
}

#[tokio::test]
async fn auto_sync_off_leaves_links() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Changeable)
        .unwrap()
        .id
        .clone();
    let (link_id, _) = active_link_of_seller(&sim, &seller_id);

    let (status, _) = sim
        .post(&format!("/sellers/{seller_id}/disable"), None)
        .await;

    // Without auto_sync nothing is scheduled, so the link waits for a synchronize call.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(link_status(&sim, &link_id), ErpLinkStatus::Active);
}
