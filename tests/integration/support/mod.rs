//! What the integration tests share: the test bench, ways of running the `berth` binary, an HTTP client.

pub mod bench;
pub mod berth;
pub mod http;
pub mod served;
pub mod webdriver;
