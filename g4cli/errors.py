"""The error table: every failure a user can meet, as one line and an exit code.

Domain code raises a subclass of ``G4Error`` with a message that names the thing at fault
(which file, which tensor, which option) and, where there is one, the next command to run.
``g4cli.app.main`` prints ``Error: <message>`` (plus ``hint: ...``) on stderr and exits with
``exit_code``. Tracebacks only with ``G4_DEBUG=1``.
"""

from __future__ import annotations


class G4Error(Exception):
    """Base class: a message for the user and an optional hint (the next thing to try)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(G4Error):
    """Bad command-line usage (exit 2, like Typer's own usage errors)."""

    exit_code = 2


class CheckpointError(G4Error):
    """A Hugging Face checkpoint directory that cannot be read or is not Gemma 4."""


class ConvertError(G4Error):
    """The checkpoint was readable but cannot become a GGUF llama.cpp can load."""


class QuantizeError(G4Error):
    """llama.cpp's quantizer refused or failed."""


class OutputError(G4Error):
    """The output cannot be written (permissions, full disk)."""


class ModelNotFound(G4Error):
    """A model name that is not pulled / a GGUF path that does not exist."""


class ModelBusy(G4Error):
    """A model another g4 process holds: being pulled, removed, or loaded by a chat."""


class DownloadError(G4Error):
    """Anything that went wrong talking to the Hub."""


class AuthError(DownloadError):
    """401/403 from the Hub: a gated or private repo, a missing or insufficient token."""


class IntegrityError(DownloadError):
    """A downloaded file whose sha256 is not the one the Hub advertises (the bytes are deleted)."""


class DiskSpaceError(G4Error):
    """Not enough free disk space for a pull, found before downloading anything."""


class MediaError(G4Error):
    """An image or audio attachment that cannot be used."""


class CapabilityError(G4Error):
    """The model cannot do what was asked (e.g. audio on a model without an audio encoder)."""


class RuntimeFailure(G4Error):
    """llama.cpp failed while loading or generating."""


class DraftError(G4Error):
    """A drafter that cannot serve this model: not a drafter GGUF, made for another model, or
    asked for (``--draft on``) where there is none."""


class DraftUnavailable(G4Error):
    """A drafter that could not be loaded or run here (memory, llama.cpp version): with
    ``--draft auto`` g4 decodes without it, after one notice."""


class AudioDeviceError(G4Error):
    """No input device, PortAudio missing, or a device that failed."""


def describe_os_error(err: OSError, what: str) -> str:
    """One line for an OSError touching ``what`` (a path), without a traceback."""
    import errno

    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or directory",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "not a directory",
        errno.EFBIG: "file too large for this file system or limit",
    }
    reason = reasons.get(err.errno or 0, err.strerror or str(err))
    return f"{what}: {reason}"
