"""The command-line tools, one module per subcommand, each with main(argv) -> exit code."""
