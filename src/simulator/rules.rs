//! The business rules of the actions: preconditions, status changes, `revision` and
//! `audit` updates, and what buyer synchronization does to links and licensees.
//!
//! Every rule works on the data set alone, so it runs under the data lock without
//! awaiting anything.

use chrono::{DateTime, Utc};

use super::config::{Behaviour, RepeatedAction};
use super::dataset::{DataSet, ObjectKind};
use super::model::{Actor, AuditEvent, BuyerStatus, ErpLinkStatus, LicenseeStatus, SellerStatus};
use super::problem::Problem;

/// Actor, time and settings of an action.
pub(crate) struct Context<'a> {
    pub behaviour: &'a Behaviour,
    pub actor: &'a Actor,
    pub now: DateTime<Utc>,
}

impl Context<'_> {
    fn event(&self) -> Option<AuditEvent> {
        Some(AuditEvent {
            at: self.now,
            by: self.actor.clone(),
        })
    }

    /// Applies `repeated_action` to an action on an object already in the target status.
    fn repeated(&self, code: &'static str, message: String) -> Result<Change, Rejection> {
        match self.behaviour.repeated_action {
            RepeatedAction::Noop => Ok(Change::Unchanged),
            RepeatedAction::Reject => Err(Rejection::Business { code, message }),
        }
    }
}

/// Whether an action changed the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Applied,
    /// A repeated action accepted with `repeated_action = "noop"`.
    Unchanged,
}

/// Reason an action was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    NotFound(ObjectKind, String),
    /// A precondition failed; `code` is the stable id in the Problem's `errors`.
    Business {
        code: &'static str,
        message: String,
    },
}

impl Rejection {
    fn business(code: &'static str, message: String) -> Self {
        Rejection::Business { code, message }
    }

    /// Converts to a response; business rejections use `illegal_transition_status`.
    pub(crate) fn into_problem(self, behaviour: &Behaviour) -> Problem {
        match self {
            Rejection::NotFound(kind, id) => Problem::not_found(kind, &id),
            Rejection::Business { code, message } => {
                Problem::business(behaviour.illegal_transition_status, code, message)
            }
        }
    }
}

/// Blocks an ERP link. Needs: the link not Disabled, the buyer ERP-activated, the
/// seller neither Disabled nor Deleted, and no Active or Enabled licensee on the pair.
pub(crate) fn block_link(
    data: &mut DataSet,
    context: &Context,
    id: &str,
    note: Option<String>,
) -> Result<Change, Rejection> {
    let link = data
        .erp_link(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::ErpLink, id.to_owned()))?;
    check_link_not_disabled(id, link.status)?;
    if link.status == ErpLinkStatus::Blocked {
        return context.repeated(
            "erp_link_already_blocked",
            format!("The ERP link {id} is already Blocked."),
        );
    }
    let (buyer_id, seller_id) = (link.buyer.id.clone(), link.seller.id.clone());
    check_buyer_erp_activated(data, &buyer_id, "blocked")?;

    let seller = data
        .seller(&seller_id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Seller, seller_id.clone()))?;
    if matches!(
        seller.status,
        SellerStatus::Disabled | SellerStatus::Deleted
    ) {
        return Err(Rejection::business(
            "seller_not_active",
            format!(
                "The seller {seller_id} is {}, so its ERP links cannot be blocked.",
                seller.status.as_str()
            ),
        ));
    }
    if let Some(licensee) = data
        .licensees_of_pair(&buyer_id, &seller_id)
        .find(|licensee| licensee.is_in_use())
    {
        return Err(Rejection::business(
            "licensee_in_use",
            format!(
                "The licensee {} is {} for buyer {buyer_id} and seller {seller_id}; disable it before blocking the ERP link.",
                licensee.id,
                licensee.status.as_str()
            ),
        ));
    }

    let link = data.erp_links_mut().get_mut(id).expect("the link exists");
    link.status = ErpLinkStatus::Blocked;
    if note.is_some() {
        link.note = note;
    }
    link.revision += 1;
    link.audit.blocked = context.event();
    link.audit.updated = context.event();
    Ok(Change::Applied)
}

/// Unblocks an ERP link. Needs: the link not Disabled and the buyer ERP-activated.
pub(crate) fn unblock_link(
    data: &mut DataSet,
    context: &Context,
    id: &str,
    note: Option<String>,
) -> Result<Change, Rejection> {
    let link = data
        .erp_link(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::ErpLink, id.to_owned()))?;
    check_link_not_disabled(id, link.status)?;
    if link.status == ErpLinkStatus::Active {
        return context.repeated(
            "erp_link_already_active",
            format!("The ERP link {id} is already Active."),
        );
    }
    let buyer_id = link.buyer.id.clone();
    check_buyer_erp_activated(data, &buyer_id, "unblocked")?;

    let link = data.erp_links_mut().get_mut(id).expect("the link exists");
    link.status = ErpLinkStatus::Active;
    if note.is_some() {
        link.note = note;
    }
    link.revision += 1;
    link.audit.unblocked = context.event();
    link.audit.updated = context.event();
    Ok(Change::Applied)
}

fn check_link_not_disabled(id: &str, status: ErpLinkStatus) -> Result<(), Rejection> {
    if status == ErpLinkStatus::Disabled {
        return Err(Rejection::business(
            "erp_link_disabled",
            format!(
                "The ERP link {id} is Disabled because its seller is Disabled; only buyer synchronization changes it."
            ),
        ));
    }
    Ok(())
}

fn check_buyer_erp_activated(data: &DataSet, buyer_id: &str, verb: &str) -> Result<(), Rejection> {
    let buyer = data
        .buyer(buyer_id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Buyer, buyer_id.to_owned()))?;
    if !buyer.is_erp_activated() {
        return Err(Rejection::business(
            "buyer_not_erp_activated",
            format!(
                "The buyer {buyer_id} is {} and has no ERP ids, so its ERP links cannot be {verb}.",
                buyer.status.as_str()
            ),
        ));
    }
    Ok(())
}

/// Checks that a buyer can be synchronized: it exists, is not Deleted and has ERP ids.
pub(crate) fn check_synchronize(data: &DataSet, id: &str) -> Result<(), Rejection> {
    let buyer = data
        .buyer(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Buyer, id.to_owned()))?;
    if buyer.status == BuyerStatus::Deleted {
        return Err(Rejection::business(
            "buyer_deleted",
            format!("The buyer {id} is Deleted."),
        ));
    }
    if !buyer.is_erp_activated() {
        return Err(Rejection::business(
            "buyer_not_erp_activated",
            format!(
                "The buyer {id} is {} and has no ERP ids, so it cannot be synchronized.",
                buyer.status.as_str()
            ),
        ));
    }
    Ok(())
}

/// Synchronizes a buyer with its sellers' state, as the platform's ERP reconciliation
/// does for the parts the simulator models:
/// - a link whose seller is Disabled or Deleted becomes Disabled, remembering its status;
/// - a Disabled link whose seller is Active or Offline gets its remembered status back;
/// - licensees that are not Disabled or Deleted follow the buyer: Active for an
///   ERP-activated buyer, Enabled for one without ERP ids, Disabled for a Disabled buyer.
///
/// Returns whether anything changed. A buyer that no longer passes
/// [`check_synchronize`] is left alone, which matters for delayed synchronization.
pub(crate) fn synchronize_buyer(
    data: &mut DataSet,
    buyer_id: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> bool {
    if check_synchronize(data, buyer_id).is_err() {
        return false;
    }
    let event = Some(AuditEvent {
        at: now,
        by: actor.clone(),
    });
    let mut changed = false;

    let link_plan: Vec<(String, bool)> = data
        .links_of_buyer(buyer_id)
        .map(|link| {
            let seller_off = data.seller(&link.seller.id).is_none_or(|seller| {
                matches!(
                    seller.status,
                    SellerStatus::Disabled | SellerStatus::Deleted
                )
            });
            (link.id.clone(), seller_off)
        })
        .collect();
    for (link_id, seller_off) in link_plan {
        let link = data
            .erp_links_mut()
            .get_mut(&link_id)
            .expect("indexed links exist");
        if seller_off && link.status != ErpLinkStatus::Disabled {
            link.status_before_disabled = Some(link.status);
            link.status = ErpLinkStatus::Disabled;
            link.audit.disabled = event.clone();
        } else if !seller_off && link.status == ErpLinkStatus::Disabled {
            link.status = link
                .status_before_disabled
                .take()
                .unwrap_or(ErpLinkStatus::Active);
        } else {
            continue;
        }
        link.revision += 1;
        link.audit.updated = event.clone();
        changed = true;
    }

    let buyer = data.buyer(buyer_id).expect("checked above");
    let target = match buyer.status {
        BuyerStatus::Disabled => LicenseeStatus::Disabled,
        _ if buyer.is_erp_activated() => LicenseeStatus::Active,
        _ => LicenseeStatus::Enabled,
    };
    let licensee_ids: Vec<String> = data
        .licensees_of_buyer(buyer_id)
        .map(|licensee| licensee.id.clone())
        .collect();
    for licensee_id in licensee_ids {
        let licensee = data
            .licensees_mut()
            .get_mut(&licensee_id)
            .expect("indexed licensees exist");
        if !licensee.is_in_use() || licensee.status == target {
            continue;
        }
        licensee.status = target;
        if target == LicenseeStatus::Disabled {
            licensee.audit.disabled = event.clone();
        }
        licensee.revision += 1;
        licensee.audit.updated = event.clone();
        changed = true;
    }
    changed
}

/// A seller status action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SellerAction {
    /// Offline or Disabled to Active.
    Activate,
    /// Active to Disabled.
    Disable,
    /// Active to Offline.
    Deactivate,
    /// Active to Deleted (soft delete, `DELETE /sellers/{id}`).
    Delete,
}

impl SellerAction {
    fn target(self) -> SellerStatus {
        match self {
            SellerAction::Activate => SellerStatus::Active,
            SellerAction::Disable => SellerStatus::Disabled,
            SellerAction::Deactivate => SellerStatus::Offline,
            SellerAction::Delete => SellerStatus::Deleted,
        }
    }

    fn allowed_from(self, status: SellerStatus) -> bool {
        match self {
            SellerAction::Activate => {
                matches!(status, SellerStatus::Offline | SellerStatus::Disabled)
            }
            _ => status == SellerStatus::Active,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            SellerAction::Activate => "activated",
            SellerAction::Disable => "disabled",
            SellerAction::Deactivate => "deactivated",
            SellerAction::Delete => "deleted",
        }
    }
}

/// Changes a seller's status. Rejected from a status the action does not start from,
/// and while any licensee of the seller is Active or Enabled. Returns the change and
/// the status before it.
pub(crate) fn change_seller(
    data: &mut DataSet,
    context: &Context,
    id: &str,
    action: SellerAction,
) -> Result<(Change, SellerStatus), Rejection> {
    let seller = data
        .seller(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Seller, id.to_owned()))?;
    let previous = seller.status;
    let target = action.target();
    if previous == target {
        let change = context.repeated(
            "seller_status_unchanged",
            format!("The seller {id} is already {}.", target.as_str()),
        )?;
        return Ok((change, previous));
    }
    if !action.allowed_from(previous) {
        return Err(Rejection::business(
            "seller_status_transition",
            format!(
                "The seller {id} is {} and cannot be {}.",
                previous.as_str(),
                action.verb()
            ),
        ));
    }
    if let Some(licensee) = data
        .licensees_of_seller(id)
        .find(|licensee| licensee.is_in_use())
    {
        return Err(Rejection::business(
            "licensee_in_use",
            format!(
                "The licensee {} of seller {id} is {}; the seller cannot be {} while a licensee is Active or Enabled.",
                licensee.id,
                licensee.status.as_str(),
                action.verb()
            ),
        ));
    }

    let seller = data.sellers_mut().get_mut(id).expect("the seller exists");
    seller.status = target;
    seller.revision += 1;
    let event = context.event();
    match action {
        SellerAction::Activate => seller.audit.activated = event.clone(),
        SellerAction::Disable => seller.audit.disabled = event.clone(),
        SellerAction::Deactivate => seller.audit.deactivated = event.clone(),
        SellerAction::Delete => seller.audit.deleted = event.clone(),
    }
    seller.audit.updated = event;
    Ok((Change::Applied, previous))
}

/// Disables a licensee (Active or Enabled to Disabled).
pub(crate) fn disable_licensee(
    data: &mut DataSet,
    context: &Context,
    id: &str,
) -> Result<Change, Rejection> {
    let licensee = data
        .licensee(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Licensee, id.to_owned()))?;
    match licensee.status {
        LicenseeStatus::Disabled => {
            return context.repeated(
                "licensee_status_unchanged",
                format!("The licensee {id} is already Disabled."),
            );
        }
        LicenseeStatus::Deleted => {
            return Err(Rejection::business(
                "licensee_deleted",
                format!("The licensee {id} is Deleted."),
            ));
        }
        LicenseeStatus::Active | LicenseeStatus::Enabled => {}
    }
    let licensee = data
        .licensees_mut()
        .get_mut(id)
        .expect("the licensee exists");
    licensee.status = LicenseeStatus::Disabled;
    licensee.revision += 1;
    licensee.audit.disabled = context.event();
    licensee.audit.updated = context.event();
    Ok(Change::Applied)
}

/// Enables a Disabled licensee: it becomes Active when its buyer is ERP-activated and
/// Enabled otherwise. Needs the seller Active or Offline, the pair's ERP link Active,
/// and the buyer not Disabled or Deleted.
pub(crate) fn enable_licensee(
    data: &mut DataSet,
    context: &Context,
    id: &str,
) -> Result<Change, Rejection> {
    let licensee = data
        .licensee(id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Licensee, id.to_owned()))?;
    match licensee.status {
        LicenseeStatus::Active | LicenseeStatus::Enabled => {
            return context.repeated(
                "licensee_status_unchanged",
                format!("The licensee {id} is already {}.", licensee.status.as_str()),
            );
        }
        LicenseeStatus::Deleted => {
            return Err(Rejection::business(
                "licensee_deleted",
                format!("The licensee {id} is Deleted."),
            ));
        }
        LicenseeStatus::Disabled => {}
    }
    let (buyer_id, seller_id) = (licensee.buyer.id.clone(), licensee.seller.id.clone());

    let seller = data
        .seller(&seller_id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Seller, seller_id.clone()))?;
    if !matches!(seller.status, SellerStatus::Active | SellerStatus::Offline) {
        return Err(Rejection::business(
            "seller_not_active",
            format!(
                "The seller {seller_id} is {}, so its licensees cannot be enabled.",
                seller.status.as_str()
            ),
        ));
    }
    let link_status = data
        .link_of_pair(&buyer_id, &seller_id)
        .map(|link| (link.id.clone(), link.status));
    match link_status {
        Some((_, ErpLinkStatus::Active)) => {}
        Some((link_id, status)) => {
            return Err(Rejection::business(
                "erp_link_not_active",
                format!(
                    "The ERP link {link_id} is {}, so the licensee {id} cannot be enabled.",
                    status.as_str()
                ),
            ));
        }
        None => {
            return Err(Rejection::business(
                "erp_link_missing",
                format!(
                    "No ERP link joins buyer {buyer_id} and seller {seller_id}, so the licensee {id} cannot be enabled."
                ),
            ));
        }
    }
    let buyer = data
        .buyer(&buyer_id)
        .ok_or_else(|| Rejection::NotFound(ObjectKind::Buyer, buyer_id.clone()))?;
    if matches!(buyer.status, BuyerStatus::Disabled | BuyerStatus::Deleted) {
        return Err(Rejection::business(
            "buyer_not_active",
            format!(
                "The buyer {buyer_id} is {}, so its licensees cannot be enabled.",
                buyer.status.as_str()
            ),
        ));
    }
    let target = if buyer.is_erp_activated() {
        LicenseeStatus::Active
    } else {
        LicenseeStatus::Enabled
    };

    let licensee = data
        .licensees_mut()
        .get_mut(id)
        .expect("the licensee exists");
    licensee.status = target;
    licensee.revision += 1;
    licensee.audit.updated = context.event();
    Ok(Change::Applied)
}
