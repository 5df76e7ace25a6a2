"""The `conveyor` CLI's command groups, one module per concern."""
