"""VideoError, which every step of the video package raises, and the disk-full rule."""
from __future__ import annotations

import errno

from ...errors import ItemError

ERROR_CLASSES = ("unreadable", "no_video_stream", "empty", "decode_error", "encode_error",
                 "size_too_large")


class VideoError(ItemError):
    """A video (or a task over it) that cannot be processed.

    `error_class` is one of: ``unreadable`` (cannot open, not a media file, corrupt header),
    ``no_video_stream``, ``empty`` (zero frames), ``decode_error`` (error mid-stream),
    ``encode_error``, ``size_too_large`` (an output size the encode path cannot make).
    """

    error_class = "decode_error"


def reraise_if_disk_full(exc: BaseException) -> None:
    if getattr(exc, "errno", None) == errno.ENOSPC:
        raise exc
