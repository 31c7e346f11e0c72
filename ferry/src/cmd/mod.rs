//! One module per subcommand.

pub(crate) mod keygen;
pub(crate) mod seed;
pub(crate) mod track;
