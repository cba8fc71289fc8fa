//! Responses match the platform's documented shapes: field names, null fields left out,
//! references, `$meta`, Problem Details, and authentication.

use erp_sync::simulator::{
    BuyerCase, DEFAULT_TOKEN, LinkCase, PROBLEM_CONTENT_TYPE, SellerCase, UnauthorizedBody,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{start, start_with};

/// Fails on any null anywhere in the response, since the platform leaves null fields out.
fn assert_no_nulls(value: &Value, path: &str) {
    match value {
        Value::Null => panic!("`{path}` is null"),
        Value::Object(fields) => {
            for (key, child) in fields {
                assert_no_nulls(child, &format!("{path}.{key}"));
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                assert_no_nulls(child, &format!("{path}[{index}]"));
            }
        }
        _ => {}
    }
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn is_id(value: &Value, prefix: &str, groups: usize) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let parts: Vec<&str> = text.split('-').collect();
    parts[0] == prefix
        && parts.len() == groups + 1
        && parts[1..]
            .iter()
            .all(|part| part.len() == 4 && part.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
async fn erp_link_get_has_documented_shape() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();

    let (status, link) = sim.get(&format!("/erp-links/{link_id}")).await;

    assert_eq!(status, StatusCode::OK);
    assert_no_nulls(&link, "link");
    assert!(is_id(&link["id"], "ERP", 3), "{}", link["id"]);
    assert_eq!(link["status"], "Active");
    let buyer_name = link["buyer"]["name"].as_str().unwrap();
    let seller_name = link["seller"]["name"].as_str().unwrap();
    assert_eq!(link["name"], format!("{buyer_name} - {seller_name}"));
    assert_eq!(keys(&link["buyer"]), ["id", "name"]);
    assert!(is_id(&link["buyer"]["id"], "BUY", 2));
    assert!(is_id(&link["seller"]["id"], "SEL", 2));
    assert!(link["seller"]["externalId"].is_string());
    assert!(link["seller"]["icon"].as_str().unwrap().ends_with("/icon"));
    for field in ["erpCompanyContact", "erpCustomer", "accountExternalId"] {
        assert!(
            link["externalIds"][field].is_string(),
            "externalIds.{field}"
        );
    }
    for field in ["addressLine1", "postCode", "city", "country"] {
        assert!(link["address"][field].is_string(), "address.{field}");
    }
    assert!(link["companyName"].is_string());
    assert!(link["revision"].is_u64());
    assert!(link.get("audit").is_none(), "audit is omitted by default");
    assert!(
        link.get("statusBeforeDisabled").is_none(),
        "internal fields stay hidden"
    );
    assert_eq!(link["$meta"]["omitted"], serde_json::json!(["audit"]));
}

#[tokio::test]
async fn buyer_get_has_documented_shape() {
    let sim = start().await;
    let buyer_id = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .id
        .clone();

    let (status, buyer) = sim.get(&format!("/buyers/{buyer_id}")).await;

    assert_eq!(status, StatusCode::OK);
    assert_no_nulls(&buyer, "buyer");
    assert_eq!(buyer["id"], buyer_id.as_str());
    assert_eq!(buyer["status"], "Active");
    assert!(buyer["name"].is_string());
    assert!(buyer["taxId"].is_string());
    for field in ["name", "firstName", "lastName", "email"] {
        assert!(buyer["contact"][field].is_string(), "contact.{field}");
    }
    assert!(buyer["externalIds"]["erpCustomer"].is_string());
    assert!(buyer["externalIds"]["erpCompanyContact"].is_string());
    assert!(is_id(&buyer["account"]["id"], "ACC", 2));
    assert_eq!(buyer["account"]["type"], "Client");
    let sellers = buyer["sellers"].as_array().unwrap();
    assert!(!sellers.is_empty());
    for seller in sellers {
        assert!(is_id(&seller["id"], "SEL", 2));
        assert!(seller["externalId"].is_string());
        assert!(seller["name"].as_str().unwrap().starts_with("SoftwareONE "));
    }
    assert!(buyer.get("audit").is_none());
}

#[tokio::test]
async fn buyer_sellers_follow_its_links() {
    let sim = start().await;
    let (buyer_id, expected) = {
        let data = sim.control().data();
        let buyer = data.find_buyer(BuyerCase::Active).unwrap();
        let sellers: Vec<String> = data
            .links_of_buyer(&buyer.id)
            .map(|link| link.seller.id.clone())
            .collect();
        (buyer.id.clone(), sellers)
    };

    let (_, buyer) = sim.get(&format!("/buyers/{buyer_id}")).await;

    let seen: Vec<&str> = buyer["sellers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn seller_get_has_documented_shape() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Active)
        .unwrap()
        .id
        .clone();

    let (status, seller) = sim.get(&format!("/sellers/{seller_id}")).await;

    assert_eq!(status, StatusCode::OK);
    assert_no_nulls(&seller, "seller");
    assert!(seller["name"].as_str().unwrap().starts_with("SoftwareONE "));
    assert!(seller["externalId"].is_string());
    let currencies = seller["currencies"].as_array().unwrap();
    assert!(
        currencies
            .iter()
            .any(|currency| currency["isDefault"] == true)
    );
    assert!(currencies[0]["billingEnabled"].is_boolean());
    assert_eq!(
        seller["$meta"]["omitted"],
        serde_json::json!(["buyers", "audit"])
    );
}

#[tokio::test]
async fn seller_currency_shapes_switch() {
    let sim = start().await;
    let seller_id = sim
        .control()
        .data()
        .find_seller(SellerCase::Active)
        .unwrap()
        .id
        .clone();
    let path = format!("/sellers/{seller_id}");

    sim.control()
        .update_behaviour(|behaviour| {
            behaviour.seller_currencies = erp_sync::simulator::CurrencyShape::Strings
        })
        .unwrap();
    let (_, strings) = sim.get(&path).await;
    sim.control()
        .update_behaviour(|behaviour| {
            behaviour.seller_currencies = erp_sync::simulator::CurrencyShape::Single
        })
        .unwrap();
    let (_, single) = sim.get(&path).await;

    assert!(strings["currencies"][0].is_string());
    assert!(single["currency"].is_string());
    assert!(single.get("currencies").is_none());
}

#[tokio::test]
async fn licensee_get_has_documented_shape() {
    let sim = start().await;
    let licensee_id = sim
        .control()
        .data()
        .licensees()
        .iter()
        .next()
        .unwrap()
        .id
        .clone();

    let (status, licensee) = sim.get(&format!("/licensees/{licensee_id}")).await;

    assert_eq!(status, StatusCode::OK);
    assert_no_nulls(&licensee, "licensee");
    assert!(is_id(&licensee["id"], "LCE", 3));
    assert!(licensee["useBuyerAddress"].is_boolean());
    assert_eq!(keys(&licensee["buyer"]), ["id", "name"]);
    assert!(licensee["seller"]["externalId"].is_string());
    assert!(is_id(&licensee["account"]["id"], "ACC", 2));
    assert_eq!(licensee["eligibility"]["client"], true);
}

#[tokio::test]
async fn accounts_get_and_list() {
    let sim = start().await;

    let (status, list) = sim.get("/accounts?eq(type,Operations)").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["$meta"]["pagination"]["total"], 1);
    let account_id = list["data"][0]["id"].as_str().unwrap().to_owned();

    let (status, account) = sim.get(&format!("/accounts/{account_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["type"], "Operations");
    assert_eq!(account["status"], "Active");
}

#[tokio::test]
async fn audit_only_with_select() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .id
        .clone();

    let (_, plain) = sim.get(&format!("/erp-links/{link_id}")).await;
    let (_, with_audit) = sim
        .get(&format!("/erp-links/{link_id}?select=+audit"))
        .await;
    let (_, bare_select) = sim.get(&format!("/erp-links/{link_id}?select=audit")).await;

    assert!(plain.get("audit").is_none());
    let audit = &with_audit["audit"];
    for event in ["created", "updated", "blocked"] {
        let at = audit[event]["at"].as_str().unwrap();
        assert_eq!(
            at.len(),
            "2025-01-21T12:27:31.716Z".len(),
            "{event}.at has milliseconds: {at}"
        );
        assert!(at.ends_with('Z'));
        assert!(audit[event]["by"]["id"].is_string());
        assert!(audit[event]["by"]["name"].is_string());
    }
    assert!(with_audit.get("$meta").is_none(), "nothing is omitted");
    assert_eq!(bare_select["audit"], with_audit["audit"]);
}

#[tokio::test]
async fn select_minus_removes_fields() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();

    let (_, link) = sim
        .get(&format!(
            "/erp-links/{link_id}?select=-address,-externalIds.erpCustomer"
        ))
        .await;

    assert!(link.get("address").is_none());
    assert!(link["externalIds"].get("erpCustomer").is_none());
    assert!(link["externalIds"]["erpCompanyContact"].is_string());
}

#[tokio::test]
async fn list_has_pagination_meta() {
    let sim = start().await;
    let total = sim.control().data().erp_links().len();

    let (status, list) = sim.get("/erp-links?limit=3&offset=2").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&list), ["$meta", "data"]);
    let pagination = &list["$meta"]["pagination"];
    assert_eq!(pagination["offset"], 2);
    assert_eq!(pagination["limit"], 3);
    assert_eq!(pagination["total"], total);
    assert_eq!(list["$meta"]["omitted"], serde_json::json!(["audit"]));
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    for item in list["data"].as_array().unwrap() {
        assert_no_nulls(item, "item");
        assert!(item.get("$meta").is_none());
    }
}

#[tokio::test]
async fn unknown_ids_answer_404() {
    let sim = start().await;
    for path in [
        "/buyers/BUY-0000-0000",
        "/sellers/SEL-0000-0000",
        "/erp-links/ERP-0000-0000-0000",
        "/licensees/LCE-0000-0000-0000",
        "/accounts/ACC-0000-0000",
        "/buyers/not-an-id",
    ] {
        let response = sim.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            PROBLEM_CONTENT_TYPE,
            "{path}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["title"], "Not Found", "{path}");
        assert_eq!(problem["status"], 404, "{path}");
    }
    for path in [
        "/buyers/BUY-0000-0000/synchronize",
        "/erp-links/ERP-0000-0000-0000/block",
        "/erp-links/ERP-0000-0000-0000/unblock",
        "/sellers/SEL-0000-0000/disable",
        "/licensees/LCE-0000-0000-0000/disable",
    ] {
        let (status, problem) = sim.post(path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            problem["detail"].as_str().unwrap().contains("0000-0000"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn unknown_route_answers_404() {
    let sim = start().await;

    let (status, problem) = sim.get("/cloud-tenants").await;
    let wrong_method = sim
        .request(Method::GET, "/erp-links/ERP-0000-0000-0000/block")
        .send()
        .await
        .unwrap();

    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["content-type"], PROBLEM_CONTENT_TYPE);
}

#[tokio::test]
async fn missing_token_answers_401() {
    let sim = start().await;
    let url = sim.url("/buyers");

    let missing = sim.client.get(&url).send().await.unwrap();
    let wrong = sim
        .client
        .get(&url)
        .bearer_auth("idt:TKN-0000-0000:wrong")
        .send()
        .await
        .unwrap();
    let basic = sim
        .client
        .get(&url)
        .basic_auth("user", Some(DEFAULT_TOKEN))
        .send()
        .await
        .unwrap();
    let right = sim
        .client
        .get(&url)
        .bearer_auth(DEFAULT_TOKEN)
        .send()
        .await
        .unwrap();

    for response in [&missing, &wrong, &basic] {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(response.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    }
    assert_eq!(right.status(), StatusCode::OK);
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["title"], "Unauthorized");
    assert_eq!(problem["status"], 401);
}

#[tokio::test]
async fn unauthorized_body_can_be_empty() {
    let sim = start_with(|config| config.unauthorized_body = UnauthorizedBody::Empty).await;

    let response = sim.client.get(sim.url("/buyers")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn configured_tokens_replace_default() {
    let sim = start_with(|config| config.tokens = vec!["idt:TKN-1111-2222:other".into()]).await;

    let default = sim
        .client
        .get(sim.url("/buyers"))
        .bearer_auth(DEFAULT_TOKEN)
        .send()
        .await
        .unwrap();
    let configured = sim
        .client
        .get(sim.url("/buyers"))
        .bearer_auth("idt:TKN-1111-2222:other")
        .send()
        .await
        .unwrap();

    assert_eq!(default.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(configured.status(), StatusCode::OK);
}

#[tokio::test]
async fn client_token_cannot_run_operations_actions() {
    let client_token = "idt:TKN-3333-4444:client";
    let sim = start_with(|config| config.client_tokens = vec![client_token.into()]).await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();

    let read = sim
        .client
        .get(sim.url(&format!("/erp-links/{link_id}")))
        .bearer_auth(client_token)
        .send()
        .await
        .unwrap();
    let block = sim
        .client
        .post(sim.url(&format!("/erp-links/{link_id}/block")))
        .bearer_auth(client_token)
        .send()
        .await
        .unwrap();

    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(block.status(), StatusCode::FORBIDDEN);
    assert_eq!(block.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    assert_eq!(
        sim.control()
            .data()
            .erp_link(&link_id)
            .unwrap()
            .status
            .as_str(),
        "Active"
    );
}

#[tokio::test]
async fn trace_id_echoes_traceparent() {
    let sim = start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let with_header = sim
        .request(Method::GET, "/buyers/BUY-0000-0000")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    let without = sim
        .request(Method::GET, "/buyers/BUY-0000-0000")
        .send()
        .await
        .unwrap();

    let echoed: Value = with_header.json().await.unwrap();
    let generated: Value = without.json().await.unwrap();
    let echoed = echoed["traceId"].as_str().unwrap();
    let generated = generated["traceId"].as_str().unwrap();
    assert!(
        echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{echoed}"
    );
    assert_eq!(generated.split('-').count(), 4, "{generated}");
    assert_eq!(
        generated.split('-').nth(1).unwrap().len(),
        32,
        "{generated}"
    );
    assert!(!generated.contains("4bf92f3577b34da6"));
}

#[tokio::test]
async fn problem_has_documented_fields() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Disabled)
        .unwrap()
        .id
        .clone();

    let response = sim
        .request(Method::POST, &format!("/erp-links/{link_id}/block"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://tools.ietf.org/html/rfc9110#section-15.5.1"
    );
    assert_eq!(problem["title"], "Bad Request");
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"].as_str().unwrap().contains(&link_id));
    assert!(problem["traceId"].is_string());
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["id"], "erp_link_disabled");
    assert!(errors[0]["message"].is_string());
}
