//! The validating admission webhook: `POST /validate` takes an AdmissionReview v1 and answers
//! with the engine's decision for the agent's current state. The hot path does no I/O and takes
//! no lock: it loads the current `Arc<AgentState>` and evaluates in memory. Requests are bounded
//! in size and in number in flight, so a flood cannot exhaust memory.

pub mod gatekeeper;
mod handler;
pub mod pool;
mod respond;
pub mod review;
pub mod server;
pub mod tls;

pub use handler::{GATEKEEPER_PATH, Webhook, WebhookConfig, router};

#[cfg(test)]
mod tests;
