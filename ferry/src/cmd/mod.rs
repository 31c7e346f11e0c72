//! One module per subcommand.

pub(crate) mod agent;
pub(crate) mod check;
pub(crate) mod generate;
pub(crate) mod keygen;
pub(crate) mod point;
pub(crate) mod rebuild;
pub(crate) mod retention;
pub(crate) mod seed;
pub(crate) mod standby;
pub(crate) mod track;
