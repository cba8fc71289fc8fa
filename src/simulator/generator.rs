//! The seeded data-set generator.
//!
//! `ChaCha8Rng` and integer draws keep the output identical on every platform for a
//! given seed and `rand` version. Statuses are dealt from exact counts, not drawn one
//! by one, so every case below exists at a stable share of the data set:
//!
//! | object | cases |
//! | --- | --- |
//! | buyers | 91.5 % Active, 4 % Enabled (no ERP ids), 3 % Disabled, 1 % Mismatch, 0.5 % Unassigned (each case at least one when there are 100 or more buyers) |
//! | sellers | one Disabled, one Offline, one Active with exactly [`SMALL_SELLER_BUYERS`] buyers, one more Active without licensees in use, the rest Active |
//! | ERP links | 1 to 3 per buyer; 10 % Blocked; every link of the Disabled seller Disabled, remembering its previous status |
//! | licensees | on about a quarter of the links; Active, Enabled or Disabled following the buyer and the link |

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::dataset::{DataSet, DataSetFile};
use super::model::{
    Account, AccountStatus, AccountType, Actor, Address, Audit, AuditEvent, Buyer, BuyerError,
    BuyerStatus, Contact, Currency, Eligibility, ErpLink, ErpLinkStatus, ExternalIds, Licensee,
    LicenseeStatus, Reference, Seller, SellerStatus,
};
use super::words::{
    BLOCK_REASONS, COMPANY_SECTORS, COMPANY_STEMS, COUNTRIES, Country, DEPARTMENTS, FIRST_NAMES,
    LAST_NAMES, MISMATCH_ERRORS, STREETS, TOKEN_NAMES,
};

/// Number of buyers linked to the small seller, so a seller change can be tested
/// without synchronizing hundreds of buyers.
pub const SMALL_SELLER_BUYERS: usize = 5;

/// Share of links that are Blocked, in percent.
const BLOCKED_LINK_PERCENT: usize = 10;

/// Share of links with licensees, in percent.
const LICENSED_LINK_PERCENT: u32 = 25;

/// Buyers per client account, on average.
const BUYERS_PER_ACCOUNT: usize = 8;

/// Generates the data set for a seed, `buyers` buyers and `sellers` sellers.
pub fn generate(seed: u64, buyers: usize, sellers: usize) -> DataSet {
    let mut generator = Generator::new(seed);
    let file = generator.run(buyers, sellers.max(1));
    DataSet::from_file(file).expect("the generator builds a consistent data set")
}

/// Role of a generated seller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SellerRole {
    Normal,
    /// Active, never given licensees in use, so its status can change.
    Changeable,
    /// Like `Changeable`, with exactly `SMALL_SELLER_BUYERS` buyers.
    Small,
    Offline,
    Disabled,
}

impl SellerRole {
    /// Reports whether every licensee of the seller must be Disabled: seller status
    /// changes are rejected while a licensee is Active or Enabled.
    fn keeps_licensees_disabled(self) -> bool {
        self != Self::Normal
    }
}

struct Generator {
    rng: ChaCha8Rng,
    ids: IdSequences,
    epoch: DateTime<Utc>,
    actors: Vec<Actor>,
}

/// Distinct ids of one kind, drawn from a seeded permutation of every id whose digit
/// groups are `0001` to `9999`, so no set of used ids is needed. The permutation is a
/// four-round Feistel network over the smallest even number of bits that covers the
/// id space, with cycle walking to stay inside it. No group is `0000`, so ids such as
/// `BUY-0000-0000` never exist and tests can use them as unknown ids.
struct IdSequence {
    prefix: &'static str,
    groups: u32,
    space: u64,
    half_bits: u32,
    round_keys: [u64; 4],
    drawn: u64,
}

impl IdSequence {
    fn new(prefix: &'static str, groups: u32, rng: &mut ChaCha8Rng) -> Self {
        let space = 9999u64.pow(groups);
        let bits = 64 - (space - 1).leading_zeros();
        let half_bits = bits.div_ceil(2);
        let round_keys = [rng.random(), rng.random(), rng.random(), rng.random()];
        Self {
            prefix,
            groups,
            space,
            half_bits,
            round_keys,
            drawn: 0,
        }
    }

    fn next_id(&mut self) -> String {
        let mut index = self.permute(self.drawn);
        self.drawn += 1;
        let mut groups = Vec::with_capacity(self.groups as usize);
        for _ in 0..self.groups {
            groups.push(index % 9999 + 1);
            index /= 9999;
        }
        let mut id = String::with_capacity(self.prefix.len() + 5 * groups.len());
        id.push_str(self.prefix);
        for group in groups.iter().rev() {
            write!(id, "-{group:04}").expect("writing to a String cannot fail");
        }
        id
    }

    /// Maps `0..space` onto itself one to one: the Feistel network permutes the
    /// power-of-two domain, and walking the cycle until a value falls inside the
    /// space keeps the map a bijection on the space.
    fn permute(&self, value: u64) -> u64 {
        let mut value = value;
        loop {
            value = self.feistel(value);
            if value < self.space {
                return value;
            }
        }
    }

    fn feistel(&self, value: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (value >> self.half_bits, value & mask);
        for key in self.round_keys {
            let mixed = mix(right ^ key) & mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }
}

/// The SplitMix64 finalizer: a cheap, well-spread round function.
fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

struct IdSequences {
    accounts: IdSequence,
    sellers: IdSequence,
    buyers: IdSequence,
    erp_links: IdSequence,
    licensees: IdSequence,
    actors: IdSequence,
}

impl IdSequences {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        Self {
            accounts: IdSequence::new("ACC", 2, rng),
            sellers: IdSequence::new("SEL", 2, rng),
            buyers: IdSequence::new("BUY", 2, rng),
            erp_links: IdSequence::new("ERP", 3, rng),
            licensees: IdSequence::new("LCE", 3, rng),
            actors: IdSequence::new("", 2, rng),
        }
    }
}

struct GeneratedSeller {
    seller: Seller,
    role: SellerRole,
    country: &'static Country,
}

struct GeneratedBuyer {
    buyer: Buyer,
    country: &'static Country,
    account_cdg: Option<String>,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids = IdSequences::new(&mut rng);
        let mut generator = Self {
            rng,
            ids,
            epoch: DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
                .expect("the epoch parses")
                .with_timezone(&Utc),
            actors: Vec::new(),
        };
        generator.actors = generator.make_actors();
        generator
    }

    fn run(&mut self, buyer_count: usize, seller_count: usize) -> DataSetFile {
        let sellers = self.make_sellers(seller_count);
        let accounts = self.make_accounts(buyer_count);
        let buyers = self.make_buyers(buyer_count, &accounts);
        let (mut links, pairs) = self.make_links(&buyers, &sellers);
        self.block_links(&mut links, &pairs, &buyers, &sellers);
        self.disable_links_of_disabled_sellers(&mut links, &pairs, &sellers);
        let licensees = self.make_licensees(&links, &pairs, &buyers, &sellers);

        DataSetFile {
            accounts,
            sellers: sellers
                .into_iter()
                .map(|generated| generated.seller)
                .collect(),
            buyers: buyers
                .into_iter()
                .map(|generated| generated.buyer)
                .collect(),
            erp_links: links,
            licensees,
        }
    }

    fn make_actors(&mut self) -> Vec<Actor> {
        let mut actors = Vec::new();
        for name in TOKEN_NAMES {
            let id = format!("TKN{}", self.ids.actors.next_id());
            actors.push(Actor {
                id,
                name: (*name).to_owned(),
            });
        }
        for _ in 0..3 {
            let id = format!("USR{}", self.ids.actors.next_id());
            let (first, last) = self.person_name();
            actors.push(Actor {
                id,
                name: format!("{first} {last}"),
            });
        }
        actors
    }

    fn event(&mut self, at: DateTime<Utc>) -> AuditEvent {
        let by = self
            .actors
            .choose(&mut self.rng)
            .expect("actors exist")
            .clone();
        AuditEvent { at, by }
    }

    /// Returns a creation time in 2024 and a later update time, both in milliseconds.
    fn created_and_updated(&mut self) -> (DateTime<Utc>, DateTime<Utc>) {
        let created =
            self.epoch + Duration::milliseconds(self.rng.random_range(0..365 * 86_400_000i64));
        let updated =
            created + Duration::milliseconds(self.rng.random_range(3_600_000..200 * 86_400_000i64));
        (created, updated)
    }

    fn later(&mut self, after: DateTime<Utc>) -> DateTime<Utc> {
        after + Duration::milliseconds(self.rng.random_range(60_000..60 * 86_400_000i64))
    }

    fn base_audit(&mut self) -> Audit {
        let (created, updated) = self.created_and_updated();
        Audit {
            created: Some(self.event(created)),
            updated: Some(self.event(updated)),
            ..Audit::default()
        }
    }

    fn person_name(&mut self) -> (&'static str, &'static str) {
        let first = FIRST_NAMES.choose(&mut self.rng).expect("names exist");
        let last = LAST_NAMES.choose(&mut self.rng).expect("names exist");
        (first, last)
    }

    fn contact(&mut self, domain: &str) -> Contact {
        let (first, last) = self.person_name();
        let email = format!("{}.{}@{domain}", ascii_lower(first), ascii_lower(last));
        Contact {
            name: format!("{first} {last}"),
            first_name: first.to_owned(),
            last_name: last.to_owned(),
            email,
            phone: None,
        }
    }

    fn address(&mut self, country: &Country) -> Address {
        let (city, state) = *country.cities.choose(&mut self.rng).expect("cities exist");
        let street = STREETS.choose(&mut self.rng).expect("streets exist");
        let number = self.rng.random_range(1..300u32);
        let address_line2 = self
            .rng
            .random_ratio(3, 10)
            .then(|| format!("Floor {}", self.rng.random_range(1..30u32)));
        Address {
            address_line1: format!("{number} {street}"),
            address_line2,
            post_code: self.post_code(country.post_code),
            city: city.to_owned(),
            state: state.map(str::to_owned),
            country: country.code.to_owned(),
        }
    }

    fn post_code(&mut self, pattern: &str) -> String {
        pattern
            .chars()
            .map(|symbol| match symbol {
                '9' => char::from(b'0' + self.rng.random_range(0..10u8)),
                'A' => char::from(b'A' + self.rng.random_range(0..26u8)),
                other => other,
            })
            .collect()
    }

    fn make_sellers(&mut self, count: usize) -> Vec<GeneratedSeller> {
        let mut countries: Vec<&'static Country> = COUNTRIES.iter().collect();
        countries.shuffle(&mut self.rng);

        let mut sellers = Vec::with_capacity(count);
        for position in 0..count {
            let country = countries[position % countries.len()];
            let round = position / countries.len();
            let (name, external_id) = if round == 0 {
                (
                    format!("SoftwareONE {}", country.name),
                    country.code.to_owned(),
                )
            } else {
                (
                    format!("SoftwareONE {} {}", country.name, round + 1),
                    format!("{}{}", country.code, round + 1),
                )
            };
            let role = seller_role(position, count);
            let id = self.ids.sellers.next_id();
            let mut audit = self.base_audit();
            let status = match role {
                SellerRole::Disabled => {
                    audit.disabled = Some(self.event(self.epoch + Duration::days(400)));
                    SellerStatus::Disabled
                }
                SellerRole::Offline => {
                    audit.deactivated = Some(self.event(self.epoch + Duration::days(400)));
                    SellerStatus::Offline
                }
                _ => SellerStatus::Active,
            };
            let mut currencies = vec![Currency {
                value: country.currency.to_owned(),
                billing_enabled: true,
                is_default: true,
            }];
            if country.currency != "USD" {
                currencies.push(Currency {
                    value: "USD".into(),
                    billing_enabled: false,
                    is_default: false,
                });
            }
            let seller = Seller {
                icon: Some(format!("/v1/accounts/sellers/{id}/icon")),
                id,
                name,
                external_id,
                status,
                address: Some(self.address(country)),
                currencies,
                revision: if status == SellerStatus::Active { 2 } else { 3 },
                audit,
            };
            sellers.push(GeneratedSeller {
                seller,
                role,
                country,
            });
        }
        sellers
    }

    fn make_accounts(&mut self, buyer_count: usize) -> Vec<Account> {
        let mut accounts = Vec::new();
        let operations_id = self.ids.accounts.next_id();
        let audit = self.base_audit();
        accounts.push(Account {
            id: operations_id,
            account_type: AccountType::Operations,
            status: AccountStatus::Active,
            name: "SoftwareOne Operations".into(),
            external_id: None,
            icon: None,
            address: None,
            revision: 2,
            audit,
        });

        let client_count = buyer_count.div_ceil(BUYERS_PER_ACCOUNT).max(1);
        let first_cdg = self.rng.random_range(100_000..400_000u64);
        for number in 0..client_count {
            let stem = COMPANY_STEMS.choose(&mut self.rng).expect("stems exist");
            let country = COUNTRIES.choose(&mut self.rng).expect("countries exist");
            let id = self.ids.accounts.next_id();
            let mut audit = self.base_audit();
            audit.activated = audit.created.clone();
            accounts.push(Account {
                id,
                account_type: AccountType::Client,
                status: AccountStatus::Active,
                name: format!("{stem} Group {}", country.name),
                external_id: Some(format!("WW-{}", first_cdg + number as u64)),
                icon: None,
                address: Some(self.address(country)),
                revision: 3,
                audit,
            });
        }
        accounts
    }

    fn make_buyers(&mut self, count: usize, accounts: &[Account]) -> Vec<GeneratedBuyer> {
        let statuses = self.deal_buyer_statuses(count);
        let clients = &accounts[1..];
        let first_number = self.rng.random_range(100_000..400_000usize);

        let mut buyers = Vec::with_capacity(count);
        for (position, status) in statuses.into_iter().enumerate() {
            let country: &'static Country =
                COUNTRIES.choose(&mut self.rng).expect("countries exist");
            let stem = COMPANY_STEMS.choose(&mut self.rng).expect("stems exist");
            let sector = COMPANY_SECTORS
                .choose(&mut self.rng)
                .expect("sectors exist");
            let suffix = country
                .company_suffixes
                .choose(&mut self.rng)
                .expect("suffixes exist");
            let name = format!("{stem} {sector} {suffix}");
            let domain = format!("{}{}.example", ascii_lower(stem), ascii_lower(sector));

            let account = (status != BuyerStatus::Unassigned).then(|| {
                clients
                    .choose(&mut self.rng)
                    .expect("a client account exists")
            });
            let account_cdg = account.and_then(|account| account.external_id.clone());
            let number = first_number + position;
            let external_ids = (status != BuyerStatus::Enabled).then(|| ExternalIds {
                erp_company_contact: Some(format!("{}-CON-{number:06}", country.code)),
                erp_customer: Some(format!("{}-SCU-{number:06}", country.code)),
                account_external_id: account_cdg.clone(),
            });

            let mut audit = self.base_audit();
            let updated_at = audit
                .updated
                .as_ref()
                .map(|event| event.at)
                .expect("updated is set");
            let mut revision = 2;
            match status {
                BuyerStatus::Active | BuyerStatus::Mismatch => {
                    audit.activated = Some(self.event(updated_at));
                    revision += 1;
                }
                BuyerStatus::Disabled => {
                    audit.disabled = Some(self.event(updated_at));
                    revision += 1;
                }
                BuyerStatus::Unassigned => {
                    audit.unassigned = Some(self.event(updated_at));
                    revision += 1;
                }
                _ => {}
            }
            let errors = if status == BuyerStatus::Mismatch {
                let message = MISMATCH_ERRORS.choose(&mut self.rng).expect("errors exist");
                vec![BuyerError {
                    id: None,
                    message: (*message).to_owned(),
                }]
            } else {
                Vec::new()
            };

            let buyer = Buyer {
                id: self.ids.buyers.next_id(),
                name,
                status,
                icon: None,
                address: Some(self.address(country)),
                tax_id: Some(format!(
                    "{}{:09}",
                    country.code,
                    self.rng.random_range(0..1_000_000_000u32)
                )),
                contact: Some(self.contact(&domain)),
                external_ids,
                account: account.map(|account| Reference::new(&account.id, &account.name)),
                errors,
                revision,
                audit,
            };
            buyers.push(GeneratedBuyer {
                buyer,
                country,
                account_cdg,
            });
        }
        buyers
    }

    /// Deals buyer statuses from exact counts, in a seeded order.
    fn deal_buyer_statuses(&mut self, count: usize) -> Vec<BuyerStatus> {
        // Each rare case gets at least one buyer once there are 100 buyers.
        let share = |per_thousand: usize| {
            let exact = count * per_thousand / 1000;
            if count >= 100 { exact.max(1) } else { exact }
        };
        let mut statuses = Vec::with_capacity(count);
        statuses.extend(std::iter::repeat_n(BuyerStatus::Enabled, share(40)));
        statuses.extend(std::iter::repeat_n(BuyerStatus::Disabled, share(30)));
        statuses.extend(std::iter::repeat_n(BuyerStatus::Mismatch, share(10)));
        statuses.extend(std::iter::repeat_n(BuyerStatus::Unassigned, share(5)));
        statuses.truncate(count);
        statuses.resize(count, BuyerStatus::Active);
        statuses.shuffle(&mut self.rng);
        statuses
    }

    /// Returns the links and, for each, the positions of its buyer and seller.
    fn make_links(
        &mut self,
        buyers: &[GeneratedBuyer],
        sellers: &[GeneratedSeller],
    ) -> (Vec<ErpLink>, Vec<(usize, usize)>) {
        let small = sellers
            .iter()
            .position(|seller| seller.role == SellerRole::Small);
        let pool: Vec<usize> = (0..sellers.len())
            .filter(|position| Some(*position) != small)
            .collect();

        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut link_counts = vec![0usize; buyers.len()];
        for (buyer_position, count) in link_counts.iter_mut().enumerate() {
            let wanted = match self.rng.random_range(0..100u32) {
                0..50 => 1,
                50..85 => 2,
                _ => 3,
            };
            let chosen: Vec<usize> = pool
                .choose_multiple(&mut self.rng, wanted)
                .copied()
                .collect();
            *count = chosen.len();
            pairs.extend(
                chosen
                    .into_iter()
                    .map(|seller_position| (buyer_position, seller_position)),
            );
        }

        // The small seller gets a few Active buyers that still have room for a link.
        if let Some(small) = small {
            let mut candidates: Vec<usize> = (0..buyers.len())
                .filter(|position| {
                    let buyer = &buyers[*position].buyer;
                    buyer.status == BuyerStatus::Active && link_counts[*position] < 3
                })
                .collect();
            candidates.shuffle(&mut self.rng);
            pairs.extend(
                candidates
                    .into_iter()
                    .take(SMALL_SELLER_BUYERS)
                    .map(|position| (position, small)),
            );
        }

        let first_number = self.rng.random_range(100_000..400_000usize);
        let mut links = Vec::with_capacity(pairs.len());
        for (number, (buyer_position, seller_position)) in pairs.iter().enumerate() {
            links.push(self.link(
                &buyers[*buyer_position],
                &sellers[*seller_position],
                first_number + number,
            ));
        }
        (links, pairs)
    }

    fn link(
        &mut self,
        generated_buyer: &GeneratedBuyer,
        generated_seller: &GeneratedSeller,
        number: usize,
    ) -> ErpLink {
        let buyer = &generated_buyer.buyer;
        let seller = &generated_seller.seller;
        let code = generated_seller.country.code;
        // ERP instances often keep company names in capitals.
        let company_name = if self.rng.random_ratio(1, 10) {
            buyer.name.to_uppercase()
        } else {
            buyer.name.clone()
        };
        ErpLink {
            id: self.ids.erp_links.next_id(),
            name: format!("{} - {}", buyer.name, seller.name),
            status: ErpLinkStatus::Active,
            note: None,
            external_ids: Some(ExternalIds {
                erp_company_contact: Some(format!("{code}-CON-{number:06}")),
                erp_customer: Some(format!("{code}-SCU-{number:06}")),
                account_external_id: generated_buyer.account_cdg.clone(),
            }),
            address: buyer.address.clone(),
            company_name: Some(company_name),
            buyer: Reference::new(&buyer.id, &buyer.name),
            seller: Reference::new(&seller.id, &seller.name),
            icon: None,
            revision: 2,
            audit: self.base_audit(),
            status_before_disabled: None,
        }
    }

    /// Blocks exactly `BLOCKED_LINK_PERCENT` of the links, chosen among links whose
    /// buyer has ERP ids (block needs them) and whose seller is not the small one.
    fn block_links(
        &mut self,
        links: &mut [ErpLink],
        pairs: &[(usize, usize)],
        buyers: &[GeneratedBuyer],
        sellers: &[GeneratedSeller],
    ) {
        let target = links.len() * BLOCKED_LINK_PERCENT / 100;
        let mut candidates: Vec<usize> = (0..links.len())
            .filter(|position| {
                let (buyer, seller) = pairs[*position];
                buyers[buyer].buyer.is_erp_activated() && sellers[seller].role != SellerRole::Small
            })
            .collect();
        candidates.shuffle(&mut self.rng);
        for position in candidates.into_iter().take(target) {
            let reason = BLOCK_REASONS.choose(&mut self.rng).expect("reasons exist");
            let updated = links[position]
                .audit
                .updated
                .as_ref()
                .map(|event| event.at)
                .expect("updated is set");
            let blocked_at = self.later(updated);
            let link = &mut links[position];
            link.status = ErpLinkStatus::Blocked;
            link.note = Some((*reason).to_owned());
            link.revision += 1;
            link.audit.blocked = Some(self.event(blocked_at));
            link.audit.updated = link.audit.blocked.clone();
        }
    }

    fn disable_links_of_disabled_sellers(
        &mut self,
        links: &mut [ErpLink],
        pairs: &[(usize, usize)],
        sellers: &[GeneratedSeller],
    ) {
        for (link, (_, seller)) in links.iter_mut().zip(pairs) {
            if sellers[*seller].role != SellerRole::Disabled {
                continue;
            }
            let disabled_at = self.epoch + Duration::days(401);
            link.status_before_disabled = Some(link.status);
            link.status = ErpLinkStatus::Disabled;
            link.revision += 1;
            link.audit.disabled = Some(self.event(disabled_at));
            link.audit.updated = link.audit.disabled.clone();
        }
    }

    fn make_licensees(
        &mut self,
        links: &[ErpLink],
        pairs: &[(usize, usize)],
        buyers: &[GeneratedBuyer],
        sellers: &[GeneratedSeller],
    ) -> Vec<Licensee> {
        let usable = |position: usize| {
            let (buyer, seller) = pairs[position];
            is_usable_pair(&links[position], &buyers[buyer], &sellers[seller])
        };

        // Each licensee with the position of its link.
        let mut licensees: Vec<(Licensee, usize)> = Vec::new();
        let mut licensed_links = vec![false; links.len()];
        for (position, link) in links.iter().enumerate() {
            if !self.rng.random_ratio(LICENSED_LINK_PERCENT, 100) {
                continue;
            }
            licensed_links[position] = true;
            let (buyer, seller) = pairs[position];
            let count = if self.rng.random_ratio(1, 5) { 2 } else { 1 };
            for _ in 0..count {
                let status = self.licensee_status(link, &buyers[buyer], &sellers[seller]);
                licensees.push((self.licensee(link, &buyers[buyer], status), position));
            }
        }

        // Small data sets may miss a case by chance, so add one licensee per missing
        // status on a link that can carry it.
        for wanted in [
            LicenseeStatus::Active,
            LicenseeStatus::Enabled,
            LicenseeStatus::Disabled,
        ] {
            let present = licensees
                .iter()
                .any(|(licensee, position)| licensee.status == wanted && usable(*position));
            if present {
                continue;
            }
            if let Some(position) =
                (0..links.len()).find(|position| !licensed_links[*position] && usable(*position))
            {
                licensed_links[position] = true;
                let (buyer, _) = pairs[position];
                licensees.push((
                    self.licensee(&links[position], &buyers[buyer], wanted),
                    position,
                ));
            }
        }
        licensees
            .into_iter()
            .map(|(licensee, _)| licensee)
            .collect()
    }

    fn licensee_status(
        &mut self,
        link: &ErpLink,
        buyer: &GeneratedBuyer,
        seller: &GeneratedSeller,
    ) -> LicenseeStatus {
        let buyer_can_license = matches!(
            buyer.buyer.status,
            BuyerStatus::Active | BuyerStatus::Mismatch | BuyerStatus::Enabled
        );
        if link.status != ErpLinkStatus::Active
            || seller.role.keeps_licensees_disabled()
            || !buyer_can_license
        {
            return LicenseeStatus::Disabled;
        }
        let draw = self.rng.random_range(0..100u32);
        if !buyer.buyer.is_erp_activated() {
            return if draw < 70 {
                LicenseeStatus::Enabled
            } else {
                LicenseeStatus::Disabled
            };
        }
        // An Enabled licensee of an ERP-activated buyer waits for the next synchronize,
        // which makes it Active.
        match draw {
            0..65 => LicenseeStatus::Active,
            65..75 => LicenseeStatus::Enabled,
            _ => LicenseeStatus::Disabled,
        }
    }

    fn licensee(
        &mut self,
        link: &ErpLink,
        generated_buyer: &GeneratedBuyer,
        status: LicenseeStatus,
    ) -> Licensee {
        let buyer = &generated_buyer.buyer;
        let department = DEPARTMENTS
            .choose(&mut self.rng)
            .expect("departments exist");
        let use_buyer_address = self.rng.random_ratio(7, 10);
        let address = if use_buyer_address {
            buyer.address.clone()
        } else {
            Some(self.address(generated_buyer.country))
        };
        let mut audit = self.base_audit();
        let mut revision = 2;
        if status == LicenseeStatus::Disabled {
            let updated = audit
                .updated
                .as_ref()
                .map(|event| event.at)
                .expect("updated is set");
            let disabled_at = self.later(updated);
            audit.disabled = Some(self.event(disabled_at));
            audit.updated = audit.disabled.clone();
            revision += 1;
        }
        let domain = buyer
            .contact
            .as_ref()
            .and_then(|contact| contact.email.split('@').nth(1).map(str::to_owned))
            .unwrap_or_else(|| "licensee.example".into());
        Licensee {
            id: self.ids.licensees.next_id(),
            name: format!("{} {department}", buyer.name),
            status,
            external_id: None,
            use_buyer_address,
            address,
            description: Some(format!("{department} department of {}", buyer.name)),
            eligibility: Some(Eligibility {
                client: true,
                partner: false,
            }),
            contact: Some(self.contact(&domain)),
            buyer: Reference::new(&buyer.id, &buyer.name),
            seller: link.seller.clone(),
            account: buyer.account.clone(),
            icon: None,
            revision,
            audit,
        }
    }
}

/// Assigns roles from the end of the (shuffled) seller list, as far as the count allows.
fn seller_role(position: usize, count: usize) -> SellerRole {
    let from_end = count - 1 - position;
    match (from_end, count) {
        (0, 2..) => SellerRole::Disabled,
        (1, 3..) => SellerRole::Offline,
        (2, 4..) => SellerRole::Small,
        (3, 5..) => SellerRole::Changeable,
        _ => SellerRole::Normal,
    }
}

/// Reports whether a link can carry licensees of any status: Active, with an Active
/// ERP-activated buyer and a normal Active seller.
fn is_usable_pair(link: &ErpLink, buyer: &GeneratedBuyer, seller: &GeneratedSeller) -> bool {
    link.status == ErpLinkStatus::Active
        && buyer.buyer.status == BuyerStatus::Active
        && buyer.buyer.is_erp_activated()
        && seller.role == SellerRole::Normal
}

fn ascii_lower(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
