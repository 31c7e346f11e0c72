//! One module per subcommand.

pub(crate) mod check;
pub(crate) mod keygen;
pub(crate) mod seed;
pub(crate) mod track;
