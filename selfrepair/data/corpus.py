"""Compatibility names for `selfrepair.config.core`, which reads the hub resolution from here
until it imports from `selfrepair.data.hub` (issue 13); remove this module then."""

from selfrepair.data.hub import is_local_path, resolve_hub_dataset

__all__ = ["is_local_path", "resolve_hub_dataset"]
