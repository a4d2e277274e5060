"""The agent framework: models, providers, topologies, runners and the CLI."""
