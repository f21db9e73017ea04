//! The binary's own modules (the library, `ferroplane_agent`, holds what they drive): the
//! agent's life from the command line to the clean stop, in the order `main.rs` runs it.

pub mod agent;
pub mod args;
pub mod dpdk;
pub mod event_loop;
pub mod events;
pub mod faults;
pub mod pods;
pub mod ports;
pub mod serve;
pub mod start;
pub mod stop;
pub mod warm;
