//! What the integration tests share: the test bench and ways of running the `berth` binary.

pub mod bench;
pub mod berth;
