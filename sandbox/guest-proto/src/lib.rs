//! Placeholder.
#![warn(missing_docs)]

pub mod codec;
#[cfg(test)]
mod testutil;
