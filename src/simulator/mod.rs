//! A simulator of the Marketplace Platform's Accounts API.

pub mod dataset;
pub mod generator;
pub mod model;
pub mod rql;
mod words;

pub use dataset::{
    BuyerCase, Collection, DataSet, DataSetError, DataSetFile, Identified, LinkCase, ObjectKind, PatchError,
    SellerCase,
};
