//! One module per group of commands; each function is a whole command.

pub mod demo;
pub mod inspect;
pub mod maintain;
pub mod mount;
pub mod progress;
pub mod stats;
pub mod volume;
