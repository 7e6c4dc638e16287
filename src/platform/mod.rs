//! What socketman needs from the operating system: [`sys`] (the only `unsafe`), [`fs`]
//! (atomic writes, private dirs), [`identity`] (MAC, model, firmware, uptime) and
//! [`process`] (the one runner of child processes).

pub mod fs;
pub mod identity;
pub mod process;
pub mod procfs;
pub mod shell;
pub mod sys;
