//! List queries: pagination, RQL filters (raw and percent-encoded), order and select.

use std::collections::HashSet;

use erp_sync::simulator::model::{BuyerStatus, ErpLinkStatus};
use erp_sync::simulator::{BuyerCase, LinkCase, SellerCase, VALIDATION_TITLE};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestSimulator, start};

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn total(list: &Value) -> u64 {
    list["$meta"]["pagination"]["total"].as_u64().unwrap()
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// Follows `offset` until the end, as a client paging through a list does.
async fn all_pages(sim: &TestSimulator, path_and_filter: &str, limit: u64) -> (Vec<String>, u64) {
    let mut collected = Vec::new();
    let mut offset = 0;
    loop {
        let (status, page) = sim
            .get(&format!("{path_and_filter}&limit={limit}&offset={offset}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["$meta"]["pagination"]["offset"], offset);
        assert_eq!(page["$meta"]["pagination"]["limit"], limit);
        let page_ids = ids(&page);
        let total = total(&page);
        collected.extend(page_ids);
        offset += limit;
        if offset >= total {
            return (collected, total);
        }
    }
}

#[tokio::test]
async fn pagination_walks_every_page() {
    let sim = start().await;
    let (seller_id, expected) = {
        let data = sim.control().data();
        let seller = data
            .find_seller_with_buyers(SellerCase::Active, 250..)
            .unwrap();
        let buyers: Vec<String> = data
            .buyers_of_seller(&seller.id)
            .map(|buyer| buyer.id.clone())
            .collect();
        (seller.id.clone(), buyers)
    };

    let (collected, total) = all_pages(
        &sim,
        &format!("/buyers?any(sellers,eq(id,\"{seller_id}\"))"),
        100,
    )
    .await;

    assert_eq!(total, expected.len() as u64);
    assert_eq!(collected, expected, "every buyer once, in id order");
    assert_eq!(
        collected.iter().collect::<HashSet<_>>().len(),
        collected.len()
    );
}

#[tokio::test]
async fn default_and_maximum_limit() {
    let sim = start().await;

    let (_, default) = sim.get("/buyers").await;
    let (_, capped) = sim.get("/buyers?limit=5000").await;
    let (_, count_only) = sim.get("/buyers?eq(status,Enabled)&limit=0").await;

    assert_eq!(default["$meta"]["pagination"]["limit"], 100);
    assert_eq!(default["data"].as_array().unwrap().len(), 100);
    assert_eq!(capped["$meta"]["pagination"]["limit"], 1000);
    assert_eq!(capped["data"].as_array().unwrap().len(), 1000);
    assert!(count_only["data"].as_array().unwrap().is_empty());
    let enabled = sim
        .control()
        .data()
        .buyers()
        .iter()
        .filter(|buyer| buyer.status == BuyerStatus::Enabled)
        .count();
    assert_eq!(total(&count_only), enabled as u64);
}

#[tokio::test]
async fn page_limits_are_settings() {
    let sim = start().await;
    sim.control()
        .update_behaviour(|behaviour| {
            behaviour.default_page_limit = 10;
            behaviour.max_page_limit = 20;
        })
        .unwrap();

    let (_, default) = sim.get("/erp-links").await;
    let (_, capped) = sim.get("/erp-links?limit=100").await;

    assert_eq!(default["data"].as_array().unwrap().len(), 10);
    assert_eq!(capped["$meta"]["pagination"]["limit"], 20);
}

#[tokio::test]
async fn offset_past_end_is_empty() {
    let sim = start().await;
    let count = sim.control().data().sellers().len();

    let (status, list) = sim.get(&format!("/sellers?offset={count}")).await;

    assert_eq!(status, StatusCode::OK);
    assert!(list["data"].as_array().unwrap().is_empty());
    assert_eq!(total(&list), count as u64);
}

#[tokio::test]
async fn invalid_paging_answers_400() {
    let sim = start().await;

    let (limit_status, limit) = sim.get("/buyers?limit=abc").await;
    let (offset_status, offset) = sim.get("/buyers?offset=-1").await;

    assert_eq!(limit_status, StatusCode::BAD_REQUEST);
    assert_eq!(limit["title"], VALIDATION_TITLE);
    assert!(
        limit["errors"]["limit"][0]
            .as_str()
            .unwrap()
            .contains("abc")
    );
    assert_eq!(offset_status, StatusCode::BAD_REQUEST);
    assert!(offset["errors"]["offset"][0].is_string());
}

#[tokio::test]
async fn link_of_pair_raw_and_encoded() {
    let sim = start().await;
    let link = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .clone();
    let expression = format!(
        "and(eq(buyer.id,\"{}\"),eq(seller.id,\"{}\"))",
        link.buyer.id, link.seller.id
    );

    let (raw_status, raw) = sim.get(&format!("/erp-links?{expression}&limit=2")).await;
    let (encoded_status, encoded) = sim
        .get(&format!("/erp-links?{}&limit=2", encode(&expression)))
        .await;
    let quotes_only = expression.replace('"', "%22");
    let (_, partly) = sim.get(&format!("/erp-links?{quotes_only}&limit=2")).await;

    assert_eq!(raw_status, StatusCode::OK);
    assert_eq!(encoded_status, StatusCode::OK);
    assert_eq!(ids(&raw), [link.id.as_str()]);
    assert_eq!(ids(&encoded), [link.id.as_str()]);
    assert_eq!(ids(&partly), [link.id]);
}

#[tokio::test]
async fn unquoted_ids_match_too() {
    let sim = start().await;
    let link = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .clone();

    let (_, list) = sim.get(&format!("/erp-links?eq(id,{})", link.id)).await;

    assert_eq!(ids(&list), [link.id]);
}

#[tokio::test]
async fn eq_status_filters_links() {
    let sim = start().await;
    let blocked = sim
        .control()
        .data()
        .erp_links()
        .iter()
        .filter(|link| link.status == ErpLinkStatus::Blocked)
        .count();

    let (status, list) = sim.get("/erp-links?eq(status,Blocked)&limit=1000").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(total(&list), blocked as u64);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|link| link["status"] == "Blocked")
    );
}

#[tokio::test]
async fn top_level_expressions_are_joined_with_and() {
    let sim = start().await;
    let (seller_id, expected) = {
        let data = sim.control().data();
        let seller = data.find_seller(SellerCase::Active).unwrap();
        let blocked: Vec<String> = data
            .links_of_seller(&seller.id)
            .filter(|link| link.status == ErpLinkStatus::Blocked)
            .map(|link| link.id.clone())
            .collect();
        (seller.id.clone(), blocked)
    };

    let (_, separate) = sim
        .get(&format!(
            "/erp-links?eq(seller.id,\"{seller_id}\")&eq(status,Blocked)&limit=1000"
        ))
        .await;
    let (_, combined) = sim
        .get(&format!(
            "/erp-links?and(eq(seller.id,\"{seller_id}\"),eq(status,Blocked))&limit=1000"
        ))
        .await;

    assert!(!expected.is_empty());
    assert_eq!(ids(&separate), expected);
    assert_eq!(ids(&combined), expected);
}

#[tokio::test]
async fn in_ne_not_and_or_combine() {
    let sim = start().await;
    let count = |status: &str| {
        sim.control()
            .data()
            .erp_links()
            .iter()
            .filter(|link| link.status.as_str() == status)
            .count() as u64
    };
    let (active, blocked, disabled) = (count("Active"), count("Blocked"), count("Disabled"));

    let (_, in_list) = sim
        .get("/erp-links?in(status,(Blocked,Disabled))&limit=0")
        .await;
    let (_, out_list) = sim
        .get("/erp-links?out(status,(Blocked,Disabled))&limit=0")
        .await;
    let (_, ne) = sim.get("/erp-links?ne(status,Active)&limit=0").await;
    let (_, not) = sim.get("/erp-links?not(eq(status,Active))&limit=0").await;
    let (_, or) = sim
        .get("/erp-links?or(eq(status,Blocked),eq(status,Disabled))&limit=0")
        .await;

    assert_eq!(total(&in_list), blocked + disabled);
    assert_eq!(total(&out_list), active);
    assert_eq!(total(&ne), blocked + disabled);
    assert_eq!(total(&not), blocked + disabled);
    assert_eq!(total(&or), blocked + disabled);
}

#[tokio::test]
async fn any_sellers_lists_buyers_of_seller() {
    let sim = start().await;
    let (seller_id, expected) = {
        let data = sim.control().data();
        let seller = data
            .find_seller_with_buyers(SellerCase::Changeable, 1..=10)
            .unwrap();
        (
            seller.id.clone(),
            data.buyers_of_seller(&seller.id)
                .map(|buyer| buyer.id.clone())
                .collect::<Vec<_>>(),
        )
    };

    let (_, quoted) = sim
        .get(&format!("/buyers?any(sellers,eq(id,\"{seller_id}\"))"))
        .await;
    let (_, shortcut) = sim
        .get(&format!("/buyers?any(sellers,id={seller_id})"))
        .await;
    let (_, with_status) = sim
        .get(&format!(
            "/buyers?and(any(sellers,eq(id,\"{seller_id}\")),eq(status,Active))"
        ))
        .await;

    assert_eq!(ids(&quoted), expected);
    assert_eq!(ids(&shortcut), expected);
    assert!(ids(&with_status).iter().all(|id| expected.contains(id)));
    for buyer in quoted["data"].as_array().unwrap() {
        assert!(
            buyer["sellers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|seller| seller["id"] == seller_id.as_str())
        );
    }
}

#[tokio::test]
async fn ilike_matches_case_insensitively() {
    let sim = start().await;
    let name = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .name
        .clone();
    let word = name.split(' ').nth(1).unwrap().to_uppercase();

    let (status, list) = sim
        .get(&format!("/buyers?ilike(name,*{word}*)&limit=1000"))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert!(total(&list) >= 1);
    for buyer in list["data"].as_array().unwrap() {
        assert!(
            buyer["name"]
                .as_str()
                .unwrap()
                .to_uppercase()
                .contains(&word),
            "{}",
            buyer["name"]
        );
    }
}

#[tokio::test]
async fn quoted_value_with_spaces() {
    let sim = start().await;
    let buyer = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .clone();
    let expression = format!("eq(name,\"{}\")", buyer.name);

    let (status, list) = sim
        .get(&format!("/buyers?{}&limit=1000", encode(&expression)))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert!(ids(&list).contains(&buyer.id));
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["name"] == buyer.name.as_str())
    );
}

#[tokio::test]
async fn shortcut_equals_filters() {
    let sim = start().await;

    let (_, shortcut) = sim.get("/sellers?status=Disabled").await;
    let (_, operator) = sim.get("/sellers?eq(status,Disabled)").await;

    assert_eq!(total(&shortcut), 1);
    assert_eq!(ids(&shortcut), ids(&operator));
}

#[tokio::test]
async fn nested_fields_filter() {
    let sim = start().await;
    let seller = sim
        .control()
        .data()
        .find_seller(SellerCase::Active)
        .unwrap()
        .clone();

    let (_, list) = sim
        .get(&format!(
            "/erp-links?eq(seller.externalId,{})&limit=0",
            seller.external_id
        ))
        .await;

    assert_eq!(
        total(&list),
        sim.control().data().links_of_seller(&seller.id).count() as u64
    );
}

#[tokio::test]
async fn order_by_name_both_ways() {
    let sim = start().await;

    let (_, ascending) = sim.get("/sellers?order=name").await;
    let (_, descending) = sim.get("/sellers?order=-name").await;
    let (_, default) = sim.get("/sellers").await;

    let names = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|seller| seller["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut sorted = names(&ascending);
    sorted.sort();
    assert_eq!(names(&ascending), sorted);
    sorted.reverse();
    assert_eq!(names(&descending), sorted);
    let mut default_ids = ids(&default);
    let in_order = default_ids.clone();
    default_ids.sort();
    assert_eq!(in_order, default_ids, "the default order is by id");
}

#[tokio::test]
async fn order_ties_keep_id_order() {
    let sim = start().await;

    let (_, list) = sim.get("/erp-links?order=status&limit=1000").await;

    let items = list["data"].as_array().unwrap();
    for pair in items.windows(2) {
        if pair[0]["status"] == pair[1]["status"] {
            assert!(
                pair[0]["id"].as_str() < pair[1]["id"].as_str(),
                "{} before {}",
                pair[0]["id"],
                pair[1]["id"]
            );
        }
    }
}

#[tokio::test]
async fn select_audit_on_lists() {
    let sim = start().await;

    let (_, list) = sim
        .get("/erp-links?eq(status,Blocked)&select=+audit&order=-audit.blocked.at&limit=5")
        .await;

    assert!(list["$meta"].get("omitted").is_none());
    let blocked_at: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link["audit"]["blocked"]["at"].as_str().unwrap())
        .collect();
    let mut sorted = blocked_at.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(blocked_at, sorted);
}

#[tokio::test]
async fn audit_filter_needs_select() {
    let sim = start().await;

    let (status, problem) = sim
        .get("/erp-links?gt(audit.created.at,\"2024-06-01T00:00:00.000Z\")")
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = problem["errors"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()[0]
        .as_str()
        .unwrap();
    assert!(message.contains("select=audit"), "{message}");
}

#[tokio::test]
async fn malformed_queries_answer_400() {
    let sim = start().await;
    let cases = [
        ("eq(status,Active", "eq(status,Active"),
        ("foo(status,Active)", "foo(status,Active)"),
        ("eq(status,%22Active)", "eq(status,\"Active)"),
        ("and(eq(status,Active),)", "and(eq(status,Active),)"),
        ("eq(nosuchfield,1)", "eq(nosuchfield,1)"),
        ("order=-", "order"),
    ];
    for (query, key) in cases {
        let (status, problem) = sim.get(&format!("/erp-links?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(problem["title"], VALIDATION_TITLE, "{query}");
        assert_eq!(problem["status"], 400, "{query}");
        let messages = problem["errors"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: {problem}"));
        assert!(messages[0].is_string(), "{query}");
        assert!(problem["traceId"].is_string(), "{query}");
    }

    let (status, problem) = sim
        .get(&format!("/erp-links?{}", encode("eq(status,Active")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["errors"]["eq(status,Active"][0].is_string(),
        "errors are keyed by the decoded part: {problem}"
    );
}

#[tokio::test]
async fn rql_parameter_is_rejected() {
    let sim = start().await;

    let (status, problem) = sim.get("/erp-links?rql=eq(status,Active)").await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = problem["errors"]["rql=eq(status,Active)"][0]
        .as_str()
        .unwrap();
    assert!(message.starts_with("Invalid equals shortcut"), "{message}");
}
