"""What the images are: lists of files, folders, list files, shards and datasets (``ImageList``).

Rooms: folders, hfdata, imagelist, labels, members, sources, tarshards. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(
        [
            "IMAGE_EXTENSIONS",
            "METADATA",
            "PICTURE_EXTENSIONS",
            "RAW_CAMERA",
            "check_class_names",
            "metadata_labels",
            "parse_class_names",
            "read_folder",
            "read_list_file",
            "read_text",
            "scan_folder",
            "why_not_read",
        ],
        "folders",
    ),
    **dict.fromkeys(["ImageList", "fingerprint", "fold", "identity", "stderr"], "imagelist"),
    **dict.fromkeys(["Member", "state_of"], "members"),
    **dict.fromkeys(["class_names_of", "opened", "read_images", "resolve", "where"], "sources"),
    **dict.fromkeys(["stream"], "tarshards"),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .folders import (
        IMAGE_EXTENSIONS,
        METADATA,
        PICTURE_EXTENSIONS,
        RAW_CAMERA,
        check_class_names,
        metadata_labels,
        parse_class_names,
        read_folder,
        read_list_file,
        read_text,
        scan_folder,
        why_not_read,
    )
    from .imagelist import ImageList, fingerprint, fold, identity, stderr
    from .members import Member, state_of
    from .sources import class_names_of, opened, read_images, resolve, where
    from .tarshards import stream
