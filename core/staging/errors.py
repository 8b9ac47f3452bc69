"""What staging and publishing raise. Every error names what it is about."""

from __future__ import annotations


class StagingError(RuntimeError):
    """Staging (or publishing) could not be done; the message says why."""


class SelectionError(StagingError, ValueError):
    """The selection does not fit the image (unknown level or channel name, a timepoint range
    outside the image, a channel subset that cuts through chunks...)."""


class InsufficientSpace(StagingError):
    """The selection does not fit: on the file system (``needed`` > ``free``) or in the cache
    quota. Nothing was written."""

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


class VerificationFailed(StagingError):
    """Objects whose bytes did not match the source's checksum after every retry; the dataset was
    not marked complete. ``failures`` maps source URL -> reason."""

    def __init__(self, message: str, failures: dict[str, str]):
        super().__init__(message)
        self.failures = failures


class UntrustedPath(StagingError):
    """A folder or file of the staging cache (or of a destination) that someone other than the
    user made or could change: another user's, writable by others, a symbolic link the stager
    did not make. ``path`` is what was refused, ``owner`` its owner's name."""

    def __init__(self, message: str, path, owner: str | None = None):
        super().__init__(message)
        self.path = str(path)
        self.owner = owner


class AlreadyExists(StagingError, FileExistsError):
    """``publish`` refused to overwrite an existing iRODS object or collection."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path
