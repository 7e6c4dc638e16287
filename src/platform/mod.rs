//! What socketman needs from the operating system: [`sys`] (the only `unsafe`), [`fs`]
//! (atomic writes, private dirs) and [`identity`] (MAC, model, firmware, uptime).

pub mod fs;
pub mod identity;
pub mod sys;
