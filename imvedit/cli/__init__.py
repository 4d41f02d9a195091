"""The command line: one module per subcommand; `main` only registers them."""
