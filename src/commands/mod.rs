//! One module per subcommand: each takes its parsed arguments, calls the
//! library and prints.

pub mod list;
