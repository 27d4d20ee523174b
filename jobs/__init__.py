"""idres: consent-aware identity resolution and customer-profile unification jobs."""

from __future__ import annotations

__version__ = "0.1.0"
