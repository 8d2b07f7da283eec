"""The dcmdb command line: the entry point (cli), running every service (up) and the tools."""
