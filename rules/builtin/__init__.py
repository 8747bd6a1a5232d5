"""Built-in rules: one module per rule, each with a fixture beside it."""
