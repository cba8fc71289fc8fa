//! The platform client against the simulator: typed answers, classified failures,
//! timeouts that end hanging calls, and pagination.

use std::time::{Duration, Instant};

use erp_sync::config::{Config, Secret};
use erp_sync::ids::{BuyerId, ErpLinkId, SellerId};
use erp_sync::platform::{Buyer, CallContext, PlatformClient, PlatformError, Rql};
use erp_sync::simulator::{
    self, BuyerCase, DataSet, Fault, FaultRule, LinkCase, RequestFilter, RetryAfter,
    RunningSimulator, SellerCase, SimulatorConfig,
};

/// Time limit of the client in these tests.
const TIMEOUT: Duration = Duration::from_secs(1);

struct Fixture {
    simulator: RunningSimulator,
    client: PlatformClient,
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with_token(simulator::DEFAULT_TOKEN).await
    }

    async fn start_with_token(token: &str) -> Fixture {
        Self::start_with(token, SimulatorConfig::default()).await
    }

    async fn start_with(token: &str, config: SimulatorConfig) -> Fixture {
        let config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let simulator = simulator::start(config).await.expect("simulator starts");
        let mut platform = Config::defaults().platform;
        platform.url = simulator.base_url();
        platform.token = Secret::new(token);
        platform.timeout = TIMEOUT;
        platform.page_limit = 7;
        let client = PlatformClient::new(&platform).expect("client builds");
        Fixture { simulator, client }
    }

    fn pick<T>(&self, choose: impl FnOnce(&DataSet) -> T) -> T {
        choose(&self.simulator.control().data())
    }

    fn fault(&self, path: String, fault: Fault) {
        self.simulator
            .control()
            .add_fault(FaultRule::new(path, fault))
            .expect("the fault rule is valid");
    }
}

fn link_id(id: &str) -> ErpLinkId {
    ErpLinkId::parse(id).expect("a link id")
}

fn buyer_id(id: &str) -> BuyerId {
    BuyerId::parse(id).expect("a buyer id")
}

#[tokio::test]
async fn erp_link_is_read_with_its_status() {
    let fixture = Fixture::start().await;
    let (id, buyer) = fixture.pick(|data| {
        let link = data.find_link(LinkCase::Unblockable).unwrap();
        (link.id.clone(), link.buyer.id.clone())
    });

    let link = fixture
        .client
        .get_erp_link(&link_id(&id), &mut CallContext::default())
        .await
        .unwrap();
    assert_eq!(link.id, id);
    assert_eq!(link.status.as_deref(), Some("Blocked"));
    assert_eq!(link.buyer.map(|reference| reference.id), Some(buyer));
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn rejected_action_is_a_permanent_status_error() {
    let fixture = Fixture::start().await;
    let buyer = fixture.pick(|data| data.find_buyer(BuyerCase::Enabled).unwrap().id.clone());

    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&buyer), &mut CallContext::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(!error.is_retryable());
    let problem = error.problem().expect("Problem Details are parsed");
    assert_eq!(problem.status, Some(400));
    assert!(problem.title.is_some());
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn unknown_id_is_not_found() {
    let fixture = Fixture::start().await;
    let error = fixture
        .client
        .get_erp_link(&link_id("ERP-0000-0000-0000"), &mut CallContext::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    assert!(!error.is_retryable());
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn refused_token_is_unauthorized() {
    let fixture = Fixture::start_with_token("idt:TKN-0000-0001:wrong").await;
    let buyer = fixture.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&buyer), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(error.is_unauthorized());
    assert!(!error.is_retryable());
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_read_in_both_forms() {
    let fixture = Fixture::start().await;
    let (first, second) = fixture.pick(|data| {
        let mut buyers = data.find_buyers(BuyerCase::Active);
        (
            buyers.next().unwrap().id.clone(),
            buyers.next().unwrap().id.clone(),
        )
    });
    let path = |buyer: &str| format!("/public/v1/accounts/buyers/{buyer}/synchronize");
    fixture.fault(
        path(&first),
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(5)),
            detail: None,
        },
    );
    fixture.fault(
        path(&second),
        Fault::Status {
            status: 503,
            retry_after: Some(RetryAfter::HttpDate(7)),
            detail: None,
        },
    );

    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&first), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));

    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&second), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(error.is_retryable());
    let delay = error.retry_after().expect("an HTTP date is read");
    assert!(
        (Duration::from_secs(6)..=Duration::from_secs(8)).contains(&delay),
        "{delay:?}"
    );
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let fixture = Fixture::start().await;
    let buyer = fixture.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    let path = format!("/public/v1/accounts/buyers/{buyer}/synchronize");
    for status in [500, 502, 503, 504] {
        fixture.simulator.control().clear_faults();
        fixture.fault(
            path.clone(),
            Fault::Status {
                status,
                retry_after: None,
                detail: None,
            },
        );
        let error = fixture
            .client
            .synchronize_buyer(&buyer_id(&buyer), &mut CallContext::default())
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(status));
        assert!(error.is_retryable(), "{status}");
    }
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn hanging_call_times_out() {
    let fixture = Fixture::start().await;
    let buyer = fixture.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    fixture.fault(
        format!("/public/v1/accounts/buyers/{buyer}/synchronize"),
        Fault::Hang,
    );

    let started = Instant::now();
    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&buyer), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(matches!(error, PlatformError::Timeout(_)), "{error:?}");
    assert!(error.is_retryable());
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn stalled_body_times_out() {
    let fixture = Fixture::start().await;
    let link = fixture.pick(|data| data.find_link(LinkCase::Blockable).unwrap().id.clone());
    fixture.fault(
        format!("/public/v1/accounts/erp-links/{link}"),
        Fault::StallBody,
    );

    let started = Instant::now();
    let error = fixture
        .client
        .get_erp_link(&link_id(&link), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(matches!(error, PlatformError::Timeout(_)), "{error:?}");
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn closed_connection_is_a_retryable_connection_error() {
    let fixture = Fixture::start().await;
    let buyer = fixture.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    fixture.fault(
        format!("/public/v1/accounts/buyers/{buyer}/synchronize"),
        Fault::CloseConnection { reset: false },
    );

    let error = fixture
        .client
        .synchronize_buyer(&buyer_id(&buyer), &mut CallContext::default())
        .await
        .unwrap_err();
    assert!(matches!(error, PlatformError::Connection(_)), "{error:?}");
    assert!(error.is_retryable());
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn pager_follows_pagination_to_the_end() {
    // A small data set, so that sellers have tens of buyers: several pages of 7.
    let config = SimulatorConfig {
        buyers: 300,
        ..SimulatorConfig::default()
    };
    let fixture = Fixture::start_with(simulator::DEFAULT_TOKEN, config).await;
    let (seller, expected) = fixture.pick(|data| {
        let seller = data
            .find_seller_with_buyers(SellerCase::Active, 20..200)
            .unwrap();
        let mut buyers: Vec<String> = data
            .buyers_of_seller(&seller.id)
            .map(|buyer| buyer.id.clone())
            .collect();
        buyers.sort();
        (seller.id.clone(), buyers)
    });

    let mut context = CallContext::default();
    let seller_id = SellerId::parse(&seller).unwrap();
    let buyers: Vec<Buyer> = fixture
        .client
        .list_seller_buyers(&seller_id, &mut context)
        .await
        .unwrap();
    let mut found: Vec<String> = buyers.into_iter().map(|buyer| buyer.id).collect();
    found.sort();
    assert_eq!(found, expected);

    let pages = fixture
        .simulator
        .control()
        .find_requests(&RequestFilter::path("/public/v1/accounts/buyers"));
    assert_eq!(
        pages.len(),
        expected.len().div_ceil(7),
        "one request per page of 7"
    );
    assert!(pages.iter().all(|page| page.status == Some(200)));
    assert_eq!(
        context.calls.len(),
        pages.len(),
        "every page is recorded for the audit trail"
    );
    fixture.simulator.shutdown().await;
}

#[tokio::test]
async fn pair_query_finds_the_link() {
    let fixture = Fixture::start().await;
    let (link, buyer, seller) = fixture.pick(|data| {
        let link = data.find_link(LinkCase::Blockable).unwrap();
        (
            link.id.clone(),
            link.buyer.id.clone(),
            link.seller.id.clone(),
        )
    });

    let mut context = CallContext::default();
    let found = fixture
        .client
        .find_erp_link(
            &buyer_id(&buyer),
            &SellerId::parse(&seller).unwrap(),
            &mut context,
        )
        .await
        .unwrap();
    assert_eq!(found.map(|found| found.id), Some(link));

    let missing = fixture
        .client
        .find_erp_link(
            &buyer_id(&buyer),
            &SellerId::parse("SEL-0000-0000").unwrap(),
            &mut context,
        )
        .await
        .unwrap();
    assert_eq!(missing, None);

    let query = fixture
        .simulator
        .control()
        .find_requests(&RequestFilter::path("/public/v1/accounts/erp-links"))[0]
        .query
        .clone()
        .unwrap();
    let expected = Rql::and([Rql::eq("buyer.id", &buyer), Rql::eq("seller.id", &seller)]).encoded();
    assert!(query.starts_with(&expected), "{query}");
    assert!(query.contains("limit=2"), "{query}");
    fixture.simulator.shutdown().await;
}
