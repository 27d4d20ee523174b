"""Great Expectations suites, one module per table."""
