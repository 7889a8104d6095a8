"""The language server's features: one module per LSP feature, converting engine values to LSP types (no torch)."""
