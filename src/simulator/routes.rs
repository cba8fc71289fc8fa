//! Handlers of the Accounts API endpoints under `/public/v1/accounts`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::config::{Behaviour, SynchronizeResponse};
use super::dataset::DataSet;
use super::model::{Account, Buyer, ErpLink, Licensee, Seller, SellerStatus, now_millis};
use super::problem::Problem;
use super::query::{self, Select};
use super::render::{RenderOptions, Resource, apply_exclusions};
use super::rules::{self, Change, Context, SellerAction};
use super::state::{App, Caller};

/// Path prefix of every Accounts API endpoint.
pub const API_PREFIX: &str = "/public/v1/accounts";

type HandlerResult = Result<Response, Problem>;

/// Builds the router of the Accounts API endpoints, relative to [`API_PREFIX`].
pub(crate) fn api_router() -> Router<Arc<App>> {
    Router::new()
        .route("/accounts", get(list::<Account>))
        .route("/accounts/{id}", get(get_one::<Account>))
        .route("/buyers", get(list::<Buyer>))
        .route("/buyers/{id}", get(get_one::<Buyer>))
        .route("/buyers/{id}/synchronize", post(synchronize))
        .route("/sellers", get(list::<Seller>))
        .route(
            "/sellers/{id}",
            get(get_one::<Seller>).delete(|action: Action| async move {
                seller_action(action, SellerAction::Delete)
            }),
        )
        .route(
            "/sellers/{id}/activate",
            post(|action: Action| async move { seller_action(action, SellerAction::Activate) }),
        )
        .route(
            "/sellers/{id}/disable",
            post(|action: Action| async move { seller_action(action, SellerAction::Disable) }),
        )
        .route(
            "/sellers/{id}/deactivate",
            post(|action: Action| async move { seller_action(action, SellerAction::Deactivate) }),
        )
        .route("/erp-links", get(list::<ErpLink>))
        .route("/erp-links/{id}", get(get_one::<ErpLink>))
        .route(
            "/erp-links/{id}/block",
            post(|action: Action| async move { link_action(action, rules::block_link) }),
        )
        .route(
            "/erp-links/{id}/unblock",
            post(|action: Action| async move { link_action(action, rules::unblock_link) }),
        )
        .route("/licensees", get(list::<Licensee>))
        .route("/licensees/{id}", get(get_one::<Licensee>))
        .route(
            "/licensees/{id}/enable",
            post(|action: Action| async move { licensee_action(action, rules::enable_licensee) }),
        )
        .route(
            "/licensees/{id}/disable",
            post(|action: Action| async move { licensee_action(action, rules::disable_licensee) }),
        )
}

/// Responds 404 to a path no endpoint serves.
pub(crate) async fn unknown_route(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("No endpoint serves the path `{}`.", uri.path()),
    )
}

/// Responds 405 to a known path with another method.
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("The endpoint `{}` does not accept {method}.", uri.path()),
    )
}

fn render_options(select: &Select, behaviour: &Behaviour) -> RenderOptions {
    RenderOptions {
        include_audit: select.include_audit,
        excluded: select.excluded.clone(),
        currencies: behaviour.seller_currencies,
    }
}

/// Lists the fields a response leaves out, as the platform's `$meta.omitted` does.
fn omitted<R: Resource>(options: &RenderOptions) -> Vec<&'static str> {
    R::OMITTED
        .iter()
        .copied()
        .filter(|field| *field != "audit" || !options.include_audit)
        .collect()
}

/// Renders one object as the response of a get or an action, with `$meta.omitted`.
fn render_one<R: Resource>(
    data: &DataSet,
    object: &R,
    select: &Select,
    behaviour: &Behaviour,
) -> Value {
    let options = render_options(select, behaviour);
    let mut value = object.render(data, &options);
    apply_exclusions(&mut value, &options.excluded);
    let omitted = omitted::<R>(&options);
    if !omitted.is_empty()
        && let Value::Object(fields) = &mut value
    {
        fields.insert("$meta".into(), json!({ "omitted": omitted }));
    }
    value
}

async fn list<R: Resource>(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> HandlerResult {
    let behaviour = app.behaviour();
    let query = query::parse_list::<R>(raw.as_deref(), &behaviour).map_err(Problem::validation)?;
    let options = render_options(&query.select, &behaviour);
    let page = {
        let data = app.data.lock();
        query::run::<R>(&data, &query, &options)
    };
    let mut meta = json!({
        "pagination": { "offset": page.offset, "limit": page.limit, "total": page.total },
    });
    let omitted = omitted::<R>(&options);
    if !omitted.is_empty() {
        meta["omitted"] = json!(omitted);
    }
    Ok(Json(json!({ "$meta": meta, "data": page.items })).into_response())
}

async fn get_one<R: Resource>(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> HandlerResult {
    let behaviour = app.behaviour();
    let select = query::parse_select_only(raw.as_deref());
    let data = app.data.lock();
    let object = R::collection(&data)
        .get(&id)
        .ok_or_else(|| Problem::not_found(R::KIND, &id))?;
    Ok(Json(render_one(&data, object, &select, &behaviour)).into_response())
}

/// The parts of an action request that every action handler reads.
struct Action {
    app: Arc<App>,
    id: String,
    caller: Caller,
    query: Option<String>,
    body: Bytes,
}

impl FromRequest<Arc<App>> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Path(id) = Path::<String>::from_request_parts(&mut parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        // The pipeline inserts the caller after checking the token, so a missing
        // caller means the handler was reached some other way.
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized(true).into_response())?;
        let query = parts.uri.query().map(str::to_owned);
        let body = Bytes::from_request(Request::from_parts(parts, body), app)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            app: Arc::clone(app),
            id,
            caller,
            query,
            body,
        })
    }
}

/// Parses an optional action body: empty, `null` or a JSON object.
fn action_body(body: &Bytes) -> Result<Map<String, Value>, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(Problem::invalid(
            "body",
            "The request body must be a JSON object.",
        )),
        Err(error) => Err(Problem::invalid(
            "body",
            format!("The request body is not valid JSON: {error}."),
        )),
    }
}

/// Reads the optional `note` of a block or unblock body.
fn note_of(body: &Map<String, Value>) -> Result<Option<String>, Problem> {
    match body.get("note") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(note)) => Ok(Some(note.clone())),
        Some(_) => Err(Problem::invalid("note", "The note must be a string.")),
    }
}

fn require_operations(caller: &Caller) -> Result<(), Problem> {
    if caller.operations {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "This action needs an operations account token; the token belongs to a client account.",
        ))
    }
}

async fn synchronize(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> HandlerResult {
    require_operations(&caller)?;
    action_body(&body)?;
    let behaviour = app.behaviour();
    let select = query::parse_select_only(raw.as_deref());

    let rendered = {
        let mut data = app.data.lock();
        rules::check_synchronize(&data, &id)
            .map_err(|rejection| rejection.into_problem(&behaviour))?;
        if behaviour.synchronize_delay.is_zero() {
            rules::synchronize_buyer(&mut data, &id, &caller.actor, now_millis());
        }
        let buyer = data.buyer(&id).expect("checked above");
        render_one(&data, buyer, &select, &behaviour)
    };
    if !behaviour.synchronize_delay.is_zero() {
        app.synchronize_later(vec![id], behaviour.synchronize_delay, Some(caller.actor));
    }
    Ok(match behaviour.synchronize_response {
        SynchronizeResponse::Buyer => Json(rendered).into_response(),
        SynchronizeResponse::Accepted => StatusCode::ACCEPTED.into_response(),
    })
}

type LinkRule =
    fn(&mut DataSet, &Context, &str, Option<String>) -> Result<Change, rules::Rejection>;

/// Runs block or unblock; both need an operations token and take an optional `note`.
fn link_action(action: Action, rule: LinkRule) -> HandlerResult {
    let Action {
        app,
        id,
        caller,
        query,
        body,
    } = action;
    require_operations(&caller)?;
    let note = note_of(&action_body(&body)?)?;
    let behaviour = app.behaviour();
    let select = query::parse_select_only(query.as_deref());
    let context = Context {
        behaviour: &behaviour,
        actor: &caller.actor,
        now: now_millis(),
    };

    let (change, buyer_id, rendered) = {
        let mut data = app.data.lock();
        let change = rule(&mut data, &context, &id, note)
            .map_err(|rejection| rejection.into_problem(&behaviour))?;
        let link = data.erp_link(&id).expect("the rule found the link");
        (
            change,
            link.buyer.id.clone(),
            render_one(&data, link, &select, &behaviour),
        )
    };
    // The platform re-synchronizes the buyer after every block and unblock.
    if let (Change::Applied, Some(delay)) = (change, behaviour.auto_sync) {
        app.synchronize_later(vec![buyer_id], delay, None);
    }
    Ok(Json(rendered).into_response())
}

/// Runs a seller status action; all of them need an operations token.
fn seller_action(action: Action, seller_action: SellerAction) -> HandlerResult {
    let Action {
        app,
        id,
        caller,
        query,
        body,
    } = action;
    require_operations(&caller)?;
    action_body(&body)?;
    let behaviour = app.behaviour();
    let select = query::parse_select_only(query.as_deref());
    let context = Context {
        behaviour: &behaviour,
        actor: &caller.actor,
        now: now_millis(),
    };

    let (change, previous, buyer_ids, rendered) = {
        let mut data = app.data.lock();
        let (change, previous) = rules::change_seller(&mut data, &context, &id, seller_action)
            .map_err(|rejection| rejection.into_problem(&behaviour))?;
        let buyer_ids = data
            .buyers_of_seller(&id)
            .map(|buyer| buyer.id.clone())
            .collect();
        let seller = data.seller(&id).expect("the rule found the seller");
        (
            change,
            previous,
            buyer_ids,
            render_one(&data, seller, &select, &behaviour),
        )
    };
    // The platform re-synchronizes the seller's buyers after disable, delete and
    // activation from Disabled, but not after deactivate or activation from Offline.
    let triggers_sync = match seller_action {
        SellerAction::Disable | SellerAction::Delete => true,
        SellerAction::Activate => previous == SellerStatus::Disabled,
        SellerAction::Deactivate => false,
    };
    if let (Change::Applied, true, Some(delay)) = (change, triggers_sync, behaviour.auto_sync) {
        app.synchronize_later(buyer_ids, delay, None);
    }
    Ok(match seller_action {
        SellerAction::Delete => StatusCode::NO_CONTENT.into_response(),
        _ => Json(rendered).into_response(),
    })
}

type LicenseeRule = fn(&mut DataSet, &Context, &str) -> Result<Change, rules::Rejection>;

/// Runs a licensee action; client tokens may enable and disable licensees.
fn licensee_action(action: Action, rule: LicenseeRule) -> HandlerResult {
    let Action {
        app,
        id,
        caller,
        query,
        body,
    } = action;
    action_body(&body)?;
    let behaviour = app.behaviour();
    let select = query::parse_select_only(query.as_deref());
    let context = Context {
        behaviour: &behaviour,
        actor: &caller.actor,
        now: now_millis(),
    };
    let mut data = app.data.lock();
    rule(&mut data, &context, &id).map_err(|rejection| rejection.into_problem(&behaviour))?;
    let licensee = data.licensee(&id).expect("the rule found the licensee");
    Ok(Json(render_one(&data, licensee, &select, &behaviour)).into_response())
}
