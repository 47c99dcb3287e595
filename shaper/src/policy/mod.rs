//! Policy: the limits the operator asks for, from parsing a rate to the rules in force.
//! Everything here but [`rules_in_force`] is pure logic that never touches the kernel.

pub mod action_options;
pub mod config_file;
pub mod config_reload;
pub mod error;
pub mod rates_and_sizes;
pub mod rule_actor;
pub mod rule_table;
pub mod rules_in_force;
pub mod state_file;
pub mod watch_list;

pub use error::{PolicyError, Result};
