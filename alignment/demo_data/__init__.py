"""Built-in demo data for the one-command quickstart; see ``build_demo_data`` and README.md here."""
