"""What the commands do, callable from the CLI and (next) the web server alike. A CLI command parses its
flags, calls one of these, and prints; no flow prints or reads argparse."""
