//! Placeholder.
#![warn(missing_docs)]

pub mod codec;
pub mod message;
pub mod output;
pub mod session;
#[cfg(test)]
mod testutil;
