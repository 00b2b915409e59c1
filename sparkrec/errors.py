"""The one kind of error a user fixes by changing what they gave us.

Config values, input files, the order stages run in, a model from another lake: each is
raised as a :class:`UserError` whose message is one line naming the key, file or value, and
raised before anything is written. The CLI prints it as that one line and exits 2, keeping
tracebacks for bugs (``--debug`` shows them for everything).
"""

from __future__ import annotations


class UserError(Exception):
    """A run refused before any write; the message is one line that names what to change."""


class PreflightError(UserError, ValueError):
    """An input file, a path or a column that the run would need is missing or unreadable."""


class ModelNotFoundError(UserError, LookupError):
    """No model to serve or evaluate yet (e.g. ``recommend`` before ``train``)."""


class ProvenanceError(UserError, LookupError):
    """A model fitted on another lake, or on a catalogue the lake no longer has: as unusable
    here as a model that does not exist, hence a LookupError too."""
