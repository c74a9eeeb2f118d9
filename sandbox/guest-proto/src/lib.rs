//! Placeholder.
#![warn(missing_docs)]

pub mod codec;
pub mod message;
#[cfg(test)]
mod testutil;
