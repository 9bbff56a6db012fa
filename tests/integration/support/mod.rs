//! What the integration tests share: the test bench, ways of running the `berth` binary, an HTTP client, and
//! a recording HTTP server standing in for GitHub, Slack and notification receivers.

pub mod bench;
pub mod berth;
pub mod http;
pub mod recorder;
pub mod served;
pub mod webdriver;
