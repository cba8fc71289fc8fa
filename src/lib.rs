//! erp-sync keeps the SoftwareOne Marketplace Platform in step with the ERP.
//!
//! The simulator of the platform's Accounts API lives in [`simulator`].
pub mod simulator;
