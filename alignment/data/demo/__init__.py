"""Built-in demo data for the one-command quickstart (``dataset_name: demo``); see README.md here."""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
