//! A simulator of the Marketplace Platform's Accounts API.
