"""Provider adapters: one small module per wire format, looked up in a registry."""
