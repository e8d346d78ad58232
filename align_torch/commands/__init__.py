"""One module per `align-torch` subcommand; each defines HELP, add_arguments(parser) and run(args) -> int."""
