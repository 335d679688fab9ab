"""Reading data sources into records, rendering them with chat templates, and the built-in demo data."""
