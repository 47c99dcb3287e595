//! The daemon: start-up, request handling and shutdown, and what it claims while it runs.

pub mod capabilities;
pub mod pid_lock;
