//! The simulator's objects, indexed by id and by relation, with the lookups that tests
//! and the demo use to pick ids, and the JSON data-set file format.

use std::ops::RangeBounds;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{
    Account, Buyer, BuyerStatus, ErpLink, ErpLinkStatus, Licensee, LicenseeStatus, Seller,
    SellerStatus,
};

/// Kind of an object, read from the prefix of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Account,
    Buyer,
    Seller,
    ErpLink,
    Licensee,
}

impl ObjectKind {
    /// Returns the kind whose id format `id` has (`BUY-dddd-dddd`, `ERP-dddd-dddd-dddd`, …).
    pub fn of_id(id: &str) -> Option<Self> {
        let kind = match id.get(..4)? {
            "ACC-" => Self::Account,
            "BUY-" => Self::Buyer,
            "SEL-" => Self::Seller,
            "ERP-" => Self::ErpLink,
            "LCE-" => Self::Licensee,
            _ => return None,
        };
        is_id_shape(id, kind.digit_groups()).then_some(kind)
    }

    /// Returns the platform's name of the object type, as in "Buyer with id … not found".
    pub fn name(self) -> &'static str {
        match self {
            Self::Account => "Account",
            Self::Buyer => "Buyer",
            Self::Seller => "Seller",
            Self::ErpLink => "ErpLink",
            Self::Licensee => "Licensee",
        }
    }

    fn digit_groups(self) -> usize {
        match self {
            Self::Account | Self::Buyer | Self::Seller => 2,
            Self::ErpLink | Self::Licensee => 3,
        }
    }
}

fn is_id_shape(id: &str, groups: usize) -> bool {
    let mut parts = id.split('-');
    parts.next();
    let groups_seen = parts
        .map(|part| part.len() == 4 && part.bytes().all(|byte| byte.is_ascii_digit()))
        .try_fold(0, |count, ok| ok.then_some(count + 1));
    groups_seen == Some(groups)
}

/// Objects that have an id.
pub trait Identified {
    /// Returns the object's id, such as `BUY-1234-5678`.
    fn id(&self) -> &str;
}

macro_rules! identified {
    ($($kind:ty),*) => {
        $(impl Identified for $kind {
            fn id(&self) -> &str {
                &self.id
            }
        })*
    };
}

identified!(Account, Seller, Buyer, ErpLink, Licensee);

/// Objects of one kind in id order, which is the default order of list responses.
///
/// A vector sorted by id keeps lookups at O(log n) without hashing, which also keeps
/// start-up fast in unoptimized test builds. The binary search runs on a compact
/// vector of numeric keys rather than on the objects, whose ids live in separate heap
/// allocations and would cost a cache miss per comparison.
#[derive(Debug, Clone)]
pub struct Collection<T> {
    items: Vec<T>,
    /// `numeric_key` of each item's id, in the same order.
    keys: Vec<u64>,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// Returns the digits of an id as a number. Ids of one kind have the same prefix and
/// the same number of four-digit groups, so numeric order is id order. Returns `None`
/// for anything that is not an id.
fn numeric_key(id: &str) -> Option<u64> {
    ObjectKind::of_id(id)?;
    let digits = id.bytes().skip(4).filter(u8::is_ascii_digit);
    Some(digits.fold(0u64, |key, digit| key * 10 + u64::from(digit - b'0')))
}

impl<T: Identified> Collection<T> {
    fn from_items(kind: ObjectKind, items: Vec<T>) -> Result<Self, DataSetError> {
        if let Some(bad) = items
            .iter()
            .find(|item| ObjectKind::of_id(item.id()) != Some(kind))
        {
            return Err(DataSetError::new(format!(
                "`{}` is not a valid {} id",
                bad.id(),
                kind.name()
            )));
        }
        // Sorting positions by numeric key and moving each object once is much cheaper
        // than sorting the large objects by their heap-allocated ids.
        let unsorted_keys: Vec<u64> = items
            .iter()
            .map(|item| numeric_key(item.id()).expect("ids were checked"))
            .collect();
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by_key(|position| unsorted_keys[*position]);
        if let Some(pair) = order
            .windows(2)
            .find(|pair| unsorted_keys[pair[0]] == unsorted_keys[pair[1]])
        {
            return Err(DataSetError::new(format!(
                "the id `{}` appears twice",
                items[pair[0]].id()
            )));
        }
        let keys = order
            .iter()
            .map(|position| unsorted_keys[*position])
            .collect();
        let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
        let items: Vec<T> = order
            .into_iter()
            .map(|position| slots[position].take().expect("each position is taken once"))
            .collect();
        Ok(Self { items, keys })
    }

    /// Returns the position of the object with this id.
    fn position(&self, id: &str) -> Option<usize> {
        let position = self.keys.binary_search(&numeric_key(id)?).ok()?;
        // The key ignores the prefix, so an id of another kind could share it.
        (self.items[position].id() == id).then_some(position)
    }

    /// Returns the object with this id.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.position(id).map(|position| &self.items[position])
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.position(id).map(|position| &mut self.items[position])
    }

    /// Iterates over the objects in id order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Iterates over the ids in ascending order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(Identified::id)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn at(&self, positions: &[u32]) -> impl Iterator<Item = &T> {
        positions
            .iter()
            .map(|position| &self.items[*position as usize])
    }
}

/// An invalid data set: a bad id, a duplicate, or a reference to a missing object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulator data set: {message}")]
pub struct DataSetError {
    pub message: String,
}

impl DataSetError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// ERP links picked by the business case they exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCase {
    /// Active, with an Active ERP-activated buyer, an Active seller and no Active or
    /// Enabled licensee on the pair: block succeeds.
    Blockable,
    /// Blocked, with an ERP-activated buyer: unblock succeeds.
    Unblockable,
    /// Like `Blockable`, but an Active licensee on the pair makes block fail.
    WithActiveLicensee,
    /// Like `Blockable`, but an Enabled licensee (and no Active one) makes block fail.
    WithEnabledLicensee,
    /// Like `Blockable`, with only Disabled licensees on the pair: block succeeds and
    /// the licensees cannot be enabled while the link is Blocked.
    WithDisabledLicensee,
    /// Active, but the buyer has no ERP ids (Enabled): block fails.
    OfEnabledBuyer,
    /// Disabled because its seller is Disabled.
    Disabled,
    /// Disabled, and Blocked before that: synchronizing after the seller's activation
    /// restores Blocked.
    DisabledWasBlocked,
}

/// Buyers picked by the business case they exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerCase {
    /// Active with ERP ids and at least one Active link to an Active seller.
    Active,
    /// Enabled (no ERP ids) with at least one link: synchronize fails.
    Enabled,
    /// Disabled, with ERP ids.
    Disabled,
    /// Mismatch: Active with reconciliation errors.
    Mismatch,
    /// Unassigned: no account.
    Unassigned,
    /// Active with ERP ids and a link whose seller is Disabled.
    WithDisabledSeller,
}

/// Sellers picked by the business case they exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SellerCase {
    /// Active.
    Active,
    /// Disabled; its links are Disabled.
    Disabled,
    /// Offline (deactivated).
    Offline,
    /// Active with buyers and no Active or Enabled licensee, so activate, disable and
    /// deactivate are accepted.
    Changeable,
    /// Active with an Active or Enabled licensee, so status changes are rejected.
    WithLicenseeInUse,
}

/// All simulator objects with their indexes.
#[derive(Debug, Clone, Default)]
pub struct DataSet {
    accounts: Collection<Account>,
    sellers: Collection<Seller>,
    buyers: Collection<Buyer>,
    erp_links: Collection<ErpLink>,
    licensees: Collection<Licensee>,
    index: Index,
}

/// Relations as positions in the collections, each list in id order. Positions stay
/// valid because objects are never added or removed after loading.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Per buyer position, the positions of its ERP links.
    links_by_buyer: Vec<Vec<u32>>,
    /// Per seller position, the positions of its ERP links.
    links_by_seller: Vec<Vec<u32>>,
    /// Per seller position, the positions of its linked buyers.
    buyers_by_seller: Vec<Vec<u32>>,
    /// Per buyer position, the positions of its licensees.
    licensees_by_buyer: Vec<Vec<u32>>,
    /// Per seller position, the positions of its licensees.
    licensees_by_seller: Vec<Vec<u32>>,
}

/// The data-set file: every object in its stored form, grouped by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSetFile {
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub sellers: Vec<Seller>,
    #[serde(default)]
    pub buyers: Vec<Buyer>,
    #[serde(default)]
    pub erp_links: Vec<ErpLink>,
    #[serde(default)]
    pub licensees: Vec<Licensee>,
}

impl DataSet {
    /// Builds a data set, checking ids, uniqueness and references.
    pub fn from_file(file: DataSetFile) -> Result<Self, DataSetError> {
        let mut data = Self {
            accounts: Collection::from_items(ObjectKind::Account, file.accounts)?,
            sellers: Collection::from_items(ObjectKind::Seller, file.sellers)?,
            buyers: Collection::from_items(ObjectKind::Buyer, file.buyers)?,
            erp_links: Collection::from_items(ObjectKind::ErpLink, file.erp_links)?,
            licensees: Collection::from_items(ObjectKind::Licensee, file.licensees)?,
            index: Index::default(),
        };
        data.check_accounts()?;
        data.rebuild_index()?;
        data.check_unique_pairs()?;
        Ok(data)
    }

    /// Parses a data set from the JSON of [`DataSet::to_json`].
    pub fn from_json(json: &str) -> Result<Self, DataSetError> {
        let file: DataSetFile = serde_json::from_str(json)
            .map_err(|error| DataSetError::new(format!("the JSON does not parse: {error}")))?;
        Self::from_file(file)
    }

    /// Reads a data-set file such as the `fixture` key names.
    pub fn load(path: &Path) -> Result<Self, DataSetError> {
        let json = std::fs::read_to_string(path).map_err(|error| {
            DataSetError::new(format!("failed to read `{}`: {error}", path.display()))
        })?;
        Self::from_json(&json)
            .map_err(|error| DataSetError::new(format!("`{}`: {}", path.display(), error.message)))
    }

    /// Returns the data-set file form, each kind in id order.
    pub fn to_file(&self) -> DataSetFile {
        DataSetFile {
            accounts: self.accounts.iter().cloned().collect(),
            sellers: self.sellers.iter().cloned().collect(),
            buyers: self.buyers.iter().cloned().collect(),
            erp_links: self.erp_links.iter().cloned().collect(),
            licensees: self.licensees.iter().cloned().collect(),
        }
    }

    /// Serializes the data set as pretty-printed JSON, the format `fixture` loads.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_file()).expect("the data set serializes")
    }

    fn check_accounts(&self) -> Result<(), DataSetError> {
        let accounts = self
            .buyers
            .iter()
            .filter_map(|buyer| Some((&buyer.id, buyer.account.as_ref()?)))
            .chain(
                self.licensees
                    .iter()
                    .filter_map(|licensee| Some((&licensee.id, licensee.account.as_ref()?))),
            );
        for (owner, account) in accounts {
            if self.accounts.get(&account.id).is_none() {
                return Err(missing_reference("account", &account.id, owner));
            }
        }
        Ok(())
    }

    /// Checks that no buyer and seller pair has two ERP links; needs the index.
    fn check_unique_pairs(&self) -> Result<(), DataSetError> {
        for links in &self.index.links_by_buyer {
            let links: Vec<&ErpLink> = self.erp_links.at(links).collect();
            for (position, link) in links.iter().enumerate() {
                if let Some(other) = links[..position]
                    .iter()
                    .find(|other| other.seller.id == link.seller.id)
                {
                    return Err(DataSetError::new(format!(
                        "{} and {} both link {} and {}; a pair has at most one ERP link",
                        other.id, link.id, link.buyer.id, link.seller.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the relation indexes; needed after a reference changes. Fails when a
    /// link or licensee refers to a missing buyer or seller.
    pub(crate) fn rebuild_index(&mut self) -> Result<(), DataSetError> {
        let buyers = self.buyers.len();
        let sellers = self.sellers.len();
        let mut index = Index {
            links_by_buyer: vec![Vec::new(); buyers],
            links_by_seller: vec![Vec::new(); sellers],
            buyers_by_seller: vec![Vec::new(); sellers],
            licensees_by_buyer: vec![Vec::new(); buyers],
            licensees_by_seller: vec![Vec::new(); sellers],
        };
        // Walking each collection in id order keeps every list in id order.
        for (position, link) in self.erp_links.iter().enumerate() {
            let buyer = self
                .buyers
                .position(&link.buyer.id)
                .ok_or_else(|| missing_reference("buyer", &link.buyer.id, &link.id))?;
            let seller = self
                .sellers
                .position(&link.seller.id)
                .ok_or_else(|| missing_reference("seller", &link.seller.id, &link.id))?;
            index.links_by_buyer[buyer].push(position as u32);
            index.links_by_seller[seller].push(position as u32);
            index.buyers_by_seller[seller].push(buyer as u32);
        }
        for buyers in &mut index.buyers_by_seller {
            buyers.sort_unstable();
            buyers.dedup();
        }
        for (position, licensee) in self.licensees.iter().enumerate() {
            let buyer = self
                .buyers
                .position(&licensee.buyer.id)
                .ok_or_else(|| missing_reference("buyer", &licensee.buyer.id, &licensee.id))?;
            let seller = self
                .sellers
                .position(&licensee.seller.id)
                .ok_or_else(|| missing_reference("seller", &licensee.seller.id, &licensee.id))?;
            index.licensees_by_buyer[buyer].push(position as u32);
            index.licensees_by_seller[seller].push(position as u32);
        }
        self.index = index;
        Ok(())
    }

    pub fn accounts(&self) -> &Collection<Account> {
        &self.accounts
    }

    pub fn sellers(&self) -> &Collection<Seller> {
        &self.sellers
    }

    pub fn buyers(&self) -> &Collection<Buyer> {
        &self.buyers
    }

    pub fn erp_links(&self) -> &Collection<ErpLink> {
        &self.erp_links
    }

    pub fn licensees(&self) -> &Collection<Licensee> {
        &self.licensees
    }

    pub(crate) fn sellers_mut(&mut self) -> &mut Collection<Seller> {
        &mut self.sellers
    }

    pub(crate) fn erp_links_mut(&mut self) -> &mut Collection<ErpLink> {
        &mut self.erp_links
    }

    pub(crate) fn licensees_mut(&mut self) -> &mut Collection<Licensee> {
        &mut self.licensees
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn seller(&self, id: &str) -> Option<&Seller> {
        self.sellers.get(id)
    }

    pub fn buyer(&self, id: &str) -> Option<&Buyer> {
        self.buyers.get(id)
    }

    pub fn erp_link(&self, id: &str) -> Option<&ErpLink> {
        self.erp_links.get(id)
    }

    pub fn licensee(&self, id: &str) -> Option<&Licensee> {
        self.licensees.get(id)
    }

    fn relation(lists: &[Vec<u32>], owner: Option<usize>) -> &[u32] {
        owner
            .and_then(|position| lists.get(position))
            .map_or(&[], Vec::as_slice)
    }

    /// Iterates over the buyer's ERP links, in id order.
    pub fn links_of_buyer(&self, buyer_id: &str) -> impl Iterator<Item = &ErpLink> {
        let positions = Self::relation(&self.index.links_by_buyer, self.buyers.position(buyer_id));
        self.erp_links.at(positions)
    }

    /// Iterates over the seller's ERP links, in id order.
    pub fn links_of_seller(&self, seller_id: &str) -> impl Iterator<Item = &ErpLink> {
        let positions = Self::relation(
            &self.index.links_by_seller,
            self.sellers.position(seller_id),
        );
        self.erp_links.at(positions)
    }

    /// Iterates over the buyers linked to the seller, in id order.
    pub fn buyers_of_seller(&self, seller_id: &str) -> impl Iterator<Item = &Buyer> {
        let positions = Self::relation(
            &self.index.buyers_by_seller,
            self.sellers.position(seller_id),
        );
        self.buyers.at(positions)
    }

    /// Returns the number of buyers linked to the seller.
    pub fn buyer_count_of_seller(&self, seller_id: &str) -> usize {
        Self::relation(
            &self.index.buyers_by_seller,
            self.sellers.position(seller_id),
        )
        .len()
    }

    /// Iterates over the buyer's licensees, in id order.
    pub fn licensees_of_buyer(&self, buyer_id: &str) -> impl Iterator<Item = &Licensee> {
        let positions = Self::relation(
            &self.index.licensees_by_buyer,
            self.buyers.position(buyer_id),
        );
        self.licensees.at(positions)
    }

    /// Iterates over the seller's licensees, in id order.
    pub fn licensees_of_seller(&self, seller_id: &str) -> impl Iterator<Item = &Licensee> {
        let positions = Self::relation(
            &self.index.licensees_by_seller,
            self.sellers.position(seller_id),
        );
        self.licensees.at(positions)
    }

    /// Iterates over the sellers the buyer is linked to, in the id order of the links.
    pub fn sellers_of_buyer(&self, buyer_id: &str) -> impl Iterator<Item = &Seller> {
        self.links_of_buyer(buyer_id)
            .filter_map(|link| self.sellers.get(&link.seller.id))
    }

    /// Returns the ERP link of a buyer and seller pair; a pair has at most one.
    pub fn link_of_pair(&self, buyer_id: &str, seller_id: &str) -> Option<&ErpLink> {
        self.links_of_buyer(buyer_id)
            .find(|link| link.seller.id == seller_id)
    }

    /// Iterates over the licensees of a buyer and seller pair, in id order.
    pub fn licensees_of_pair<'a>(
        &'a self,
        buyer_id: &'a str,
        seller_id: &'a str,
    ) -> impl Iterator<Item = &'a Licensee> + 'a {
        self.licensees_of_buyer(buyer_id)
            .filter(move |licensee| licensee.seller.id == seller_id)
    }

    /// Reports whether any licensee of the seller is Active or Enabled.
    pub fn seller_has_licensee_in_use(&self, seller_id: &str) -> bool {
        self.licensees_of_seller(seller_id).any(Licensee::is_in_use)
    }

    /// Returns the first ERP link, in id order, that fits the case.
    pub fn find_link(&self, case: LinkCase) -> Option<&ErpLink> {
        self.find_links(case).next()
    }

    /// Iterates over the ERP links that fit the case, in id order.
    pub fn find_links(&self, case: LinkCase) -> impl Iterator<Item = &ErpLink> {
        self.erp_links
            .iter()
            .filter(move |link| self.link_fits(link, case))
    }

    fn link_fits(&self, link: &ErpLink, case: LinkCase) -> bool {
        let Some(buyer) = self.buyer(&link.buyer.id) else {
            return false;
        };
        let Some(seller) = self.seller(&link.seller.id) else {
            return false;
        };
        let usable = link.status == ErpLinkStatus::Active
            && buyer.status == BuyerStatus::Active
            && buyer.is_erp_activated()
            && seller.status == SellerStatus::Active;
        let statuses: Vec<LicenseeStatus> = self
            .licensees_of_pair(&buyer.id, &seller.id)
            .map(|licensee| licensee.status)
            .collect();
        let has = |status| statuses.contains(&status);
        match case {
            LinkCase::Blockable => {
                usable && !has(LicenseeStatus::Active) && !has(LicenseeStatus::Enabled)
            }
            LinkCase::Unblockable => {
                link.status == ErpLinkStatus::Blocked && buyer.is_erp_activated()
            }
            LinkCase::WithActiveLicensee => usable && has(LicenseeStatus::Active),
            LinkCase::WithEnabledLicensee => {
                usable && has(LicenseeStatus::Enabled) && !has(LicenseeStatus::Active)
            }
            LinkCase::WithDisabledLicensee => {
                usable
                    && !statuses.is_empty()
                    && statuses
                        .iter()
                        .all(|status| *status == LicenseeStatus::Disabled)
            }
            LinkCase::OfEnabledBuyer => {
                link.status == ErpLinkStatus::Active
                    && buyer.status == BuyerStatus::Enabled
                    && !buyer.is_erp_activated()
                    && seller.status == SellerStatus::Active
            }
            LinkCase::Disabled => link.status == ErpLinkStatus::Disabled,
            LinkCase::DisabledWasBlocked => {
                link.status == ErpLinkStatus::Disabled
                    && link.status_before_disabled == Some(ErpLinkStatus::Blocked)
            }
        }
    }

    /// Returns the first buyer, in id order, that fits the case.
    pub fn find_buyer(&self, case: BuyerCase) -> Option<&Buyer> {
        self.find_buyers(case).next()
    }

    /// Iterates over the buyers that fit the case, in id order.
    pub fn find_buyers(&self, case: BuyerCase) -> impl Iterator<Item = &Buyer> {
        self.buyers
            .iter()
            .filter(move |buyer| self.buyer_fits(buyer, case))
    }

    fn buyer_fits(&self, buyer: &Buyer, case: BuyerCase) -> bool {
        let has_links = self.links_of_buyer(&buyer.id).next().is_some();
        match case {
            BuyerCase::Active => {
                buyer.status == BuyerStatus::Active
                    && buyer.is_erp_activated()
                    && self.links_of_buyer(&buyer.id).any(|link| {
                        link.status == ErpLinkStatus::Active
                            && self
                                .seller(&link.seller.id)
                                .is_some_and(|seller| seller.status == SellerStatus::Active)
                    })
            }
            BuyerCase::Enabled => buyer.status == BuyerStatus::Enabled && has_links,
            BuyerCase::Disabled => buyer.status == BuyerStatus::Disabled,
            BuyerCase::Mismatch => buyer.status == BuyerStatus::Mismatch,
            BuyerCase::Unassigned => buyer.status == BuyerStatus::Unassigned,
            BuyerCase::WithDisabledSeller => {
                buyer.status == BuyerStatus::Active
                    && buyer.is_erp_activated()
                    && self
                        .sellers_of_buyer(&buyer.id)
                        .any(|seller| seller.status == SellerStatus::Disabled)
            }
        }
    }

    /// Returns the first seller, in id order, that fits the case.
    pub fn find_seller(&self, case: SellerCase) -> Option<&Seller> {
        self.sellers
            .iter()
            .find(|seller| self.seller_fits(seller, case))
    }

    /// Returns the first seller, in id order, that fits the case and has a buyer count
    /// in `buyers`.
    pub fn find_seller_with_buyers(
        &self,
        case: SellerCase,
        buyers: impl RangeBounds<usize>,
    ) -> Option<&Seller> {
        self.sellers.iter().find(|seller| {
            self.seller_fits(seller, case)
                && buyers.contains(&self.buyer_count_of_seller(&seller.id))
        })
    }

    fn seller_fits(&self, seller: &Seller, case: SellerCase) -> bool {
        match case {
            SellerCase::Active => seller.status == SellerStatus::Active,
            SellerCase::Disabled => seller.status == SellerStatus::Disabled,
            SellerCase::Offline => seller.status == SellerStatus::Offline,
            SellerCase::Changeable => {
                seller.status == SellerStatus::Active
                    && self.buyer_count_of_seller(&seller.id) > 0
                    && !self.seller_has_licensee_in_use(&seller.id)
            }
            SellerCase::WithLicenseeInUse => {
                seller.status == SellerStatus::Active && self.seller_has_licensee_in_use(&seller.id)
            }
        }
    }

    /// Returns an object's stored form as JSON, whatever its kind.
    pub fn object_json(&self, id: &str) -> Option<Value> {
        let value = match ObjectKind::of_id(id)? {
            ObjectKind::Account => serde_json::to_value(self.account(id)?),
            ObjectKind::Buyer => serde_json::to_value(self.buyer(id)?),
            ObjectKind::Seller => serde_json::to_value(self.seller(id)?),
            ObjectKind::ErpLink => serde_json::to_value(self.erp_link(id)?),
            ObjectKind::Licensee => serde_json::to_value(self.licensee(id)?),
        };
        Some(value.expect("stored objects serialize"))
    }

    /// Merges `patch` into an object's stored form (JSON merge patch: `null` removes a
    /// field) and returns the new stored form. Fields are set as given: no status is
    /// derived and `revision` does not change unless the patch sets it.
    pub fn patch_object(&mut self, id: &str, patch: &Value) -> Result<Value, PatchError> {
        let mut value = self.object_json(id).ok_or(PatchError::NotFound)?;
        merge_patch(&mut value, patch);
        if value.get("id").and_then(Value::as_str) != Some(id) {
            return Err(PatchError::Invalid(format!("the id `{id}` cannot change")));
        }
        let invalid = |error: serde_json::Error| PatchError::Invalid(error.to_string());
        match ObjectKind::of_id(id).ok_or(PatchError::NotFound)? {
            ObjectKind::Account => {
                let account: Account = serde_json::from_value(value.clone()).map_err(invalid)?;
                *self.accounts.get_mut(id).ok_or(PatchError::NotFound)? = account;
            }
            ObjectKind::Seller => {
                let seller: Seller = serde_json::from_value(value.clone()).map_err(invalid)?;
                *self.sellers.get_mut(id).ok_or(PatchError::NotFound)? = seller;
            }
            ObjectKind::Buyer => {
                let buyer: Buyer = serde_json::from_value(value.clone()).map_err(invalid)?;
                if let Some(account) = &buyer.account
                    && self.accounts.get(&account.id).is_none()
                {
                    return Err(PatchError::Invalid(format!(
                        "no account has the id `{}`",
                        account.id
                    )));
                }
                *self.buyers.get_mut(id).ok_or(PatchError::NotFound)? = buyer;
            }
            ObjectKind::ErpLink => {
                let link: ErpLink = serde_json::from_value(value.clone()).map_err(invalid)?;
                self.check_pair_change(&link.id, &link.buyer.id, &link.seller.id)?;
                let previous = self.erp_links.get_mut(id).ok_or(PatchError::NotFound)?;
                let moved =
                    previous.buyer.id != link.buyer.id || previous.seller.id != link.seller.id;
                *previous = link;
                if moved {
                    self.rebuild_index()
                        .expect("the patched references were checked");
                }
            }
            ObjectKind::Licensee => {
                let licensee: Licensee = serde_json::from_value(value.clone()).map_err(invalid)?;
                if self.buyers.get(&licensee.buyer.id).is_none()
                    || self.sellers.get(&licensee.seller.id).is_none()
                {
                    return Err(PatchError::Invalid(
                        "the licensee's buyer or seller does not exist".into(),
                    ));
                }
                let previous = self.licensees.get_mut(id).ok_or(PatchError::NotFound)?;
                let moved = previous.buyer.id != licensee.buyer.id
                    || previous.seller.id != licensee.seller.id;
                *previous = licensee;
                if moved {
                    self.rebuild_index()
                        .expect("the patched references were checked");
                }
            }
        }
        Ok(value)
    }

    fn check_pair_change(
        &self,
        link_id: &str,
        buyer_id: &str,
        seller_id: &str,
    ) -> Result<(), PatchError> {
        if self.buyers.get(buyer_id).is_none() || self.sellers.get(seller_id).is_none() {
            return Err(PatchError::Invalid(format!(
                "the buyer `{buyer_id}` or the seller `{seller_id}` does not exist"
            )));
        }
        match self.link_of_pair(buyer_id, seller_id) {
            Some(other) if other.id != link_id => Err(PatchError::Invalid(format!(
                "{} already links {buyer_id} and {seller_id}",
                other.id
            ))),
            _ => Ok(()),
        }
    }
}

/// Reason an object patch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("no object has this id")]
    NotFound,
    #[error("invalid object: {0}")]
    Invalid(String),
}

fn missing_reference(what: &str, id: &str, owner: &str) -> DataSetError {
    DataSetError::new(format!(
        "{owner} refers to the {what} `{id}`, which does not exist"
    ))
}

/// Applies an RFC 7396 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let fields = target.as_object_mut().expect("target is an object");
    for (key, value) in patch_fields {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
