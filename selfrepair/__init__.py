"""selfrepair: the shared computation of the self-repair workflow (Rushing & Nanda, 2024)."""

__version__ = "0.1.0"
